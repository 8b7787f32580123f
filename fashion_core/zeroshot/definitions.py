"""Definition words as zero-shot evidence: which words of a product name a class's WordNet definition holds.

The sentence cosine (``semantic.py``) compares whole texts; this compares words. A product called "… Nail
Lacquer" holds "lacquer", which Nail Polish's definition holds ("a cosmetic lacquer that dries quickly …") and its
name does not; "… Trunks" meets Shorts' lemma "trunks". Two more kinds of evidence in the name model
(``fusion.zs_def_words``), each with one weight shared by all classes and fitted on the seen classes like the
others, so an unseen class is scored exactly as a seen one:

- ``def_share``: of the name's words that any class definition holds, the share (weighted by rarity) that this
  class's definition holds;
- ``def_head``: whether the name's head word (its last word of 3+ letters, or that word joined with the one
  before: "Eye Liner" -> eyeliner) is in this class's definition.

Words are the name matcher's (lower case, plurals folded, adjacent pairs joined); a definition word weighs
``log(1 + C / number of class definitions holding it)``, so "worn" or "used" tells little. The definitions are
``lexicon.class_definitions``: only the class names and WordNet enter, no product.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .names import name_tokens, word_membership

DEF_FEATURES = ("def_share", "def_head")  # their names among the evidence kinds


def definition_tokens(text: str) -> set[str]:
    """The words of a definition, as the name matcher folds a product name's (alphabetic, 3+ letters)."""
    tokens, _, _ = name_tokens(text)
    return {t for t in tokens if t.isalpha() and len(t) >= 3}


@dataclass(frozen=True)
class DefinitionWords:
    """Each class's definition as a set of words, and the evidence they give for product names."""

    classes: tuple[str, ...]
    definitions: tuple[str, ...]  # one text per class ("" for a class WordNet does not define)
    words: tuple[str, ...]  # every definition word
    member: np.ndarray  # (K, C) 0/1: word k is in class c's definition
    idf: np.ndarray  # (K,) log(1 + C / number of definitions holding it)
    source: dict  # where the definitions came from (the WordNet files' sha256)

    @classmethod
    def build(cls, classes: Sequence[str], definitions: Sequence[str], source: dict | None = None) -> "DefinitionWords":
        words, member, idf = word_membership([definition_tokens(d) for d in definitions])
        return cls(tuple(classes), tuple(definitions), words, member, idf, dict(source or {}))

    def features(self, names: Iterable[Any]) -> np.ndarray:
        """(N, C, 2) float32: ``def_share`` and ``def_head`` of each name for each class."""
        names = list(names)
        index = {w: i for i, w in enumerate(self.words)}
        hits = np.zeros((len(names), len(self.words)), dtype=np.float64)
        head = np.zeros_like(hits)
        for n, name in enumerate(names):
            tokens, heads, _ = name_tokens(name)
            for t in tokens:
                if t in index:
                    hits[n, index[t]] = 1.0
            for t in heads:
                if t in index:
                    head[n, index[t]] = 1.0
        weighted = hits * self.idf
        share = weighted @ self.member / np.maximum(weighted.sum(axis=1, keepdims=True), 1e-12)
        return np.stack([share, (head @ self.member > 0).astype(np.float64)], axis=2).astype(np.float32)

    def to_dict(self) -> dict:
        return {"definitions": list(self.definitions), "source": self.source}

    @classmethod
    def from_dict(cls, classes: Sequence[str], d: dict) -> "DefinitionWords":
        return cls.build(classes, d["definitions"], d.get("source"))


def with_definitions(phi: np.ndarray, defs: DefinitionWords | None, names: Iterable[Any]) -> np.ndarray:
    """The name evidence ``phi`` (N, C, F) with the two definition kinds appended (unchanged when None)."""
    if defs is None:
        return phi
    return np.concatenate([phi, defs.features(names)], axis=2)


def definition_words(classes: Sequence[str], encoder=None, log=print) -> DefinitionWords:
    """The classes' WordNet definitions (``lexicon.class_definitions``; the encoder picks senses) as evidence."""
    from .. import text_encoder
    from .lexicon import WordNet, class_definitions

    enc = encoder if encoder is not None else text_encoder.load_encoder()
    wn = WordNet.load()
    defs = class_definitions(classes, wn, lambda t: text_encoder.embed_texts(t, enc, log=lambda m: None))
    log(f"definition words from {wn.source['file']}: {sum(1 for d in defs if d)} of {len(classes)} classes defined")
    return DefinitionWords.build(classes, defs, wn.source)

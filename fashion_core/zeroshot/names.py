"""The name evidence of generalised zero-shot: the candidate classes and ``phi(x, c)``, what a product name says
for each class name (see the package doc); nothing here is fitted on labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.fusion.encoders import TOKEN, class_words, clean_text, s_stem

FEATURES = (
    "share_exact",
    "share_class_idf",
    "all_exact",
    "n_exact",
    "head_word",
    "name_cover",
    "share_abbrev",
    "char_sim",
)


# ---------------------------------------------------------------- classes


def candidate_classes(splits: pd.DataFrame, stage: str) -> list[str]:
    """Every class name of the stage's subset in the catalogue (any split, excluded rows too), sorted."""
    names = splits.loc[splits["subset"] == stage, "label"].astype(str)
    return sorted(n for n in names.unique() if n)


# ---------------------------------------------------------------- name evidence


def name_tokens(name: Any) -> tuple[list[str], list[str], int]:
    """(tokens, head tokens, number of words) of a product name: singular words, then adjacent pairs joined
    ("eye shadow" -> eyeshadow); the head is the last alphabetic word of 3+ letters and its join with the
    word before."""
    words = TOKEN.findall(clean_text([name])[0].lower())
    stems = [s_stem(w) for w in words]
    joined = [s_stem(a + b) for a, b in zip(words, words[1:])]
    alpha = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 3]
    head = []
    if alpha:
        i = alpha[-1]
        head = [stems[i]] + ([s_stem(words[i - 1] + words[i])] if i > 0 else [])
    return stems + joined, head, len(words)


def word_membership(per_class: Sequence[set[str]]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(words, member, idf) of one word set per class: every distinct word sorted, the (K, C) 0/1 matrix of which
    class holds which word, and each word's rarity among the classes, log(1 + C / number of classes holding it)."""
    words = tuple(sorted(set().union(*per_class))) if per_class else ()
    index = {w: i for i, w in enumerate(words)}
    member = np.zeros((len(words), len(per_class)), dtype=np.float64)
    for j, ws in enumerate(per_class):
        for w in ws:
            member[index[w], j] = 1.0
    return words, member, np.log1p(len(per_class) / np.maximum(member.sum(axis=1), 1.0))


def _trigrams(word: str) -> set[str]:
    padded = f"#{word}#"
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _dice(a: set[str], b: set[str]) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def _abbreviates(token: str, word: str) -> bool:
    """A name word that is a shortened or longer form of a class word (not the word itself)."""
    if token == word or not token.isalpha() or len(token) < 3:
        return False
    return word.startswith(token) or (len(word) >= 4 and token.startswith(word))


@dataclass(frozen=True)
class NameMatcher:
    """Turns product names into the evidence ``phi(x, c)`` for every candidate class (see the module doc)."""

    classes: tuple[str, ...]
    words: tuple[str, ...]  # the distinct class words
    member: np.ndarray  # (K, C) 0/1: class word k belongs to class c
    idf: np.ndarray  # (K,) log(1 + C / number of classes whose name holds the word)
    name_idf: np.ndarray  # (K,) log((1 + N) / (1 + number of training names holding the word))
    token_idf: dict  # the same for every token of the training names; tokens never seen there get idf_unseen
    idf_unseen: float  # log(1 + N)

    @classmethod
    def build(cls, classes: Sequence[str], train_names: Iterable[Any] = ()) -> NameMatcher:
        """The class words of ``classes``; how common each is in ``train_names`` (training products only)
        says how little it tells: "Men" is in a third of the names, whatever their class."""
        df_names: dict[str, int] = {}
        n_names = 0
        for name in train_names:
            n_names += 1
            for t in set(name_tokens(name)[0]):
                df_names[t] = df_names.get(t, 0) + 1
        token_idf = {t: float(np.log((1.0 + n_names) / (1.0 + d))) for t, d in df_names.items()}
        return cls.from_state(classes, token_idf, float(np.log(1.0 + n_names)))

    @classmethod
    def from_state(cls, classes: Sequence[str], token_idf: dict, idf_unseen: float) -> NameMatcher:
        """The matcher of ``build`` from its saved word rarities (``state()``), without the training names."""
        words, member, idf = word_membership([class_words(c) for c in classes])
        name_idf = np.array([token_idf.get(w, idf_unseen) for w in words])
        return cls(tuple(classes), words, member, idf, name_idf, dict(token_idf), float(idf_unseen))

    def state(self) -> dict:
        """What ``from_state`` needs beside the classes (JSON-ready)."""
        return {"token_idf": self.token_idf, "idf_unseen": self.idf_unseen}

    def features(self, names: Iterable[Any]) -> np.ndarray:
        """(N, C, len(FEATURES)) float32 evidence of each name for each class."""
        names = list(names)
        k = len(self.words)
        exact = np.zeros((len(names), k), dtype=np.float64)
        head = np.zeros_like(exact)
        abbrev = np.zeros_like(exact)
        sim = np.zeros_like(exact)
        cover = np.zeros_like(exact)  # idf of the name words a matched class word stands for (two for a joined pair)
        name_mass = np.ones(len(names))  # idf of all the name's words
        index = {w: i for i, w in enumerate(self.words)}
        grams = [_trigrams(w) for w in self.words]
        memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # token -> (abbreviation hits, trigram similarity)
        for n, name in enumerate(names):
            tokens, heads, n_words = name_tokens(name)
            idf_w = [self.token_idf.get(t, self.idf_unseen) for t in tokens[:n_words]]
            name_mass[n] = max(sum(idf_w), 1e-6)
            for j, t in enumerate(tokens):
                if t in index:
                    exact[n, index[t]] = 1.0
                    mass = idf_w[j] if j < n_words else idf_w[j - n_words] + idf_w[j - n_words + 1]
                    cover[n, index[t]] = max(cover[n, index[t]], mass)
                if t not in memo:
                    tg = _trigrams(t)
                    memo[t] = (
                        np.array([_abbreviates(t, w) for w in self.words], dtype=np.float64),
                        np.array([_dice(tg, g) for g in grams]) if t.isalpha() else np.zeros(k),
                    )
                a, s = memo[t]
                np.maximum(abbrev[n], a, out=abbrev[n])
                np.maximum(sim[n], s, out=sim[n])
            for t in heads:
                if t in index:
                    head[n, index[t]] = 1.0
        abbrev = abbrev * (1 - exact)
        n_words = np.maximum(self.member.sum(axis=0), 1.0)
        # Shares weigh each class word by how rare it is in training names ("men" tells little, "polish" much),
        # and the second one also by how few class names hold it ("lip" names five classes).
        q, q2 = self.name_idf, self.name_idf * self.idf

        def share(hits, weight):
            return (hits * weight) @ self.member / np.maximum(weight @ self.member, 1e-12)

        out = np.stack(
            [
                share(exact, q),
                share(exact, q2),
                ((exact @ self.member) >= n_words).astype(np.float64) * (self.member.sum(axis=0) > 0),
                exact @ self.member,
                (head @ self.member > 0).astype(np.float64),
                np.minimum(cover @ self.member / name_mass[:, None], 1.0),
                share(abbrev, q),
                share(np.maximum(sim, exact), q),
            ],
            axis=2,
        )
        return out.astype(np.float32)

    def no_shared_word(self, names: Iterable[Any], labels: Iterable[str]) -> np.ndarray:
        """Per product: True when its name holds no word of its class name (plurals folded, pairs joined)."""
        wanted = {c: class_words(c) for c in self.classes}
        return np.array(
            [not (wanted.get(str(lab), set()) & set(name_tokens(nm)[0])) for nm, lab in zip(names, labels)], dtype=bool
        )

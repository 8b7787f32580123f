"""Metadata encoders: categorical vocabularies, the hashed name text, auxiliary targets."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import FusionConfig

TEXT_FIELD = "productDisplayName"
UNKNOWN, MISSING = 0, 1  # reserved codes of every categorical vocabulary
MAX_TOKENS = 32  # hashed n-grams kept per name (the longest real name has 14 words: 27 with pairs)
AUX_FIELDS = {"aux_master": "masterCategory", "aux_sub": "subCategory"}  # output key -> catalogue column
# The fusion settings that shape the encoders: a finetune run takes them from its pretrain run.
INPUT_KEYS = ("mode", "fields", "leaky_fields", "text_buckets", "text_ngrams", "embed_dim")
TOKEN = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------- encoders (vocabularies)


def clean_text(values: Iterable[Any]) -> list[str]:
    """Cells as stripped strings; None / NaN become '' (missing)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            out.append("")
        else:
            out.append(str(v).strip())
    return out


@dataclass(frozen=True)
class CategoryVocab:
    """Codes of one categorical field: 0 unknown, 1 missing, 2.. the values seen in training (sorted)."""

    field: str
    values: tuple[str, ...]

    @classmethod
    def fit(cls, field_name: str, values: Iterable[Any]) -> CategoryVocab:
        """The vocabulary of the non-empty values among ``values`` (the training rows)."""
        return cls(field_name, tuple(sorted({v for v in clean_text(values) if v})))

    @property
    def size(self) -> int:
        return len(self.values) + 2

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        """Values -> int64 codes; empty -> MISSING, never seen in training -> UNKNOWN."""
        index = {v: i + 2 for i, v in enumerate(self.values)}
        return np.asarray([MISSING if not v else index.get(v, UNKNOWN) for v in clean_text(values)], dtype=np.int64)


def s_stem(word: str) -> str:
    """A plural to its singular, nothing else (``wallets``, ``accessories``, ``shoes``, ``dresses``).

    Harman's (1991) S-stemmer: ies -> y (not eies, aies); es -> e (not aes, ees, oes); s -> '' (not us, ss);
    words of 3 letters or fewer stay. Before those, -es comes off the plurals of words that end in s, ch, sh or x
    (sses -> ss, ches -> ch, shes -> sh, xes -> x), where Harman's rules alone would leave "dresse", "watche".
    The odd (test) years write plurals ("Wallets", "Dresses") where the even years write the singular: the ledger
    (docs/selection-ledger.md, "Text stemming") holds the validation figures of these rules against Harman's and none.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


_NOT_CLASS_WORDS = {"and", "of", "the", "with", "for"}  # "Perfume and Body Mist"


def class_words(label: str) -> set[str]:
    """The singular words of a class name that a product name may hold ("Casual Shoes" -> casual, shoe)."""
    return {s_stem(w) for w in TOKEN.findall(label.lower()) if w not in _NOT_CLASS_WORDS}


def holds_class_word(label: str, name: Any) -> bool:
    """Whether the name holds a word of its class, letters and digits only ("T-shirt" holds "Tshirts")."""
    compact = re.sub(r"[^a-z0-9]", "", clean_text([name])[0].lower())
    return any(w in compact for w in class_words(label))


@dataclass(frozen=True)
class TextHasher:
    """productDisplayName -> up to MAX_TOKENS hashed word n-gram buckets, padded with ``buckets`` (the pad index)."""

    buckets: int
    ngrams: int = 2

    def tokens(self, text: str) -> list[str]:
        """Lower-cased alphanumeric words made singular (``s_stem``), then the word pairs (and triples) when ngrams > 1."""
        words = [s_stem(w) for w in TOKEN.findall(text.lower())]
        grams = list(words)
        for n in range(2, self.ngrams + 1):
            grams += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        return grams[:MAX_TOKENS]

    def bucket(self, token: str) -> int:
        # CRC-32, not hash(): Python's string hash changes with every process.
        return zlib.crc32(token.encode("utf-8")) % self.buckets

    def encode(self, texts: Iterable[Any]) -> np.ndarray:
        """(N, MAX_TOKENS) int64 bucket ids, padded with ``buckets``; an empty name is all padding."""
        texts = clean_text(texts)
        out = np.full((len(texts), MAX_TOKENS), self.buckets, dtype=np.int64)
        memo: dict[str, int] = {}
        for i, t in enumerate(texts):
            ids = [memo.setdefault(g, self.bucket(g)) for g in self.tokens(t)]
            out[i, : len(ids)] = ids
        return out


@dataclass(frozen=True)
class MetaVocab:
    """Everything that turns catalogue rows into encoder inputs; fitted once, carried to the finetune stage."""

    categorical: tuple[CategoryVocab, ...]
    text: TextHasher | None

    @classmethod
    def fit(cls, rows: pd.DataFrame, fcfg: FusionConfig) -> MetaVocab:
        """Fit on training rows: ``fields`` (minus the name) then ``leaky_fields`` become categorical inputs."""
        names = [f for f in fcfg.fields if f != TEXT_FIELD] + list(fcfg.leaky_fields)
        absent = [f for f in names + ([TEXT_FIELD] if TEXT_FIELD in fcfg.fields else []) if f not in rows.columns]
        if absent:
            raise ConfigError(
                f"fusion fields {', '.join(absent)} are not columns of this catalogue "
                "(brandName, ageGroup, colour1, fashionType come with the full-resolution dataset)"
            )
        text = TextHasher(fcfg.text_buckets, fcfg.text_ngrams) if TEXT_FIELD in fcfg.fields else None
        return cls(tuple(CategoryVocab.fit(n, rows[n]) for n in names), text)

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.categorical]

    def encode(self, rows: pd.DataFrame) -> dict[str, Tensor]:
        """``{"meta_cat": (N, F) int64[, "meta_text": (N, MAX_TOKENS) int64]}`` aligned with ``rows``."""
        cat = (
            np.stack([v.encode(rows[v.field]) for v in self.categorical], axis=1)
            if self.categorical
            else np.zeros((len(rows), 0), dtype=np.int64)
        )
        out = {"meta_cat": torch.from_numpy(cat)}
        if self.text is not None:
            out["meta_text"] = torch.from_numpy(self.text.encode(rows[TEXT_FIELD]))
        return out

    def to_dict(self) -> dict:
        return {
            "categorical": {v.field: list(v.values) for v in self.categorical},
            "text": None
            if self.text is None
            else {"buckets": self.text.buckets, "ngrams": self.text.ngrams, "stem": True, "rules": "plural"},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> MetaVocab:
        """The vocabularies of ``to_dict``; a model whose names were hashed another way is an error (retrain it)."""
        text = d.get("text")
        if text and (text.get("stem") is not True or text.get("rules") != "plural"):
            raise ConfigError(
                "this model hashed its names without today's plural stemming (a run logged before "
                "stemming was settled): train it again"
            )
        return cls(
            tuple(CategoryVocab(k, tuple(v)) for k, v in d["categorical"].items()),
            TextHasher(int(text["buckets"]), int(text["ngrams"])) if text else None,
        )


def aux_vocab(rows: pd.DataFrame, fcfg: FusionConfig) -> dict[str, tuple[str, ...]]:
    """The classes of each auxiliary head with a weight > 0, from the stage's training rows."""
    weights = {"aux_master": fcfg.aux_master, "aux_sub": fcfg.aux_sub}
    return {
        k: tuple(sorted({v for v in clean_text(rows[col]) if v})) for k, col in AUX_FIELDS.items() if weights[k] > 0
    }


def encode_aux(rows: pd.DataFrame, aux: Mapping[str, tuple[str, ...]]) -> dict[str, Tensor]:
    """Auxiliary targets as int64 indices; a value outside the head's classes is -1 (ignored by the loss)."""
    out = {}
    for key, values in aux.items():
        index = {v: i for i, v in enumerate(values)}
        out[key] = torch.tensor([index.get(v, -1) for v in clean_text(rows[AUX_FIELDS[key]])], dtype=torch.int64)
    return out

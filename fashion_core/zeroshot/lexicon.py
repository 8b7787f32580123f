"""Descriptions of class names from WordNet: what a class name means, in words a product name may use.

A class name is often a word no product name holds ("Kajal and Eyeliner" products say "Eye Liner", Mask and
Peel's say "Face Pack"); its dictionary definition holds more of them. This module reads the noun part of the
Princeton WordNet 3.0 database files (``index.noun``, ``data.noun``, ``noun.exc``; the Debian package
``wordnet-base`` puts them in ``/usr/share/wordnet``, Homebrew's ``wordnet`` in its ``dict`` folder, or
``$FASHION_WORDNET_DIR``) with no other dependency, and describes a class name by the gloss of one sense of each
of its parts: "Kajal and Eyeliner" has the parts Kajal and Eyeliner; a part with no entry of its own falls back
to its last word (its head noun: "Mens Grooming Kit" -> kit). Which sense? Only senses that can be a product
(WordNet's noun.artifact and noun.substance: a bag, not an ill-tempered woman), and of those the one whose gloss
is closest, in sentence-embedding space, to the taxonomy as a whole (the mean embedding of all candidate class
names): "compact" is the cosmetics case, not the car; "toner" the skin lotion, not the printer's powder. Only
the class names and WordNet enter, no product, so a held-out or unseen class's description never depends on data.

    python -c "from fashion_core.zeroshot.lexicon import WordNet; print(WordNet.load().senses('compact'))"
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fashion_core.config.checks import ConfigError

ENV_DIR = "FASHION_WORDNET_DIR"
SEARCH_DIRS = (
    "/usr/share/wordnet",
    "/usr/local/share/wordnet",
    "/opt/homebrew/opt/wordnet/dict",
    "/usr/local/opt/wordnet/dict",
)
FILES = ("index.noun", "data.noun")
PRODUCT_LEXFILES = (6, 27)  # noun.artifact, noun.substance: what a product can be (not a person, a place, an act)
INSTALL_HINT = (
    "class descriptions (zeroshot.class_text=wordnet) need the WordNet 3.0 database files "
    "(index.noun, data.noun): `sudo apt-get install wordnet-base` (Debian/Ubuntu: /usr/share/wordnet), "
    "`brew install wordnet`, or set FASHION_WORDNET_DIR to a folder holding them"
)
_SUFFIXES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
)  # WordNet's own noun detachment rules (morphy)


@dataclass(frozen=True)
class Sense:
    """One noun synset: its lemmas (spaces, not underscores) and its gloss (the definition, examples dropped)."""

    offset: int
    lemmas: tuple[str, ...]
    gloss: str
    lexfile: int  # WordNet's lexicographer file: 6 noun.artifact, 27 noun.substance, 18 noun.person, ...


def wordnet_dir() -> Path:
    """The folder with the database files; a clear error says how to get them when none is found."""
    env = os.environ.get(ENV_DIR)
    for d in ([env] if env else []) + list(SEARCH_DIRS):
        if d and all((Path(d) / f).is_file() for f in FILES):
            return Path(d)
    where = f" ({ENV_DIR}={env} lacks {' / '.join(FILES)})" if env else ""
    raise ConfigError(INSTALL_HINT + where)


class WordNet:
    """The noun index of a WordNet database, read once; synsets are read on demand by their byte offset."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index: dict[str, list[int]] = {}
        with open(self.folder / "index.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):  # the licence header
                    continue
                parts = line.split()
                n_synsets, n_ptr = int(parts[2]), int(parts[3])
                self.index[parts[0]] = [int(o) for o in parts[6 + n_ptr : 6 + n_ptr + n_synsets]]
        self.exceptions: dict[str, str] = {}
        exc = self.folder / "noun.exc"
        if exc.is_file():
            for line in exc.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    self.exceptions.setdefault(parts[0], parts[1])
        data = self.folder / "data.noun"
        self.source = {
            "package": "WordNet 3.0 (wordnet-base)",
            "file": str(data),
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        }

    @classmethod
    def load(cls, folder: str | Path | None = None) -> WordNet:
        return _load(str(Path(folder) if folder else wordnet_dir()))

    def lemmas(self, phrase: str) -> list[str]:
        """The index entries a word or phrase may be (lower case, spaces as ``_``): itself and its singular forms
        by WordNet's exception list and detachment rules ("booties" -> booty, bootie); empty if none."""
        key = re.sub(r"[\s\-]+", "_", phrase.strip().lower())
        keys = [key, self.exceptions.get(key, "")]
        keys += [key[: -len(suf)] + rep for suf, rep in _SUFFIXES if key.endswith(suf) and len(key) > len(suf) + 1]
        return list(dict.fromkeys(k for k in keys if k in self.index))

    def senses(self, phrase: str) -> list[Sense]:
        """The noun senses of a word or phrase (of all its lemmas), most frequent first; empty if WordNet lacks it."""
        offsets = [o for k in self.lemmas(phrase) for o in self.index[k]]
        return [self.synset(o) for o in dict.fromkeys(offsets)]

    def synset(self, offset: int) -> Sense:
        with open(self.folder / "data.noun", "rb") as f:
            f.seek(offset)
            line = f.readline().decode("utf-8", errors="replace")
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        n_words = int(parts[3], 16)
        lemmas = tuple(re.sub(r"\(.*\)$", "", parts[4 + 2 * i]).replace("_", " ") for i in range(n_words))
        gloss = gloss.split('; "')[0].strip().rstrip(";").strip()
        return Sense(offset, lemmas, gloss, int(parts[1]))


@lru_cache(maxsize=4)
def _load(folder: str) -> WordNet:
    return WordNet(Path(folder))


def class_parts(name: str) -> list[str]:
    """The parts a class name joins with "and" / "&" / "/" ("Kajal and Eyeliner" -> Kajal, Eyeliner)."""
    return [p.strip() for p in re.split(r"\s+(?:and|&)\s+|/|,", name) if p.strip()]


def part_senses(wn: WordNet, part: str) -> tuple[str, list[Sense]]:
    """The phrase WordNet knows for one part (the part itself, else its last two words, else its last word) and
    its senses that can be a product (a made thing or a substance: ``PRODUCT_LEXFILES``); ("", []) when none."""
    words = part.split()
    for phrase in (part, " ".join(words[-2:]), words[-1] if words else ""):
        if phrase:
            senses = [s for s in wn.senses(phrase) if s.lexfile in PRODUCT_LEXFILES]
            if senses:
                return phrase, senses
    return "", []


def sense_text(sense: Sense, phrase: str) -> str:
    """How a sense is written into a description: its gloss, and its other lemmas ("nail enamel", "nail varnish")."""
    others = [lemma for lemma in sense.lemmas if lemma.lower() != phrase.lower()]
    return sense.gloss + (f" (also {', '.join(others)})" if others else "")


def class_definitions(classes: Sequence[str], wn: WordNet, embed, domain: np.ndarray | None = None) -> list[str]:
    """One definition per class: the chosen sense of each part of its name, as "Phrase, gloss (also …)" joined by
    "; " ("" when WordNet defines no part).

    Args:
        classes: the candidate class names (the taxonomy).
        wn: the WordNet database.
        embed: texts -> (N, D) unit rows (the sentence encoder); picks a sense when a part has several.
        domain: (D,) the catalogue's direction; default the mean embedding of the class names.
    """
    if domain is None:
        domain = np.asarray(embed(list(classes)), np.float64).mean(axis=0)
    domain = np.asarray(domain, np.float64)
    domain = domain / max(float(np.linalg.norm(domain)), 1e-12)
    out = []
    for c in classes:
        found = []
        for part in class_parts(c):
            phrase, senses = part_senses(wn, part)
            if not senses:
                continue
            texts = [sense_text(s, phrase) for s in senses]
            # the sense closest to the taxonomy as a whole ("compact": the cosmetics case, not the car)
            best = int(np.argmax(np.asarray(embed(texts), np.float64) @ domain)) if len(texts) > 1 else 0
            found.append(f"{phrase}, {texts[best]}")
        out.append("; ".join(found))
    return out


def describe_classes(
    classes: Sequence[str], wn: WordNet, embed, domain: np.ndarray | None = None, template: str = "{}"
) -> tuple[list[str], dict]:
    """One description per class: ``template`` filled with the name, then ": " and its definition
    (``class_definitions``; the template alone when there is none).

    Returns:
        (descriptions, definitions): ``definitions`` maps each class to its definition ("" for none).
    """
    defs = class_definitions(classes, wn, embed, domain)
    texts = [template.replace("{}", c) + (f": {d}" if d else "") for c, d in zip(classes, defs)]
    return texts, dict(zip(classes, defs))

"""Stand-ins for the zero-shot tests: a concept sentence encoder and a catalogue with unseen classes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fashion_core.config.schema import load_experiment
from tests.helpers.data import HEADER, write_image
from tests.helpers.store import module_store

EXP = Path(__file__).resolve().parents[2] / "experiments"


class ConceptEncoder:
    """A stand-in for the packaged sentence encoder (``text_encoder.load_encoder``) in logic tests: each word is a
    fixed random direction (synonyms share one: "Nightdress" means Baby Dolls, "Deo" Deodorant), a text the unit
    mean of its words'."""

    SYNONYMS = {"nightdress": "babydoll", "baby": "babydoll", "doll": "babydoll", "deo": "deodorant"}
    source = {"package": "concept-stub", "version": "0", "file": "none", "sha256": "concept-stub-1"}

    def __init__(self, dim: int = 256):
        self.dim = dim

    def _vector(self, word: str) -> np.ndarray:
        import zlib

        if word not in self.SYNONYMS and len(word) > 3 and word.endswith("s"):
            word = word[:-1]
        word = self.SYNONYMS.get(word, word)
        return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)

    def encode(self, texts) -> np.ndarray:
        import re

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = re.findall("[a-z]+", str(t).lower())
            if words:
                v = np.mean([self._vector(w) for w in words], axis=0)
                out[i] = v / np.linalg.norm(v)
        return out


# class -> (product names; "seen" classes have products in even (training) and odd (test) years, the others odd only)
SEEN = {
    "Watches": ["Titan Men Black Watch", "Fastrack Women Steel Watch", "Casio Men Digital Watch"],
    "Tshirts": ["Nike Men Blue T-shirt", "Puma Women Red Tshirt", "Adidas Men Grey T-shirt"],
    "Night suits": ["Sweet Dreams Women Night Suit", "SDL Women Pink Night Suit", "Sweet Dreams Men Night Suit"],
    "Wallets": ["Hidesign Men Brown Wallet", "Baggit Women Red Wallet", "Lino Perros Men Wallet"],
    "Ties": ["Tossido Men Red Tie", "Park Avenue Men Blue Tie", "Louis Philippe Men Silk Tie"],
    "Casual Shoes": ["Puma Men Casual Shoes", "Vans Women Casual Shoe", "Converse Men Black Casual Shoes"],
    "Sweatshirts": ["Puma Men Grey Sweat", "Roadster Women Blue Sweat", "Nike Men Black Sweat"],  # a short form
}
UNSEEN = {
    "Lipstick": ["Lakme Red Lipstick 03", "Colorbar Matte Lipstick 12"],  # shares its word with the name
    "Deodorant": ["Wildstone Men Code Deo", "Axe Men Dark Temptation Deo"],  # no shared word: "Deo"
    "Eyeshadow": ["Colorbar Copper Eye Shadow 002", "Lakme Black Eye Shadow 010"],  # no shared word: "Eye Shadow"
    "Suits": ["Raymond Men Grey Suit", "Blackberrys Men Navy Suit"],  # shares "suit" with the seen Night suits
}


def make_zs_dataset(root: Path, n_seen: int = 24, n_unseen: int = 6, unseen: dict | None = None) -> Path:
    """A catalogue whose unseen classes (default ``UNSEEN``) exist only in odd (test) years; "Bags" is the top
    class (pretrain)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines, pid = [HEADER], 1000
    plan = [("Bags", ["Baggit Women Black Bag", "Lavie Women Brown Bag"], 40, True)]
    plan += [(c, names, n_seen, True) for c, names in SEEN.items()]
    plan += [(c, names, n_unseen, False) for c, names in (UNSEEN if unseen is None else unseen).items()]
    for k, (label, names, n, seen) in enumerate(plan):
        for j in range(n):
            year = 2013 if not seen or j % 2 else 2012
            gender = "Women" if "Women" in names[j % len(names)] else "Men"
            # four subCategories, so the calibration's folds can hold whole groups out (zeroshot.fold_by)
            sub = ("Topwear", "Bottomwear", "Accessories", "Innerwear")[k % 4]
            lines.append(f"{pid},{gender},Apparel,{sub},{label},Blue,Summer,{year},Casual,{names[j % len(names)]}")
            write_image(root / "images" / f"{pid}.jpg", k, rng)
            pid += 1
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


def cfg(stage="finetune", **over):
    """The zero-shot technique file of ``stage`` on the smoke profile, with ``over`` on top."""
    over = {"data.top_k": 1, "metadata.logreg_c": 1.0, **over}
    return load_experiment(EXP / stage / "zeroshot.yaml", overrides=over, profile="smoke", stage=stage)


@contextmanager
def concept_store(tmp_path_factory, name: str) -> Iterator[Path]:
    """A module's store (``module_store``) in which the technique's packaged sentence encoder is the tiny
    ``ConceptEncoder``; yields the store's folder."""
    from fashion_core.zeroshot import text_encoder

    with module_store(tmp_path_factory, name) as (path, mp):
        mp.setattr(text_encoder, "load_encoder", ConceptEncoder)
        yield path

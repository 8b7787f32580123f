"""Splits: pure, seeded functions over the Catalog.

- master split: even ``year`` -> train, odd ``year`` -> test (invalid rows -> ``excluded``);
- subsets: the top-k classes ranked by frequency -> ``pretrain``, every other class -> ``finetune``.
  By default the ranking counts the TRAINING half only: the test half must not choose
  what we train on, and ranking over the whole table would put ``Perfume and Body Mist``
  (614 products, none in an even year) into the top 20 with nothing to train on.
  ``rank_on="all"`` ranks over every valid product (what several public repos did);
- validation (``data.val_by``):
  ``random`` (default): carved out of train per class, seeded; a class with one training example keeps it;
  ``year``: every even-year product of ``data.val_years`` (default 2016), so that validation, like the
  test split, lies in other years than training and sees the year shift. A class whose every even-year
  product lies in the held-out years keeps them all in train (no validation for it), so that it stays
  learnable, as a one-example class does under ``random`` (on the real data: 4 finetune classes,
  6 products, with 2016 held out).

The result is the table docs/ARCHITECTURE.md ("Contracts") names: ``id,label,year,split,subset``.

    python -m fashion_core.data.splits /path/to/dataset
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashion_core.config.checks import LEAKY_FIELDS, META_FIELDS
from fashion_core.config.schema import DataConfig
from fashion_core.data.cache import catalog_cache_key
from fashion_core.data.catalog import LABEL
from fashion_core.data.richmeta import RICH_FIELDS

SUBSETS = ("pretrain", "finetune")


class SplitError(ValueError):
    """Split settings that cannot be applied to this catalogue."""


def rank_classes(catalog: pd.DataFrame, rank_on: str = "train") -> pd.Series:
    """Valid products per class, most frequent first (ties by name), counted on even years or all."""
    valid = catalog[catalog["valid"]]
    if rank_on == "train":
        valid = valid[valid["year"] % 2 == 0]
    elif rank_on != "all":
        raise SplitError(f"unknown rank_on {rank_on!r}; choose one of: train, all")
    counts = valid[LABEL].value_counts()
    order = sorted(counts.index, key=lambda c: (-counts[c], c))
    return counts.loc[order]


def top_classes(catalog: pd.DataFrame, top_k: int, rank_on: str = "train") -> list[str]:
    """The top-k class names by frequency."""
    ranked = rank_classes(catalog, rank_on)
    if top_k > len(ranked):
        raise SplitError(f"top_k={top_k} is larger than the number of classes ranked ({len(ranked)})")
    return list(ranked.index[:top_k])


def carve_validation(train_ids: np.ndarray, train_labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over the training rows: True = validation.

    Per class with n training rows: ``min(n - 1, max(1, round(fraction * n)))`` go to
    validation when n >= 2 (so every class keeps at least one training example and,
    when it has two or more, shows up in validation); a class with one row keeps it in train.
    Which rows go is decided by a seeded permutation of the class's ids (sorted first),
    so the result does not depend on the catalogue's row order.
    """
    mask = np.zeros(len(train_ids), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for label in sorted(set(train_labels.tolist())):
        rows = np.flatnonzero(train_labels == label)
        n = len(rows)
        if n < 2:
            continue
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        rows = rows[np.argsort(train_ids[rows], kind="stable")]
        mask[rows[rng.permutation(n)[:n_val]]] = True
    return mask


def hold_out_years(train_labels: np.ndarray, train_years: np.ndarray, years: tuple[int, ...]) -> np.ndarray:
    """Boolean mask over the training rows: True = validation (the row's year is one of ``years``).

    A class with no training row outside ``years`` keeps all its rows in train: held out, it
    could not be learned at all.
    """
    mask = np.isin(train_years, np.asarray(years, dtype=np.int64))
    kept_somewhere = set(train_labels[~mask].tolist())
    return mask & np.isin(train_labels, list(kept_somewhere))


def make_splits(catalog: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """The split table ``id,label,year,split,subset`` for every catalogue row (same order).

    ``split``: train / val / test / excluded; ``subset``: pretrain / finetune ('' when no label).
    Raises SplitError when ``val_by=year`` names no year that has a valid training product.
    """
    top = set(top_classes(catalog, cfg.top_k, cfg.rank_on))
    out = pd.DataFrame(
        {
            "id": catalog["id"].to_numpy(),
            "label": catalog[LABEL].to_numpy(),
            "year": catalog["year"].to_numpy(),
        }
    )
    valid = catalog["valid"].to_numpy()
    year = catalog["year"].fillna(-1).to_numpy().astype(np.int64)
    split = np.where(~valid, "excluded", np.where(year % 2 == 0, "train", "test")).astype(object)
    train_rows = np.flatnonzero(split == "train")
    if cfg.val_by == "year":
        train_years = year[train_rows]
        if not np.isin(train_years, np.asarray(cfg.val_years, dtype=np.int64)).any():
            present = ", ".join(str(y) for y in sorted(set(train_years.tolist())))
            raise SplitError(
                f"data.val_years {', '.join(map(str, cfg.val_years))}: no valid training product "
                f"in {'that year' if len(cfg.val_years) == 1 else 'those years'}; "
                f"training years: {present}"
            )
        is_val = hold_out_years(out["label"].to_numpy()[train_rows], train_years, cfg.val_years)
    elif cfg.val_by == "random":
        # Validation is carved per subset too, but seeding per class makes the stage irrelevant.
        is_val = carve_validation(
            out["id"].to_numpy()[train_rows], out["label"].to_numpy()[train_rows], cfg.val_fraction, cfg.split_seed
        )
    else:
        raise SplitError(f"unknown val_by {cfg.val_by!r}; choose one of: random, year")
    split[train_rows[is_val]] = "val"
    out["split"] = split.astype(str)
    out["subset"] = np.where(out["label"] == "", "", np.where(out["label"].isin(top), "pretrain", "finetune"))
    return out


def split_settings(cfg: DataConfig) -> dict:
    """The data settings that decide which rows are where (the validation ones only for their ``val_by``)."""
    settings = {"top_k": cfg.top_k, "rank_on": cfg.rank_on, "val_by": cfg.val_by}
    if cfg.val_by == "year":
        settings["val_years"] = sorted(int(y) for y in cfg.val_years)
    else:
        settings.update(val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
    return settings


def digest_columns(catalog: pd.DataFrame) -> list[str]:
    """The catalogue columns a model may read as input or auxiliary target, in a fixed order (those present)."""
    names = dict.fromkeys([*META_FIELDS, *LEAKY_FIELDS, *RICH_FIELDS])
    return [c for c in names if c in catalog.columns]


def dataset_digest(catalog: pd.DataFrame, cfg: DataConfig) -> str:
    """Hash of what a run learns from and is scored on: 16 hex chars.

    Covers the valid catalogue (id, label, year, every metadata column a model can read:
    :func:`digest_columns`), the image cache's key (``cache.cache_key`` of the product ids, image
    file sizes and cached size, in id order: the small and the full-resolution photos differ), the
    cached height and width,
    and the split settings (:func:`split_settings`). Pure: the same table and settings give the
    same digest, whatever the row order.
    """
    valid = catalog[catalog["valid"]].sort_values("id", kind="stable")
    h = hashlib.sha256()
    h.update(valid["id"].to_numpy().astype(np.int64).tobytes())
    h.update("\x1f".join(valid[LABEL].tolist()).encode())
    h.update(valid["year"].astype("int64").to_numpy().tobytes())
    for col in digest_columns(catalog):
        values = valid[col].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v))
        h.update(f"\x1e{col}\x1d".encode() + "\x1f".join(values.tolist()).encode())
    settings = {
        **split_settings(cfg),
        "height": cfg.height,
        "width": cfg.width,
        # the key of the id-sorted catalogue: the same images in another row order, the same digest
        "image_cache_key": catalog_cache_key(catalog.sort_values("id", kind="stable"), cfg.height, cfg.width),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SplitSummary:
    counts: pd.DataFrame  # class x (subset, n_train, n_val, n_test)
    top: list[str]
    no_test: dict[str, list[str]]  # subset -> classes with training images but no test images
    test_only: dict[str, list[str]]  # subset -> classes with test images but no training images


def summarize_splits(splits: pd.DataFrame, top: list[str]) -> SplitSummary:
    """Per-class counts and the classes that cannot be evaluated or learned, per subset."""
    s = splits[splits["split"] != "excluded"]
    counts = (
        s.groupby(["label", "split"])
        .size()
        .unstack(fill_value=0)
        .reindex(columns=["train", "val", "test"], fill_value=0)
    )
    counts.columns = ["n_train", "n_val", "n_test"]
    counts.insert(0, "subset", np.where(counts.index.isin(top), "pretrain", "finetune"))
    rank = {c: i for i, c in enumerate(top)}
    counts = counts.assign(_r=[rank.get(c, len(top)) for c in counts.index], _n=-(counts["n_train"] + counts["n_val"]))
    counts = counts.sort_values(["_r", "_n"]).drop(columns=["_r", "_n"])
    counts.index.name = "class"
    no_test, test_only = {}, {}
    for sub in SUBSETS:
        c = counts[counts["subset"] == sub]
        no_test[sub] = c.index[(c["n_test"] == 0)].tolist()
        test_only[sub] = c.index[(c["n_train"] + c["n_val"] == 0)].tolist()
    return SplitSummary(counts=counts, top=list(top), no_test=no_test, test_only=test_only)


def stage_classes(splits: pd.DataFrame, subset: str) -> list[str]:
    """Classes a stage can learn: those of the subset with at least one train or val image, by name."""
    s = splits[(splits["subset"] == subset) & splits["split"].isin(["train", "val"])]
    return sorted(s["label"].unique().tolist())


if __name__ == "__main__":
    import sys

    from fashion_core.data.catalog import build_catalog

    cat = build_catalog(sys.argv[1])
    cfg = DataConfig()
    sp = make_splits(cat, cfg)
    summ = summarize_splits(sp, top_classes(cat, cfg.top_k, cfg.rank_on))
    print(sp["split"].value_counts().to_dict())
    print(summ.counts.head(25).to_string())
    print("no test images:", summ.no_test)
    print("test only:", summ.test_only)

"""A zero-shot benchmark that no design has seen: classes with training images, held out and scored as unseen.

The stage's own unseen classes (finetune: test products of classes no even year holds) are fixed, so every
pass that reads their test errors to improve the method makes their figure more optimistic. A held-out draw
gives a fresh one: ``zeroshot.holdout_n`` classes that have training and test images, drawn with
``zeroshot.holdout_seed`` (or listed in ``zeroshot.holdout_classes``), lose their training and validation rows
before anything is fitted (the metadata model, the name matcher, the text map, the calibration never see
them) and are scored as unseen on their test images. The draw is the benchmark's definition: write its seed
down before the first run, then change only the run seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashion_core.config.checks import ConfigError
from fashion_core.evaluation.metrics import gzsl_summary

HOLDOUT_TAG = "zs_holdout_classes"  # run tag: the held-out classes, comma-separated


def eligible_classes(splits: pd.DataFrame, stage: str) -> list[str]:
    """The stage's classes a draw may hold out: those with training images and test images, sorted."""
    sp = splits[splits["subset"] == stage]
    has = sp.groupby("label")["split"].agg(lambda s: {"train", "test"} <= set(s))
    return sorted(str(c) for c, ok in has.items() if ok and str(c))


def class_group(splits: pd.DataFrame, catalog: pd.DataFrame, column: str) -> dict[str, str]:
    """class -> its group: the most common ``column`` value among its products (``column`` a catalogue field)."""
    if column not in catalog.columns:
        raise ConfigError(f"zeroshot.holdout_by={column}: the catalogue has no such column")
    values = catalog.drop_duplicates("id").set_index("id")[column].astype(str)
    frame = pd.DataFrame(
        {"label": splits["label"].astype(str).to_numpy(), "g": values.reindex(splits["id"]).to_numpy()}
    )
    return {str(c): str(g["g"].mode().iloc[0]) for c, g in frame.groupby("label") if c}


def draw_holdout(
    splits: pd.DataFrame,
    catalog: pd.DataFrame,
    stage: str,
    n: int,
    seed: int,
    by: str = "class",
    classes: Sequence[str] = (),
) -> list[str]:
    """The classes to hold out, sorted: ``classes`` if given (each must be eligible), else a seeded draw.

    Args:
        n: how many classes (``by=class``), or at least how many (whole groups are added until ``n`` are in).
        seed: the draw's seed (``numpy.random.default_rng``); the same table and seed give the same classes.
        by: ``class`` or a catalogue column (``subCategory``, ``masterCategory``) whose groups are drawn whole.
    """
    pool = eligible_classes(splits, stage)
    if classes:
        unknown = sorted(set(classes) - set(pool))
        if unknown:
            raise ConfigError(
                f"zeroshot.holdout_classes: {', '.join(unknown)} not among the {stage} classes with training and "
                f"test images ({len(pool)}: {', '.join(pool)})"
            )
        return sorted(set(classes))
    if n <= 0:
        return []
    if n >= len(pool):
        raise ConfigError(
            f"zeroshot.holdout_n={n}: the {stage} stage has {len(pool)} classes with training and test images; "
            "hold out fewer, so that seen classes remain"
        )
    rng = np.random.default_rng(seed)
    if by == "class":
        return sorted(str(c) for c in rng.choice(pool, size=n, replace=False))
    group = class_group(splits[splits["label"].isin(pool)], catalog, by)
    groups = sorted(set(group.values()))
    out: list[str] = []
    for g in rng.permutation(groups):
        if len(out) >= n:
            break
        out += [c for c in pool if group.get(c) == g]
    if len(out) >= len(pool):
        raise ConfigError(f"zeroshot.holdout_by={by}: drawing {n} classes in whole groups leaves no seen class")
    return sorted(out)


def hold_out(splits: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """A copy of ``splits`` whose training and validation rows of ``classes`` are excluded (test rows stay)."""
    out = splits.copy()
    rows = out["label"].isin(list(classes)) & out["split"].isin(["train", "val"])
    out.loc[rows, "split"] = "excluded"
    return out


def holdout_of(p, zeroshot: dict, stage: str):
    """(prepared data with the held-out classes' training and validation rows excluded, their names) for a
    ``zeroshot`` config section (a dict, as logged); the data unchanged and ``[]`` when no hold-out is set."""
    import dataclasses

    held = draw_holdout(
        p.splits,
        p.catalog,
        stage,
        int(zeroshot.get("holdout_n") or 0),
        int(zeroshot.get("holdout_seed") or 0),
        str(zeroshot.get("holdout_by") or "class"),
        tuple(zeroshot.get("holdout_classes") or ()),
    )
    return (dataclasses.replace(p, splits=hold_out(p.splits, held)), held) if held else (p, [])


def held_out_summary(table: pd.DataFrame, held: Sequence[str]) -> dict[str, float | int]:
    """U and H over the held-out classes alone, and U over the stage's own unseen classes (a per-class table with
    ``class, n_train, n_test, top1, top5``); empty when nothing is held out.

    Both are :func:`gzsl_summary` on part of the table: the held-out classes beside the seen ones (so they are the
    only unseen classes), and the table without them (so the stage's own unseen classes are).
    """
    if not len(held):
        return {}
    drawn = table["class"].isin(list(held)).to_numpy()
    ours = gzsl_summary(table.assign(n_train=np.where(drawn, 0, table["n_train"]))[drawn | (table["n_train"] > 0)])
    out: dict[str, float | int] = {
        "top1_unseen_heldout_mean": ours["top1_unseen_mean"],
        "top1_harmonic_heldout": ours["top1_harmonic"],
        "n_classes_heldout": ours["n_classes_unseen"],
    }
    native = gzsl_summary(table[~drawn])
    if native["n_classes_unseen"]:
        out["top1_unseen_native_mean"] = native["top1_unseen_mean"]
        out["n_classes_unseen_native"] = native["n_classes_unseen"]
    return out

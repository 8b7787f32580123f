"""Fitting both models on some seen classes and choosing the calibration on validation with pseudo-unseen folds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.evaluation.scoring import class_mean_accuracy
from fashion_core.fusion.metadata_only import class_scores, fit_logreg
from fashion_core.zeroshot.ranker import MIXES, doubt, fit_ranker, harmonic, ranker_log_proba, stacked_scores
from fashion_core.zeroshot.semantic import TextInputs, with_text

logger = logging.getLogger(__name__)

N_FOLDS = 3  # pseudo-unseen folds for gamma
HOLDOUT = 1 / 3  # share of the seen classes (with validation images) held out per fold
GAMMAS = tuple(np.round(np.arange(-4.0, 12.0001, 0.25), 2))  # calibration constants tried (log-probability units)
# How much more a seen class is held back per unit of the metadata model's doubt (ranker.doubt):
# gamma(x) = gamma + beta * doubt(x); beta 0 is the single constant of calibrated stacking.
BETAS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


# ---------------------------------------------------------------- fitting, calibration


@dataclass
class SeenModels:
    """The two models fitted on some seen classes: the metadata logistic regression and the name ranker."""

    clf: Any
    w: np.ndarray
    seen: np.ndarray  # (C,) bool: classes with training rows in this fit


def fit_models(
    x_train,
    phi_train: np.ndarray,
    y_train: np.ndarray,
    n_classes: int,
    c: float,
    class_weight: str | None,
    seed: int,
    clf=None,
) -> SeenModels:
    """Fit both models on the given training rows (labels index the C candidates); ``clf``: the metadata model
    already fitted on exactly these rows with this ``c`` (saves its refit)."""
    if clf is None:
        clf, _ = fit_logreg(x_train, y_train, c, class_weight, seed)
    w = fit_ranker(phi_train, y_train, balanced=class_weight == "balanced")
    seen = np.zeros(n_classes, dtype=bool)
    seen[np.unique(y_train)] = True
    return SeenModels(clf, w, seen)


def model_scores(models: SeenModels, x, phi: np.ndarray, gamma: float, mix: str, beta: float = 0.0) -> np.ndarray:
    """Stacked GZSL scores (N, C) of some rows."""
    meta = class_scores(models.clf, x, len(models.seen))
    return stacked_scores(meta, ranker_log_proba(phi, models.w), models.seen, gamma, mix, beta)


def split_means(labels: np.ndarray, pred1: np.ndarray, groups: Sequence[np.ndarray]) -> list[float]:
    """Class-mean Top-1 over the rows whose label is in each group of class indices (NaN for an empty group)."""
    out = []
    for g in groups:
        rows = np.isin(labels, g)
        out.append(class_mean_accuracy(labels[rows], pred1[rows, None])[0] if rows.any() else float("nan"))
    return out


def pseudo_unseen_folds(
    seen_with_val: np.ndarray, seed: int, n_folds: int = N_FOLDS, share: float = HOLDOUT, groups: dict | None = None
) -> list[np.ndarray]:
    """Class indices held out as pseudo-unseen in each fold: disjoint seeded slices of a permutation.

    ``groups`` (class index -> group, e.g. its subCategory; ``zeroshot.fold_by``): whole groups are held out
    together, so a pseudo-unseen class keeps no sibling among the pseudo-seen ones, as the finetune stage's
    unseen classes (a department new to the catalogue, cosmetics) have none. The groups, largest first (equal
    sizes in a seeded order), go one by one to the fold with the fewest classes so far; a class without a group
    is a group of its own."""
    classes = np.sort(np.asarray(seen_with_val))
    k = int(round(share * len(classes)))
    if len(classes) < 2 or k < 1:
        return []
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(classes)
        folds = np.array_split(order, max(1, min(n_folds, len(classes) // k)))
        return [np.sort(f) for f in folds[:n_folds] if 0 < len(f) < len(classes)]
    keys = [str(groups.get(int(c), f"class {int(c)}")) for c in classes]
    names = sorted(set(keys))
    if len(names) < 2:
        return []
    grouped: list[list[Any]] = [[] for _ in range(max(1, min(n_folds, len(classes) // k, len(names))))]
    tie = dict(zip(names, rng.permutation(len(names))))
    for g in sorted(names, key=lambda g: (-keys.count(g), tie[g])):  # largest first (balanced), seeded ties
        min(grouped, key=len).extend(c for c, key in zip(classes, keys) if key == g)
    return [np.sort(np.asarray(f, dtype=classes.dtype)) for f in grouped if 0 < len(f) < len(classes)]


def class_groups(rows: pd.DataFrame, labels: np.ndarray, column: str) -> dict | None:
    """class index -> its group: the most common value of ``column`` among the class's (training) rows; None
    for ``zeroshot.fold_by=class`` (or a column the rows lack: then classes are held out one by one)."""
    if column == "class" or column not in rows.columns or len(rows) == 0:
        return None
    frame = pd.DataFrame({"y": np.asarray(labels), "g": rows[column].astype(str).to_numpy()})
    return {int(y): g["g"].mode().iloc[0] for y, g in frame.groupby("y")}


def calibrate(
    x_train,
    phi_train,
    y_train,
    x_val,
    phi_val,
    y_val,
    n_classes: int,
    c: float,
    class_weight: str | None,
    seed: int,
    betas: Sequence[float] = BETAS,
    text: TextInputs | None = None,
    groups: dict | None = None,
) -> tuple[float, float, str, pd.DataFrame]:
    """The calibration: (gamma, beta, mix) of the best mean validation H over pseudo-unseen folds, and the curve.

    In each fold the held-out classes' training rows leave both fits (and the text map of ``text``, when it
    learns one); every validation row is scored over all candidates, and S / U are the class-mean Top-1 of
    the pseudo-seen / pseudo-unseen validation rows. ``groups``: hold out whole groups of classes
    (``pseudo_unseen_folds``).
    """
    texts = [text] if text is not None else []
    folds = pseudo_unseen_folds(np.unique(y_val), seed, groups=groups)
    rows = []
    for i, held in enumerate(folds):
        keep = ~np.isin(y_train, held)
        if len(np.unique(y_train[keep])) < 2:
            continue
        fold_phi_train, fold_phi_val = phi_train[keep], phi_val
        for t in texts:  # the text map, too, learns from the fold's seen classes only
            ev = t.evidence(keep, y_train[keep], class_weight == "balanced")
            fold_phi_train = with_text(fold_phi_train, ev, t.emb["train"][keep])
            fold_phi_val = with_text(fold_phi_val, ev, t.emb["val"])
        models = fit_models(
            x_train[np.flatnonzero(keep)], fold_phi_train, y_train[keep], n_classes, c, class_weight, seed
        )
        pseudo_seen = np.setdiff1d(np.unique(y_val), held)

        nov = doubt(class_scores(models.clf, x_val, n_classes), models.seen)
        for mix in MIXES:
            base = model_scores(models, x_val, fold_phi_val, 0.0, mix)
            for b in betas:
                for g in GAMMAS:
                    s = base.copy()
                    s[:, models.seen] -= g + b * nov[:, None]
                    s_mean, u_mean = split_means(y_val, s.argmax(axis=1), [pseudo_seen, held])
                    rows.append(
                        {
                            "fold": i,
                            "mix": mix,
                            "beta": float(b),
                            "gamma": float(g),
                            "n_held_out": len(held),
                            "val_seen": s_mean,
                            "val_unseen": u_mean,
                            "val_harmonic": harmonic(s_mean, u_mean),
                        }
                    )
    curve = pd.DataFrame(
        rows, columns=["fold", "mix", "beta", "gamma", "n_held_out", "val_seen", "val_unseen", "val_harmonic"]
    )
    if curve.empty:
        logger.info(
            f"zero-shot: too few seen classes with validation images to hold some out: gamma = 0, mix {MIXES[0]}"
        )
        return 0.0, 0.0, MIXES[0], curve
    mean = curve.groupby(["mix", "beta", "gamma"], sort=False)[["val_seen", "val_unseen", "val_harmonic"]].mean()
    # the first among equals: gate before product, smaller beta, smaller gamma
    mix, beta, gamma = mean["val_harmonic"].idxmax()
    best = mean.loc[(mix, beta, gamma)]
    logger.info(
        f"zero-shot calibration on validation ({curve['fold'].nunique()} folds of pseudo-unseen classes): "
        f"mix {mix}, gamma={gamma:g}, beta={beta:g}  pseudo-seen {best['val_seen']:.4f}  "
        f"pseudo-unseen {best['val_unseen']:.4f}  H {best['val_harmonic']:.4f}"
    )
    return float(gamma), float(beta), str(mix), curve

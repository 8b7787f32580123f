"""Paired statistics over one stage's test images: every run of a stage is scored on the same images.

A bootstrap replicate resamples each class's test images (stratified: a class keeps its size) ONCE,
and that one resample scores every run of the stage: the seeds of a technique and the techniques
compared with each other. Pairing is what makes a difference between two techniques narrower than
their separate intervals suggest (both are hit or missed on the same hard images), and it is what
makes three identical seeds give exactly one seed's interval (resampling each seed's images apart
would treat one test set as three). docs/report-statistics.md says how every figure is computed.

The model is rliable's practice for comparing learning algorithms (stratified bootstrap intervals,
probability of improvement), with classes in the role of its tasks and seeds in the role of its runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from fashion_core.evaluation import metrics as M

ALPHA = 0.05


# ---------------------------------------------------------------- one stage's shared test images


@dataclass
class StageSample:
    """A stage's test images and the bootstrap resamples every run of the stage shares.

    ``weights[c]`` is a (B, n_c) array: how often each test image of class ``c`` is drawn in
    replicate b (n_c draws with replacement from the class's n_c images).
    """

    ids: np.ndarray  # test product ids, the order every hit vector follows
    classes: list[str]
    label: np.ndarray  # class index of each image (-1: a label not among ``classes``)
    members: list[np.ndarray]  # per class, the positions of its images in ``ids``
    weights: list[np.ndarray]
    n_boot: int

    @classmethod
    def build(
        cls, ids: np.ndarray, labels: Sequence[str], classes: Sequence[str], n_boot: int = 1000, seed: int = 0
    ) -> StageSample:
        """Draw the shared resamples of a stage's test set (class by class, in ``classes`` order)."""
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        label = np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)
        rng = np.random.default_rng(seed)
        members, weights = [], []
        for c in range(len(classes)):
            pos = np.flatnonzero(label == c)
            n = len(pos)
            members.append(pos)
            if n == 0:
                weights.append(np.zeros((n_boot, 0), dtype=np.float32))
                continue
            draw = rng.integers(0, n, size=(n_boot, n))
            flat = (draw + np.arange(n_boot)[:, None] * n).ravel()
            # float32 holds these small counts and their sums with hits exactly (both stay far below 2**24)
            weights.append(np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float32))
        return cls(np.asarray(ids), classes, label, members, weights, n_boot)

    def hits(self, preds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """A run's top-1 and top-5 hits (float, NaN for an image the run did not score) in ``ids`` order."""
        p = preds.drop_duplicates("id").set_index("id")
        p = p.reindex(pd.Index(self.ids))
        known = p["label"].notna().to_numpy()
        label = p["label"].fillna("").astype(str).to_numpy()
        cols = p[list(M.PRED_COLUMNS)].fillna("").astype(str).to_numpy()
        h1 = (cols[:, 0] == label).astype(float)
        h5 = (cols == label[:, None]).any(axis=1).astype(float)
        h1[~known], h5[~known] = np.nan, np.nan
        return h1, h5

    def per_class(self, hits: np.ndarray) -> np.ndarray:
        """Observed per-class accuracy of hit vectors: (C,) for (N,), (C, R) for (N, R)."""
        h = np.asarray(hits, dtype=float)
        out = np.full((len(self.classes),) + h.shape[1:], np.nan)
        for c, pos in enumerate(self.members):
            if len(pos):
                out[c] = h[pos].mean(axis=0)
        return out

    def per_class_replicates(self, hits: np.ndarray) -> np.ndarray:
        """Bootstrap replicates of the per-class accuracy: (B, C) for (N,) hits, (B, C, R) for (N, R)."""
        h = np.asarray(hits, dtype=float)
        out = np.full((self.n_boot, len(self.classes)) + h.shape[1:], np.nan)
        for c, (pos, w) in enumerate(zip(self.members, self.weights)):
            if len(pos):
                out[:, c] = (w @ h[pos].astype(np.float32)).astype(np.float64) / len(pos)
        return out


# ---------------------------------------------------------------- a row: the seeds of one configuration


def seed_draws(n_seeds: int, n_boot: int, seed: int = 1) -> np.ndarray:
    """(B, S) seed indices drawn with replacement (the seed level of the bootstrap); one seed: all zeros."""
    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))


def seed_mean_replicates(run_reps: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(B,) replicates of the mean over seeds: replicate b averages the drawn seeds' replicate b.

    Args:
        run_reps: (B, S) class-mean replicates of each seed on the shared image resamples.
        draws: (B, S) seed indices (:func:`seed_draws`).
    """
    return np.take_along_axis(run_reps, draws, axis=1).mean(axis=1)


def seed_mean_interval(run_reps: np.ndarray, alpha: float = ALPHA, seed: int = 1) -> tuple[float, float]:
    """Percentile interval of a row's mean over seeds: seeds and (shared) test images resampled."""
    run_reps = np.asarray(run_reps, dtype=float)
    if run_reps.ndim == 1:
        run_reps = run_reps[:, None]
    if run_reps.size == 0:
        return float("nan"), float("nan")
    return M.percentile_interval(
        seed_mean_replicates(run_reps, seed_draws(run_reps.shape[1], len(run_reps), seed)), alpha
    )


# ---------------------------------------------------------------- two rows: a paired comparison


def exact_sign_test(b: int, c: int) -> float:
    """Two-sided exact binomial test of b successes against c (p = 1/2): exact McNemar on discordant pairs.

    p = min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2), in exact rational arithmetic.
    """
    n, k = int(b) + int(c), min(int(b), int(c))
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error over the given tests; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def probability_of_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """P(A > B) averaged over classes: per class, the share of (seed of A, seed of B) pairs where A scores
    higher, ties counting one half (rliable's Mann-Whitney form, classes in the role of tasks).

    Args:
        a, b: (C, S_a) and (C, S_b) per-class accuracies of each seed (classes in the same order).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape[0] == 0:
        return float("nan")
    gt = (a[:, :, None] > b[:, None, :]).mean(axis=(1, 2))
    eq = (a[:, :, None] == b[:, None, :]).mean(axis=(1, 2))
    return float((gt + 0.5 * eq).mean())


@dataclass
class Row:
    """One row of a stage (a configuration): its seeds' hit vectors on the stage's shared test images."""

    name: str
    seeds: list[int]
    hits1: np.ndarray  # (N, S) top-1 hits per seed
    evaluated: np.ndarray  # (C,) bool: the classes the row's class-mean averages


def compare_pair(sample: StageSample, a: Row, b: Row, seed: int = 1, alpha: float = ALPHA) -> tuple[dict, pd.DataFrame]:
    """Paired comparison of rows ``a`` and ``b`` on the classes both evaluate.

    Returns:
        (summary, per_class): the class-mean Top-1 difference a - b, its paired bootstrap interval
        (shared image resamples; seeds resampled, the same seed numbers drawn for both rows when their
        seeds are the same), the probability of improvement P(a > b) with its interval, and per class
        the accuracies, the discordant images, the exact McNemar p and the Holm-adjusted p.
    """
    ev = a.evaluated & b.evaluated
    pa, pb = sample.per_class(a.hits1), sample.per_class(b.hits1)  # (C, S)
    diff = float(pa[ev].mean(axis=0).mean() - pb[ev].mean(axis=0).mean()) if ev.any() else float("nan")
    ra, rb = sample.per_class_replicates(a.hits1), sample.per_class_replicates(b.hits1)  # (B, C, S)
    B = sample.n_boot
    da = seed_draws(len(a.seeds), B, seed)
    # The same seed numbers on both sides (e.g. seeds 0,1,2 of each) are paired too: seed s of a against seed s of b.
    db = da if list(a.seeds) == list(b.seeds) else seed_draws(len(b.seeds), B, seed + 1)
    ma = np.take_along_axis(ra[:, ev, :].mean(axis=1), da, axis=1).mean(axis=1)
    mb = np.take_along_axis(rb[:, ev, :].mean(axis=1), db, axis=1).mean(axis=1)
    lo, hi = M.percentile_interval(ma - mb, alpha) if ev.any() else (float("nan"), float("nan"))
    poi = probability_of_improvement(pa[ev], pb[ev])
    if ev.any():
        xa = np.take_along_axis(ra[:, ev, :], da[:, None, :], axis=2)  # (B, C_ev, S_a) the drawn seeds
        xb = np.take_along_axis(rb[:, ev, :], db[:, None, :], axis=2)
        gt = (xa[..., :, None] > xb[..., None, :]).mean(axis=(2, 3))
        eq = (xa[..., :, None] == xb[..., None, :]).mean(axis=(2, 3))
        poi_lo, poi_hi = M.percentile_interval((gt + 0.5 * eq).mean(axis=1), alpha)
    else:
        poi_lo = poi_hi = float("nan")
    rows = []
    for c in np.flatnonzero(ev):
        pos = sample.members[c]
        sa, sb = np.nanmean(a.hits1[pos], axis=1), np.nanmean(b.hits1[pos], axis=1)  # per image, mean over seeds
        n_ab, n_ba = int((sa > sb).sum()), int((sb > sa).sum())
        rows.append(
            {
                "class": sample.classes[c],
                "n_test": len(pos),
                "top1_a": float(pa[c].mean()),
                "top1_b": float(pb[c].mean()),
                "diff": float(pa[c].mean() - pb[c].mean()),
                "a_only": n_ab,
                "b_only": n_ba,
                "p": exact_sign_test(n_ab, n_ba),
            }
        )
    per_class = pd.DataFrame(rows, columns=["class", "n_test", "top1_a", "top1_b", "diff", "a_only", "b_only", "p"])
    per_class["p_holm"] = holm(per_class["p"].to_numpy()) if len(per_class) else []
    per_class["beyond_chance"] = per_class["p_holm"] < alpha
    summary = {
        "a": a.name,
        "b": b.name,
        "diff": diff,
        "diff_lo": lo,
        "diff_hi": hi,
        "poi": poi,
        "poi_lo": poi_lo,
        "poi_hi": poi_hi,
        "n_classes": int(ev.sum()),
        "n_better": int((per_class["beyond_chance"] & (per_class["diff"] > 0)).sum()),
        "n_worse": int((per_class["beyond_chance"] & (per_class["diff"] < 0)).sum()),
        "indistinguishable": bool(lo <= 0 <= hi) if lo == lo else True,
    }
    return summary, per_class

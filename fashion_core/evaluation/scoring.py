"""Per-image scoring: the top-k of scores, top-1/top-5 hits, per-class rates and the class-mean.

The one implementation of each: ``train.evaluate`` (validation), the metadata baseline and the
``metrics`` tables (test) all score through these, so every number is computed the same way.

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOPK = 5  # the "top-5" of every artifact; fewer columns are padded, more are cut


def as_numpy(x: Any) -> np.ndarray:
    """Array from a numpy array, a list or a (CPU or device) torch tensor, without importing torch."""
    if hasattr(x, "detach"):  # a torch tensor: it may live on the GPU or be bf16, which numpy cannot read
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def int_labels(labels: Any, n_classes: int) -> np.ndarray:
    """1-D int64 class indices, checked to lie in [0, n_classes)."""
    labels = as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be class indices in [0, {n_classes}); got values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def topk_matrix(top5: Any, n_rows: int) -> np.ndarray:
    """(N, k) int64 matrix of predicted indices, checked against the number of labels."""
    top5 = as_numpy(top5).astype(np.int64, copy=False)
    if top5.ndim == 1:  # a single prediction per image
        top5 = top5[:, None]
    if top5.ndim != 2 or top5.shape[0] != n_rows:
        raise ValueError(f"predictions must have shape (N={n_rows}, k); got {top5.shape}")
    return top5


def topk_hits(labels: np.ndarray, top5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image top-1 and top-5 hits (bool arrays); a padded prediction (-1 or '') never hits."""
    if top5.shape[1] == 0:
        no_hit = np.zeros(len(labels), dtype=bool)
        return no_hit, no_hit
    hit1 = top5[:, 0] == labels
    hit5 = (top5[:, :TOPK] == labels[:, None]).any(axis=1)
    return hit1, hit5


def hit_rates(
    codes: np.ndarray, hit1: np.ndarray, hit5: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class test count and top-1/top-5 rates (NaN where a class has no test image).

    Shared by :func:`per_class_table` and :func:`per_class_from_predictions` so that both
    give bit-identical numbers.
    """
    n_test = np.bincount(codes, minlength=n_classes).astype(np.int64)
    c1 = np.bincount(codes, weights=hit1.astype(np.float64), minlength=n_classes)
    c5 = np.bincount(codes, weights=hit5.astype(np.float64), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = np.where(n_test > 0, c1 / n_test, np.nan)
        top5 = np.where(n_test > 0, c5 / n_test, np.nan)
    return n_test, top1, top5


def topk_predictions(scores: Any, k: int = TOPK) -> np.ndarray:
    """Indices of the k highest scores per row.

    Args:
        scores: (N, C) logits or probabilities (numpy array or torch tensor).
        k: how many classes to keep per row.

    Returns:
        (N, k) int64 class indices by descending score; equal scores are ordered by the
        lower class index; columns beyond C are -1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    scores = as_numpy(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, C); got {scores.shape}")
    n, c = scores.shape
    # A stable sort of the negated scores keeps the lower index first among ties,
    # which argpartition would not guarantee; C is ~140, so a full sort is cheap.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    if c < k:
        order = np.concatenate([order, np.full((n, k - c), -1, dtype=np.int64)], axis=1)
    return order


def class_mean_accuracy(labels: Any, top5: Any) -> tuple[float, float]:
    """(class-mean top-1, class-mean top-5) over the classes present in ``labels`` (labels < 0 are left out)."""
    labels = as_numpy(labels)
    ok = labels >= 0
    labels, top5 = labels[ok], as_numpy(top5)[ok]
    if len(labels) == 0:
        return float("nan"), float("nan")
    classes, codes = np.unique(labels, return_inverse=True)
    _, top1, top5_rate = hit_rates(codes, *topk_hits(labels, top5), len(classes))
    return float(top1.mean()), float(top5_rate.mean())

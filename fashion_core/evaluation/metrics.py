"""Evaluation metrics: per-class top-1/top-5, class-mean and micro accuracy, intervals, confusion plot.

The label (articleType) is heavily imbalanced and many classes have 1-50 test images, so
the headline number is the *class-mean* (every evaluated class weighs the same) and
every per-class number comes with its test count. Two files are built here (see
docs/ARCHITECTURE.md, "Contracts"):

- ``per_class.csv``  ``class,n_train,n_val,n_test,top1,top5`` from :func:`per_class_table`;
  classes without test images keep empty accuracies, test-only classes of the finetune
  stage (``n_train`` = 0, never predictable) are rows with accuracy 0;
- ``predictions.csv`` ``id,label,pred1,...,pred5`` (class names) from :func:`predictions_frame`;
  :func:`per_class_from_predictions` recomputes the per-class accuracies from it.

Which classes count: :func:`summarize` excludes classes with ``n_test`` = 0 ("no test
images") and classes with ``n_train`` = 0 ("not learnable") from the class-mean and the
micro accuracy; the ``*_micro_all`` numbers count every test image, those of unlearnable classes
as the table holds them (0 for a model that cannot output them; a zero-shot model's own hits).

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Per-image scoring (top-k, hits, class-mean) lives in scoring.py; these names are part of metrics' API too.
from fashion_core.evaluation.scoring import TOPK, as_numpy, hit_rates, int_labels, topk_hits, topk_matrix

PER_CLASS_COLUMNS = ("class", "n_train", "n_val", "n_test", "top1", "top5")
PREDICTION_COLUMNS = ("id", "label", "pred1", "pred2", "pred3", "pred4", "pred5")
PRED_COLUMNS = PREDICTION_COLUMNS[2:]


def per_class_table(
    labels: Any,
    top5: Any,
    class_names: Sequence[str],
    n_train: Any,
    n_val: Any,
    extra_classes: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The per-class table written as ``per_class.csv``.

    Args:
        labels: (N,) true class indices into ``class_names``, one per test image.
        top5: (N, k) predicted class indices by descending score (see :func:`topk_predictions`);
            -1 marks padding. top-5 uses the first min(k, 5) columns.
        class_names: the model's classes, in index order.
        n_train: (C,) training image count per class.
        n_val: (C,) validation image count per class.
        extra_classes: test-only classes the model cannot predict (finetune stage),
            name -> number of test images. They are appended, sorted by name, with
            n_train = n_val = 0 and top1 = top5 = 0.0 (NaN if their n_test is 0).

    Returns:
        DataFrame with exactly the columns ``class,n_train,n_val,n_test,top1,top5``, one
        row per class in ``class_names`` order (including classes without test images,
        whose top1/top5 are NaN and become empty cells in CSV), then the extra classes.
    """
    names = [str(c) for c in class_names]
    n_classes = len(names)
    if len(set(names)) != n_classes:
        raise ValueError("class_names must be unique")
    labels = int_labels(labels, n_classes)
    top5 = topk_matrix(top5, len(labels))
    n_train = np.asarray(n_train, dtype=np.int64).reshape(-1)
    n_val = np.asarray(n_val, dtype=np.int64).reshape(-1)
    for what, counts in (("n_train", n_train), ("n_val", n_val)):
        if len(counts) != n_classes:
            raise ValueError(f"{what} must have one count per class ({n_classes}); got {len(counts)}")
    hit1, hit5 = topk_hits(labels, top5)
    n_test, top1, top5_rate = hit_rates(labels, hit1, hit5, n_classes)
    table = pd.DataFrame(
        {"class": names, "n_train": n_train, "n_val": n_val, "n_test": n_test, "top1": top1, "top5": top5_rate}
    )
    if extra_classes:
        clash = sorted(set(extra_classes) & set(names))
        if clash:
            raise ValueError(f"extra_classes must not be classes of the model; both have {clash}")
        # Sorted by name so that the order does not depend on how the dict was built and
        # matches per_class_from_predictions, which sees these classes only as labels.
        extra_names = sorted(extra_classes)
        extra_n = np.array([int(extra_classes[c]) for c in extra_names], dtype=np.int64)
        zero_or_nan = np.where(extra_n > 0, 0.0, np.nan)  # never predictable: every test image is wrong
        extra = pd.DataFrame(
            {
                "class": extra_names,
                "n_train": 0,
                "n_val": 0,
                "n_test": extra_n,
                "top1": zero_or_nan,
                "top5": zero_or_nan,
            }
        )
        table = pd.concat([table, extra], ignore_index=True)
    return table.astype({"n_train": "int64", "n_val": "int64", "n_test": "int64", "top1": "float64", "top5": "float64"})


def summarize(table: pd.DataFrame) -> dict[str, float | int]:
    """Headline numbers of a per-class table.

    A class is *evaluated* when it has test images (n_test > 0) and is learnable
    (n_train > 0). Classes with n_test = 0 are "no test images"; classes with
    n_train = 0 and n_test > 0 are "unlearnable" (test-only, the model cannot output them).

    Args:
        table: a frame with the columns of ``per_class.csv`` (e.g. from :func:`per_class_table`).

    Returns:
        dict with
        ``top1_mean``/``top5_mean``: mean of the per-class accuracies over evaluated classes;
        ``top1_micro``/``top5_micro``: accuracy over all test images of learnable classes
        (the same images as the class-mean, each weighing the same);
        ``top1_micro_all``/``top5_micro_all``: accuracy over every test image; the images of
        unlearnable classes count as their rows say (0 for a model that cannot output them, a
        zero-shot model's hits for one that predicts them; an empty accuracy is 0);
        ``n_classes_evaluated``, ``n_classes_no_test``, ``n_classes_unlearnable``,
        ``n_test_images`` (all test images, unlearnable ones included).
        Accuracies are NaN when there is nothing to average.
    """
    missing = [c for c in PER_CLASS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; expected {list(PER_CLASS_COLUMNS)}")
    n_train = table["n_train"].to_numpy(dtype=np.int64)
    n_test = table["n_test"].to_numpy(dtype=np.int64)
    has_test = n_test > 0
    evaluated = has_test & (n_train > 0)
    unlearnable = has_test & (n_train == 0)
    out: dict[str, float | int] = {}
    for m in ("top1", "top5"):
        acc = table[m].to_numpy(dtype=np.float64)
        # An unlearnable class counts as its row says (a zero-shot run predicts it); an empty row never hit.
        acc_all = np.where(unlearnable, np.nan_to_num(acc, nan=0.0), acc)
        correct = acc_all * n_test  # rates times counts give back the (integer) hit counts
        out[f"{m}_mean"] = float(acc[evaluated].mean()) if evaluated.any() else float("nan")
        n_eval_images = n_test[evaluated].sum()
        out[f"{m}_micro"] = float(correct[evaluated].sum() / n_eval_images) if n_eval_images else float("nan")
        n_all = n_test[has_test].sum()
        out[f"{m}_micro_all"] = float(correct[has_test].sum() / n_all) if n_all else float("nan")
    out["n_classes_evaluated"] = int(evaluated.sum())
    out["n_classes_no_test"] = int((~has_test).sum())
    out["n_classes_unlearnable"] = int(unlearnable.sum())
    out["n_test_images"] = int(n_test.sum())
    return out


def gzsl_summary(table: pd.DataFrame) -> dict[str, float | int]:
    """Generalised zero-shot numbers of a per-class table: seen (S), unseen (U), harmonic (H) and all-class means.

    A class with test images is *seen* when ``n_train`` > 0 and *unseen* otherwise; S and U are the
    class-means of each group (U is 0 for a model that cannot output the unseen classes: their rows
    hold 0), H = 2SU / (S + U), and ``mean_all`` is the class-mean over both groups together.

    Returns:
        ``top1_seen_mean``, ``top1_unseen_mean``, ``top1_harmonic``, ``top1_mean_all`` and the same for
        top5, ``n_classes_unseen`` and ``n_classes_all``; NaN where a group has no class.
    """
    n_test = table["n_test"].to_numpy(dtype=np.int64)
    has_test = n_test > 0
    seen = has_test & (table["n_train"].to_numpy(dtype=np.int64) > 0)
    unseen = has_test & ~seen
    out: dict[str, float | int] = {}
    for m in ("top1", "top5"):
        acc = np.nan_to_num(table[m].to_numpy(dtype=np.float64), nan=0.0)  # a test-only class never hit: 0
        s = float(acc[seen].mean()) if seen.any() else float("nan")
        u = float(acc[unseen].mean()) if unseen.any() else float("nan")
        out[f"{m}_seen_mean"], out[f"{m}_unseen_mean"] = s, u
        out[f"{m}_harmonic"] = (2 * s * u / (s + u) if s + u > 0 else 0.0) if s == s and u == u else float("nan")
        out[f"{m}_mean_all"] = float(acc[has_test].mean()) if has_test.any() else float("nan")
    out["n_classes_unseen"] = int(unseen.sum())
    out["n_classes_all"] = int(has_test.sum())
    return out


def wilson_interval(k: Any, n: Any, z: float = 1.96) -> tuple[Any, Any]:
    """Wilson score interval for k successes out of n trials.

    Preferred over the normal approximation because most classes have few test images
    and accuracies near 0 or 1, where that approximation leaves [0, 1] or collapses.

    Args:
        k: successes (scalar or array).
        n: trials (scalar or array, broadcast against k).
        z: standard-normal quantile (1.96 for 95 %).

    Returns:
        (lo, hi), floats for scalar input, arrays otherwise; NaN where n == 0.
    """
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k_arr / n_arr
        z2 = z * z
        denom = 1.0 + z2 / n_arr
        center = (p + z2 / (2.0 * n_arr)) / denom
        half = z / denom * np.sqrt(np.maximum(p * (1.0 - p) / n_arr + z2 / (4.0 * n_arr * n_arr), 0.0))
        lo = np.where(n_arr > 0, np.clip(center - half, 0.0, 1.0), np.nan)
        hi = np.where(n_arr > 0, np.clip(center + half, 0.0, 1.0), np.nan)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def with_wilson(table: pd.DataFrame, z: float = 1.96) -> pd.DataFrame:
    """A copy of a per-class table with Wilson intervals for top-1 and top-5.

    Kept apart from :func:`per_class_table` because ``per_class.csv`` has fixed columns;
    this frame goes to a second file.

    Args:
        table: a frame with the columns of ``per_class.csv``.
        z: standard-normal quantile (1.96 for 95 %).

    Returns:
        the table plus ``top1_lo,top1_hi,top5_lo,top5_hi`` (NaN where n_test == 0).
    """
    out = table.copy()
    n = out["n_test"].to_numpy(dtype=np.int64)
    for m in ("top1", "top5"):
        # Rates are hits / n_test, so rounding recovers the exact hit count.
        k = np.rint(out[m].to_numpy(dtype=np.float64) * n)
        lo, hi = wilson_interval(np.where(n > 0, k, 0.0), n, z=z)
        out[f"{m}_lo"], out[f"{m}_hi"] = lo, hi
    return out


def bootstrap_class_mean(
    labels: Any, top5_preds: Any, class_ids_evaluated: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile interval of the class-mean top-1/top-5 by a stratified bootstrap.

    Each replicate resamples, with replacement, as many test images as a class has from
    that class alone, then averages the per-class accuracies (see :func:`bootstrap_class_mean_replicates`).

    Args:
        labels: (N,) true class indices of the test images.
        top5_preds: (N, k) predicted class indices (first min(k, 5) used for top-5).
        class_ids_evaluated: indices of the classes in the mean (e.g. learnable classes);
            those without any test image are skipped, as in :func:`summarize`; images of
            other classes are ignored.
        n_boot: number of bootstrap replicates.
        seed: seed of the numpy Generator; the same seed gives the same interval.
        alpha: 1 - confidence level.

    Returns:
        ``{"top1": (lo, hi), "top5": (lo, hi)}``; NaN bounds when no class has test images.
    """
    reps = bootstrap_class_mean_replicates(labels, top5_preds, class_ids_evaluated, n_boot, seed)
    return {k: percentile_interval(v, alpha) for k, v in reps.items()}


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) quantiles of bootstrap replicates; NaN bounds when there are none."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.isnan(values).all():
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_class_mean_replicates(
    labels: Any, top5_preds: Any, class_ids_evaluated: Any, n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """``n_boot`` stratified-bootstrap replicates of the class-mean top-1/top-5 (as :func:`bootstrap_class_mean`).

    An image is one of three kinds (top-1 hit, top-5-only hit, miss), so the resampled counts of
    a class follow exactly a multinomial with that class's observed proportions: drawing those
    counts is the same bootstrap as drawing image indices, in O(n_boot x C) instead of O(n_boot x N)
    (``scipy.stats.bootstrap`` resamples the images and has no stratified form, hence our own).

    Returns:
        ``{"top1": (n_boot,), "top5": (n_boot,)}``; empty arrays when no class has test images.
    """
    labels = as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
    top5_preds = topk_matrix(top5_preds, len(labels))
    classes = np.unique(np.asarray(class_ids_evaluated, dtype=np.int64).reshape(-1))
    n_classes = int(max(labels.max(initial=-1), classes.max(initial=-1))) + 1
    hit1, hit5 = topk_hits(labels, top5_preds)
    keep = labels >= 0  # negative labels (unknown to the model) have no class to stratify on
    n = np.bincount(labels[keep], minlength=n_classes)[classes]
    k1 = np.bincount(labels[keep], weights=hit1[keep], minlength=n_classes)[classes]
    k5 = np.bincount(labels[keep], weights=hit5[keep], minlength=n_classes)[classes]
    present = n > 0
    n, k1, k5 = n[present], k1[present], k5[present]
    if len(n) == 0:
        return {"top1": np.zeros(0), "top5": np.zeros(0)}
    # Three kinds per class: top-1 hit, top-5 hit but not top-1, miss. top-1 implies top-5.
    counts = np.stack([k1, k5 - k1, n - k5], axis=1)
    pvals = counts / n[:, None]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, pvals, size=(n_boot, len(n)))  # (n_boot, C_eval, 3)
    acc1 = draws[..., 0] / n
    acc5 = (draws[..., 0] + draws[..., 1]) / n
    return {"top1": acc1.mean(axis=1), "top5": acc5.mean(axis=1)}


def predictions_frame(ids: Any, labels: Any, top5: Any, class_names: Sequence[str]) -> pd.DataFrame:
    """The table written as ``predictions.csv``.

    Args:
        ids: (N,) product ids of the test images.
        labels: (N,) true class names (test-only classes of the finetune stage included);
            an integer array is read as indices into ``class_names``.
        top5: (N, k) predicted class indices; -1 (padding) and columns past k become ''.
        class_names: the model's classes, in index order.

    Returns:
        DataFrame with exactly the columns ``id,label,pred1,pred2,pred3,pred4,pred5``
        holding class names.
    """
    names = np.asarray([str(c) for c in class_names] + [""], dtype=object)  # index -1 -> ''
    label_arr = as_numpy(labels)
    if np.issubdtype(label_arr.dtype, np.integer):
        label_arr = names[:-1][int_labels(label_arr, len(class_names))]
    label_arr = np.asarray(label_arr, dtype=object).reshape(-1)
    ids = as_numpy(ids).reshape(-1)
    if len(ids) != len(label_arr):
        raise ValueError(f"ids and labels differ in length: {len(ids)} vs {len(label_arr)}")
    top5 = topk_matrix(top5, len(label_arr))[:, :TOPK]
    if top5.size and (top5.min() < -1 or top5.max() >= len(class_names)):
        raise ValueError(f"predictions must be class indices in [0, {len(class_names)}) or -1")
    frame = pd.DataFrame({"id": ids, "label": label_arr})
    for j, col in enumerate(PRED_COLUMNS):
        frame[col] = names[top5[:, j]] if j < top5.shape[1] else ""
    return frame


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a ``predictions.csv``, keeping class names such as 'NA' and empty cells as strings."""
    return pd.read_csv(path, dtype={c: str for c in PREDICTION_COLUMNS[1:]}, keep_default_na=False)


def read_per_class(path: str | Path) -> pd.DataFrame:
    """Read a ``per_class.csv``: class names kept verbatim, empty accuracies as NaN."""
    return pd.read_csv(path, dtype={"class": str}, keep_default_na=False, na_values={"top1": [""], "top5": [""]})


def per_class_from_predictions(pred_df: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per-class top-1/top-5 recomputed from a predictions table, to cross-check ``per_class.csv``.

    Args:
        pred_df: a frame with the columns of ``predictions.csv`` (missing cells may be NaN or '').
        class_names: the model's classes, in index order.

    Returns:
        DataFrame ``class,n_test,top1,top5``: one row per class in ``class_names`` order
        (NaN accuracies without test images), then labels outside ``class_names`` (test-only
        classes) sorted by name, as :func:`per_class_table` orders its extra classes. The
        numbers equal those columns of :func:`per_class_table` exactly.
    """
    missing = [c for c in PREDICTION_COLUMNS[1:] if c not in pred_df.columns]
    if missing:
        raise ValueError(f"predictions lack the columns {missing}; expected {list(PREDICTION_COLUMNS)}")
    names = [str(c) for c in class_names]
    labels = pred_df["label"]
    if labels.isna().any() or (labels.astype(str) == "").any():
        raise ValueError("predictions have rows without a label")
    labels = labels.astype(str).to_numpy(dtype=object)
    extra = sorted(set(labels) - set(names))
    categories = names + extra
    index = {c: i for i, c in enumerate(categories)}
    codes = np.fromiter((index[c] for c in labels), dtype=np.int64, count=len(labels))
    preds = pred_df[list(PRED_COLUMNS)].fillna("").astype(str).to_numpy(dtype=object)
    # Compare names rather than indices: a prediction cannot be a test-only class, and ''
    # (padding) never equals a label.
    hit1 = preds[:, 0] == labels
    hit5 = (preds == labels[:, None]).any(axis=1)
    n_test, top1, top5 = hit_rates(codes, hit1, hit5, len(categories))
    return pd.DataFrame({"class": categories, "n_test": n_test, "top1": top1, "top5": top5})


def confusion_matrix_figure(
    labels: Any, pred1: Any, class_names: Sequence[str], normalize: bool = True, max_classes: int = 60
):
    """Heatmap of the confusion matrix, true class on rows, predicted class on columns.

    Args:
        labels: (N,) true class indices; negative values (test-only images the model
            cannot predict) are left out.
        pred1: (N,) top-1 predicted class indices.
        class_names: the model's classes, in index order.
        normalize: divide each row by its test count (rows without images stay empty).
        max_classes: with more classes, keep the most frequent ones by test count (in
            ``class_names`` order) and gather predictions of the others in a last column
            "(other classes)", so that rows still sum to 1; the title says so.

    Returns:
        a plotly Figure; write it with ``fig.write_html(path, include_plotlyjs=True)``.
    """
    import plotly.graph_objects as go  # plotting only here: keep `import fashion_core.evaluation.metrics` light

    names = [str(c) for c in class_names]
    n_classes = len(names)
    labels = as_numpy(labels).astype(np.int64, copy=False).reshape(-1)
    pred1 = as_numpy(pred1).astype(np.int64, copy=False).reshape(-1)
    if len(labels) != len(pred1):
        raise ValueError(f"labels and pred1 differ in length: {len(labels)} vs {len(pred1)}")
    keep = labels >= 0
    labels, pred1 = int_labels(labels[keep], n_classes), int_labels(pred1[keep], n_classes)
    counts = np.bincount(labels * n_classes + pred1, minlength=n_classes * n_classes)
    counts = counts.reshape(n_classes, n_classes)
    row_n = counts.sum(axis=1)
    title = "Confusion matrix" + (" (row-normalised)" if normalize else " (counts)")
    rows, cols = names, names
    if n_classes > max_classes:
        # A stable sort on descending counts keeps the class_names order among equals.
        kept = np.sort(np.argsort(-row_n, kind="stable")[:max_classes])
        other = np.ones(n_classes, dtype=bool)
        other[kept] = False
        counts = np.concatenate(
            [counts[np.ix_(kept, kept)], counts[np.ix_(kept, np.flatnonzero(other))].sum(axis=1, keepdims=True)], axis=1
        )
        row_n = row_n[kept]
        rows = [names[i] for i in kept]
        cols = rows + ["(other classes)"]
        title += f": the {max_classes} most frequent of {n_classes} classes"
    with np.errstate(invalid="ignore", divide="ignore"):
        z = counts / row_n[:, None] if normalize else counts.astype(np.float64)
    if normalize:
        z[row_n == 0] = np.nan  # no test image: nothing to normalise, leave the row blank
    size = max(450, 14 * len(cols) + 250)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=rows,
            customdata=counts,
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0 if normalize else None,
            hovertemplate="true: %{y}<br>predicted: %{x}<br>value: %{z:.3f}<br>images: %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        width=size,
        height=size,
        xaxis=dict(title="predicted", tickangle=-60, type="category"),
        yaxis=dict(title="true", autorange="reversed", type="category"),
    )
    return fig

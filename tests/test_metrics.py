"""Tests for fashion_core.evaluation.metrics: every number against a brute-force Python loop on random data."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from fashion_core.evaluation import metrics
from fashion_core.evaluation.metrics import (
    bootstrap_class_mean,
    confusion_matrix_figure,
    per_class_from_predictions,
    per_class_table,
    predictions_frame,
    read_per_class,
    read_predictions,
    summarize,
    wilson_interval,
    with_wilson,
)
from fashion_core.evaluation.scoring import topk_predictions

SEEDS = [0, 1, 2, 3, 4]


def make_data(seed: int, n: int = 400, c: int = 25, k: int = 5, integer_scores: bool = True):
    """Imbalanced labels (some classes absent), scores with many ties, and the top-k of the scores."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(2.0, size=c) + 0.1
    weights[rng.choice(c, size=3, replace=False)] = 0.0  # classes without test images
    labels = rng.choice(c, size=n, p=weights / weights.sum())
    # Small integer scores make ties common; a bonus on the true class makes hits common.
    scores = rng.integers(0, 6, size=(n, c)).astype(np.float64) if integer_scores else rng.normal(size=(n, c))
    scores[np.arange(n), labels] += rng.integers(0, 4, size=n)
    names = [f"class_{i:02d}" for i in range(c)]
    n_train = rng.integers(1, 200, size=c)
    n_val = rng.integers(0, 30, size=c)
    return labels, scores, topk_predictions(scores, k), names, n_train, n_val


def brute_topk(scores, k):
    """Top-k by descending score, lower index first among ties, -1 padding."""
    out = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        out.append(order + [-1] * (k - len(order)))
    return np.array(out)


def brute_per_class(labels, top5, c):
    """Per-class (n_test, top1, top5) by looping over images."""
    rows = []
    for cls in range(c):
        n = h1 = h5 = 0
        for lab, preds in zip(labels, top5):
            if lab != cls:
                continue
            n += 1
            h1 += int(preds[0] == lab)
            h5 += int(lab in list(preds[:5]))
        rows.append((n, h1 / n if n else math.nan, h5 / n if n else math.nan))
    return rows


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_matches_bruteforce_with_ties(seed):
    _, scores, top5, *_ = make_data(seed)
    np.testing.assert_array_equal(top5, brute_topk(scores, 5))
    assert top5.dtype == np.int64


def test_topk_pads_when_fewer_classes_than_k():
    scores = np.array([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(topk_predictions(scores, 5), [[1, 2, 0, -1, -1], [0, 1, 2, -1, -1]])


def test_topk_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]], dtype=torch.bfloat16)  # numpy cannot read bf16 directly
    np.testing.assert_array_equal(topk_predictions(scores, 2), [[1, 3]])


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError):
        topk_predictions(np.zeros(4), 5)
    with pytest.raises(ValueError):
        topk_predictions(np.zeros((2, 4)), 0)


# ---------------------------------------------------------------- per-class table


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_table_matches_bruteforce(seed):
    labels, _, top5, names, n_train, n_val = make_data(seed)
    table = per_class_table(labels, top5, names, n_train, n_val)
    assert list(table.columns) == list(metrics.PER_CLASS_COLUMNS)
    assert list(table["class"]) == names
    np.testing.assert_array_equal(table["n_train"], n_train)
    np.testing.assert_array_equal(table["n_val"], n_val)
    expected = brute_per_class(labels, top5, len(names))
    np.testing.assert_array_equal(table["n_test"], [r[0] for r in expected])
    np.testing.assert_allclose(table["top1"], [r[1] for r in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["top5"], [r[2] for r in expected], rtol=0, atol=1e-12)


def test_classes_without_test_images_are_nan_and_excluded():
    labels, _, top5, names, n_train, n_val = make_data(0)
    table = per_class_table(labels, top5, names, n_train, n_val)
    absent = table["n_test"] == 0
    assert absent.sum() >= 3
    assert table.loc[absent, ["top1", "top5"]].isna().all().all()
    assert table.loc[~absent, ["top1", "top5"]].notna().all().all()
    s = summarize(table)
    assert s["n_classes_no_test"] == absent.sum()
    assert s["n_classes_evaluated"] == len(names) - absent.sum()
    assert s["top1_mean"] == pytest.approx(table.loc[~absent, "top1"].mean())


def test_top5_uses_all_columns_when_k_below_5():
    labels = np.array([0, 1, 2, 2])
    top3 = np.array([[0, 1, 2], [2, 0, 1], [1, 0, -1], [0, 1, 3]])
    table = per_class_table(labels, top3, ["a", "b", "c", "d"], [1, 1, 1, 1], [0, 0, 0, 0])
    np.testing.assert_allclose(table["top1"], [1.0, 0.0, 0.0, math.nan])
    np.testing.assert_allclose(table["top5"], [1.0, 1.0, 0.0, math.nan])


def test_per_class_table_csv_has_empty_cells_and_reads_back(tmp_path):
    labels, _, top5, names, n_train, n_val = make_data(1)
    names[0] = "NA"  # a class name that pandas would read as missing by default
    table = per_class_table(labels, top5, names, n_train, n_val, extra_classes={"Zzz only test": 4})
    path = tmp_path / "per_class.csv"
    table.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    assert lines[0] == "class,n_train,n_val,n_test,top1,top5"
    assert any(line.endswith(",0,,") for line in lines[1:])  # no test images: empty accuracies
    back = read_per_class(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_per_class_table_rejects_bad_input():
    labels, _, top5, names, n_train, n_val = make_data(0)
    with pytest.raises(ValueError, match="class indices"):
        per_class_table(labels + len(names), top5, names, n_train, n_val)
    with pytest.raises(ValueError, match="n_train"):
        per_class_table(labels, top5, names, n_train[:-1], n_val)
    with pytest.raises(ValueError, match="shape"):
        per_class_table(labels, top5[:-1], names, n_train, n_val)
    with pytest.raises(ValueError, match="extra_classes"):
        per_class_table(labels, top5, names, n_train, n_val, extra_classes={names[0]: 3})


# ---------------------------------------------------------------- summarize


@pytest.mark.parametrize("seed", SEEDS)
def test_summarize_matches_bruteforce(seed):
    labels, _, top5, names, n_train, n_val = make_data(seed)
    n_train = n_train.copy()
    n_train[labels[0]] = 0  # a class with test images but nothing to learn from
    extra = {"only_test_a": 7, "only_test_b": 2}
    table = per_class_table(labels, top5, names, n_train, n_val, extra_classes=extra)
    s = summarize(table)

    learnable = [lab for lab in labels if n_train[lab] > 0]
    per_class = brute_per_class(labels, top5, len(names))
    evaluated = [c for c in range(len(names)) if per_class[c][0] > 0 and n_train[c] > 0]
    assert s["top1_mean"] == pytest.approx(np.mean([per_class[c][1] for c in evaluated]))
    assert s["top5_mean"] == pytest.approx(np.mean([per_class[c][2] for c in evaluated]))
    hits1 = [int(p[0] == lab) for lab, p in zip(labels, top5) if n_train[lab] > 0]
    hits5 = [int(lab in list(p[:5])) for lab, p in zip(labels, top5) if n_train[lab] > 0]
    assert s["top1_micro"] == pytest.approx(sum(hits1) / len(learnable))
    assert s["top5_micro"] == pytest.approx(sum(hits5) / len(learnable))
    # micro_all: every test image; those of a class with no training row count as predicted (a zero-shot
    # model outputs such a class), those outside the model's classes (extra) as wrong
    n_all = len(labels) + sum(extra.values())
    assert s["top1_micro_all"] == pytest.approx(sum(int(p[0] == lab) for lab, p in zip(labels, top5)) / n_all)
    assert s["top5_micro_all"] == pytest.approx(sum(int(lab in list(p[:5])) for lab, p in zip(labels, top5)) / n_all)
    assert s["n_classes_evaluated"] == len(evaluated)
    assert s["n_classes_unlearnable"] == 1 + len(extra)
    assert s["n_classes_no_test"] == sum(1 for r in per_class if r[0] == 0)
    assert s["n_test_images"] == n_all


def test_class_mean_of_table_equals_summarize():
    labels, _, top5, names, n_train, n_val = make_data(3)
    table = per_class_table(labels, top5, names, n_train, n_val, extra_classes={"t": 5})
    s = summarize(table)
    rows = table[(table["n_test"] > 0) & (table["n_train"] > 0)]
    assert s["top1_mean"] == pytest.approx(rows["top1"].mean())
    assert s["top5_mean"] == pytest.approx(rows["top5"].mean())


def test_unlearnable_classes_are_excluded_from_mean_but_count_in_micro_all():
    labels = np.array([0, 0, 1])
    top5 = np.array([[0, 1], [0, 1], [0, 1]])
    table = per_class_table(labels, top5, ["a", "b"], [5, 5], [1, 1], extra_classes={"rare": 3})
    row = table.iloc[-1]
    assert (row["class"], row["n_train"], row["n_val"], row["n_test"]) == ("rare", 0, 0, 3)
    assert (row["top1"], row["top5"]) == (0.0, 0.0)
    s = summarize(table)
    assert s["top1_mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["top5_mean"] == pytest.approx(1.0)
    assert s["top1_micro"] == pytest.approx(2 / 3)
    assert s["top1_micro_all"] == pytest.approx(2 / 6)
    assert s["top5_micro_all"] == pytest.approx(3 / 6)
    assert s["n_classes_unlearnable"] == 1 and s["n_test_images"] == 6
    # a zero-shot model predicts the class: micro_all counts its hits (2 of the 3 "rare" images), the mean does not
    zs = table.assign(top1=table["top1"].where(table["class"] != "rare", 2 / 3))
    assert summarize(zs)["top1_micro_all"] == pytest.approx((2 + 2) / 6)
    assert summarize(zs)["top1_mean"] == pytest.approx(s["top1_mean"])


def test_summarize_empty_is_nan():
    table = per_class_table(np.array([], dtype=int), np.zeros((0, 5), dtype=int), ["a"], [3], [1])
    s = summarize(table)
    assert math.isnan(s["top1_mean"]) and math.isnan(s["top1_micro_all"])
    assert s["n_classes_no_test"] == 1 and s["n_test_images"] == 0


# ---------------------------------------------------------------- intervals


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-4)
    assert hi == pytest.approx(0.9433, abs=5e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=5e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=5e-4)


def test_wilson_vectorised_contains_estimate_and_nan_for_empty():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 60, size=500)
    k = rng.integers(0, n + 1)
    lo, hi = wilson_interval(k, n)
    p = k / n
    assert lo.shape == hi.shape == (500,)
    assert np.all((lo <= p + 1e-12) & (p <= hi + 1e-12))
    assert np.all((lo >= 0) & (hi <= 1))
    lo, hi = wilson_interval(np.array([0, 3]), np.array([0, 4]))
    assert math.isnan(lo[0]) and math.isnan(hi[0]) and not math.isnan(lo[1])
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_with_wilson_adds_columns_without_touching_table():
    labels, _, top5, names, n_train, n_val = make_data(2)
    table = per_class_table(labels, top5, names, n_train, n_val)
    out = with_wilson(table)
    assert list(table.columns) == list(metrics.PER_CLASS_COLUMNS)
    assert list(out.columns) == list(metrics.PER_CLASS_COLUMNS) + ["top1_lo", "top1_hi", "top5_lo", "top5_hi"]
    i = int(np.argmax(table["n_test"]))
    n = table["n_test"][i]
    lo, hi = wilson_interval(round(table["top1"][i] * n), n)
    assert (out["top1_lo"][i], out["top1_hi"][i]) == pytest.approx((lo, hi))
    empty = table["n_test"] == 0
    assert out.loc[empty, "top1_lo"].isna().all() and out.loc[~empty, "top5_hi"].notna().all()


def naive_bootstrap(labels, top5, classes, n_boot, seed):
    """Stratified bootstrap by drawing image indices per class (the slow, obvious way)."""
    rng = np.random.default_rng(seed)
    hit1 = top5[:, 0] == labels
    hit5 = (top5[:, :5] == labels[:, None]).any(axis=1)
    idx = [np.flatnonzero(labels == c) for c in classes]
    idx = [i for i in idx if len(i)]
    m1, m5 = [], []
    for _ in range(n_boot):
        draws = [rng.choice(i, size=len(i)) for i in idx]
        m1.append(np.mean([hit1[d].mean() for d in draws]))
        m5.append(np.mean([hit5[d].mean() for d in draws]))
    return np.quantile(m1, [0.025, 0.975]), np.quantile(m5, [0.025, 0.975])


def test_bootstrap_agrees_with_naive_resampling_and_contains_estimate():
    labels, _, top5, names, n_train, n_val = make_data(0, n=600, c=12)
    classes = np.arange(len(names))
    got = bootstrap_class_mean(labels, top5, classes, n_boot=2000, seed=1)
    ref1, ref5 = naive_bootstrap(labels, top5, classes, n_boot=1000, seed=2)
    np.testing.assert_allclose(got["top1"], ref1, atol=0.02)
    np.testing.assert_allclose(got["top5"], ref5, atol=0.02)
    s = summarize(per_class_table(labels, top5, names, n_train, n_val))
    assert got["top1"][0] <= s["top1_mean"] <= got["top1"][1]
    assert got["top5"][0] <= s["top5_mean"] <= got["top5"][1]


def test_bootstrap_is_deterministic_and_narrows_with_more_data():
    labels, _, top5, names, *_ = make_data(4, n=300, c=10)
    classes = np.arange(len(names))
    a = bootstrap_class_mean(labels, top5, classes, seed=7)
    assert a == bootstrap_class_mean(labels, top5, classes, seed=7)
    assert a != bootstrap_class_mean(labels, top5, classes, seed=8)
    # Ten copies of every image: same per-class accuracies, ~sqrt(10) narrower interval.
    big = bootstrap_class_mean(np.tile(labels, 10), np.tile(top5, (10, 1)), classes, seed=7)
    for m in ("top1", "top5"):
        assert big[m][1] - big[m][0] < 0.5 * (a[m][1] - a[m][0])


def test_bootstrap_only_uses_evaluated_classes():
    labels = np.array([0, 0, 1, 1, 2])
    top5 = np.array([[0], [0], [0], [0], [2]])
    out = bootstrap_class_mean(labels, top5, [0, 3], n_boot=50)  # class 3 has no test image: skipped
    assert out == {"top1": (1.0, 1.0), "top5": (1.0, 1.0)}
    nan = bootstrap_class_mean(labels, top5, [3], n_boot=50)
    assert all(math.isnan(v) for v in nan["top1"] + nan["top5"])


def test_bootstrap_is_fast_at_catalogue_scale():
    rng = np.random.default_rng(0)
    n, c = 20_000, 120
    labels = rng.choice(c, size=n, p=np.sort(rng.dirichlet(np.full(c, 0.3)))[::-1])
    top5 = rng.integers(0, c, size=(n, 5))
    hit = rng.random(n) < 0.6
    top5[hit, 0] = labels[hit]
    start = time.perf_counter()
    out = bootstrap_class_mean(labels, top5, np.arange(c), n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert out["top1"][0] <= out["top1"][1]
    assert elapsed < 5.0  # ~0.05 s in practice; the bound only catches a per-image loop


# ---------------------------------------------------------------- predictions


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_predictions_roundtrip_matches_per_class_table(seed, tmp_path):
    labels, _, top5, names, n_train, n_val = make_data(seed)
    # Finetune stage: some test images belong to classes the model does not know.
    extra = {"zz_only_test": 3, "aa_only_test": 1}
    label_names = [names[i] for i in labels] + ["zz_only_test"] * 3 + ["aa_only_test"]
    top5_all = np.concatenate([top5, top5[:4]])
    ids = np.arange(10_000, 10_000 + len(label_names))
    frame = predictions_frame(ids, label_names, top5_all, names)
    assert list(frame.columns) == list(metrics.PREDICTION_COLUMNS)
    assert frame["pred1"].iloc[0] == names[top5[0, 0]]

    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    table = per_class_table(labels, top5, names, n_train, n_val, extra_classes=extra)
    for read in (read_predictions, pd.read_csv):  # the helper, and what a reader would do by default
        again = per_class_from_predictions(read(path), names)
        assert list(again.columns) == ["class", "n_test", "top1", "top5"]
        pd.testing.assert_frame_equal(again, table[["class", "n_test", "top1", "top5"]], check_dtype=False)
    back = read_predictions(path)
    assert back["id"].tolist() == ids.tolist()


def test_predictions_frame_pads_and_accepts_index_labels():
    names = ["a", "b", "c"]
    top3 = topk_predictions(np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]]), 5)  # C < 5: -1 padding
    frame = predictions_frame(["x1", "x2"], np.array([1, 0]), top3, names)
    assert frame.to_dict("records") == [
        {"id": "x1", "label": "b", "pred1": "b", "pred2": "c", "pred3": "a", "pred4": "", "pred5": ""},
        {"id": "x2", "label": "a", "pred1": "a", "pred2": "b", "pred3": "c", "pred4": "", "pred5": ""},
    ]
    frame2 = predictions_frame([1], ["c"], np.array([[2, 0]]), names)  # k = 2 < 5: missing columns
    assert frame2.iloc[0, 2:].tolist() == ["c", "a", "", "", ""]
    with pytest.raises(ValueError):
        predictions_frame([1, 2], ["a"], np.array([[0]]), names)


# ---------------------------------------------------------------- confusion matrix


def test_confusion_figure_small_is_full_and_row_normalised():
    labels, _, top5, names, *_ = make_data(0, c=8)
    fig = confusion_matrix_figure(labels, top5[:, 0], names)
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (8, 8)
    assert list(fig.data[0].x) == names and list(fig.data[0].y) == names
    present = [c for c in range(8) if (labels == c).any()]
    absent = [c for c in range(8) if c not in present]
    assert present and absent  # make_data leaves some classes without test images: both kinds of row are checked
    assert np.isnan(z[absent]).all()  # a class without test images has an empty row
    for cls in present:
        mask = labels == cls
        expected = np.bincount(top5[mask, 0], minlength=8) / mask.sum()
        np.testing.assert_allclose(z[cls], expected)
    assert "row-normalised" in fig.layout.title.text


def test_confusion_figure_keeps_most_frequent_classes():
    labels, _, top5, names, *_ = make_data(1, n=1000, c=30)
    fig = confusion_matrix_figure(labels, top5[:, 0], names, max_classes=10)
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (10, 11)
    counts = np.bincount(labels, minlength=30)
    kept = [names.index(y) for y in fig.data[0].y]
    assert kept == sorted(kept)  # class_names order
    assert counts[kept].min() >= np.sort(counts)[::-1][9]
    assert list(fig.data[0].x)[-1] == "(other classes)"
    np.testing.assert_allclose(z.sum(axis=1), 1.0)
    assert "10 most frequent of 30" in fig.layout.title.text
    raw = confusion_matrix_figure(labels, top5[:, 0], names, normalize=False, max_classes=10)
    assert np.array(raw.data[0].z).sum() == counts[kept].sum()

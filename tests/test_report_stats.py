"""The report's paired statistics (fashion_core.report.stats) against hand counts and identical runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fashion_core.report.analysis import split_pair
from fashion_core.report.runs import config_groups, config_label, run_config
from fashion_core.report.stats import (
    Row,
    StageSample,
    compare_pair,
    exact_sign_test,
    holm,
    probability_of_improvement,
    seed_mean_interval,
)


def preds(ids, labels, pred1):
    """A predictions table whose top-1 is ``pred1`` (the other four guesses never hit)."""
    return pd.DataFrame(
        {"id": ids, "label": labels, "pred1": pred1, "pred2": "x", "pred3": "x", "pred4": "x", "pred5": "x"}
    )


# Two classes. cat: 6 images, dog: 4 images. A is right on cat 5/6, dog 1/4; B on cat 2/6, dog 1/4.
IDS = list(range(10))
LABELS = ["cat"] * 6 + ["dog"] * 4
A = ["cat", "cat", "cat", "cat", "cat", "dog", "dog", "cat", "cat", "cat"]
B = ["cat", "dog", "dog", "cat", "dog", "dog", "cat", "dog", "cat", "cat"]


def row(sample, name, *pred1s, seeds=None):
    hits = np.stack([sample.hits(preds(IDS, LABELS, p))[0] for p in pred1s], axis=1)
    return Row(name, list(seeds or range(len(pred1s))), hits, np.ones(len(sample.classes), dtype=bool))


def test_hand_count():
    sample = StageSample.build(np.array(IDS), LABELS, ["cat", "dog"], n_boot=2000)
    a, b = row(sample, "A", A), row(sample, "B", B)
    s, pc = compare_pair(sample, a, b)
    # cat: A 5/6, B 2/6; dog: A 1/4 (image 6), B 1/4 (image 7). Class-means (5/6 + 1/4)/2 and (2/6 + 1/4)/2.
    assert s["diff"] == pytest.approx(((5 / 6 + 1 / 4) - (2 / 6 + 1 / 4)) / 2)
    cat, dog = pc.set_index("class").loc["cat"], pc.set_index("class").loc["dog"]
    # cat discordant pairs: A right and B wrong on images 1, 2, 4; B right and A wrong on none.
    assert (cat["a_only"], cat["b_only"]) == (3, 0)
    assert cat["p"] == pytest.approx(2 * 0.5**3)  # exact McNemar: 2 P(X <= 0), X ~ Bin(3, 1/2) = 0.25
    assert (dog["a_only"], dog["b_only"]) == (1, 1) and dog["p"] == 1.0
    # Holm over the two classes: the smaller p times 2, then the running maximum.
    assert cat["p_holm"] == pytest.approx(0.5) and dog["p_holm"] == 1.0
    assert not pc["beyond_chance"].any() and s["n_better"] == 0
    # Probability of improvement: cat A > B (1), dog a tie (1/2): mean 0.75.
    assert s["poi"] == pytest.approx(0.75)
    assert s["diff_lo"] <= s["diff"] <= s["diff_hi"] and 0 <= s["poi_lo"] <= s["poi_hi"] <= 1


def test_identical_runs_differ_by_exactly_zero():
    sample = StageSample.build(np.array(IDS), LABELS, ["cat", "dog"], n_boot=500)
    a = row(sample, "A", A, B, seeds=[0, 1])
    b = row(sample, "B", A, B, seeds=[0, 1])
    s, pc = compare_pair(sample, a, b)
    assert s["diff"] == 0.0 and s["diff_lo"] == 0.0 and s["diff_hi"] == 0.0
    assert s["indistinguishable"] and s["poi"] == 0.5
    assert (pc["a_only"] == 0).all() and (pc["p"] == 1.0).all()


def test_identical_seeds_give_one_seeds_interval():
    """Three identical seeds resample the same images: the interval of their mean is one seed's interval."""
    sample = StageSample.build(np.array(IDS), LABELS, ["cat", "dog"], n_boot=1000)
    one = sample.per_class_replicates(row(sample, "A", A).hits1)[..., 0].mean(axis=1)
    three = sample.per_class_replicates(row(sample, "A", A, A, A).hits1).mean(axis=1)  # (B, 3)
    assert seed_mean_interval(three) == pytest.approx(seed_mean_interval(one), abs=1e-12)
    # Resampling each seed's images apart (the old way) gives a narrower, wrong interval.
    rng = np.random.default_rng(5)
    apart = np.stack([one[rng.permutation(len(one))] for _ in range(3)], axis=1).mean(axis=1)
    lo, hi = np.quantile(apart, [0.025, 0.975])
    lo1, hi1 = seed_mean_interval(one)
    assert hi - lo < hi1 - lo1


def test_replicates_resample_within_each_class():
    """Each replicate draws n_c images of class c: a class always right stays at 1, the class-mean moves."""
    sample = StageSample.build(np.array(IDS), LABELS, ["cat", "dog"], n_boot=300, seed=3)
    assert [w.sum(axis=1).tolist() for w in sample.weights] == [[6] * 300, [4] * 300]
    hits = np.array([1.0] * 6 + [1, 0, 0, 0])
    reps = sample.per_class_replicates(hits)
    assert (reps[:, 0] == 1).all() and set(np.unique(reps[:, 1] * 4)) <= {0, 1, 2, 3, 4}
    assert sample.per_class(hits).tolist() == [1.0, 0.25]


def test_exact_sign_test_and_holm():
    assert exact_sign_test(0, 0) == 1.0
    assert exact_sign_test(5, 0) == pytest.approx(2 / 32)
    assert exact_sign_test(8, 2) == exact_sign_test(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert exact_sign_test(3, 3) == 1.0
    # Holm: sorted p 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 0.04); NaN untouched.
    assert holm([0.04, 0.01, np.nan, 0.02]).round(12).tolist()[:2] == [0.04, 0.03]
    got = holm([0.04, 0.01, np.nan, 0.02])
    assert np.isnan(got[2]) and got[3] == pytest.approx(0.04)
    assert probability_of_improvement(np.array([[0.5, 0.7]]), np.array([[0.6]])) == pytest.approx(0.5)


def test_split_pair_and_seed_free_config():
    assert split_pair("a,b") == ("a", "b")
    assert split_pair("fused [train.epochs=4, loss.name=ce],fused") == ("fused [train.epochs=4, loss.name=ce]", "fused")
    with pytest.raises(ValueError, match="A,B"):
        split_pair("a")

    def run(i, members):
        return SimpleNamespace(
            info=SimpleNamespace(run_id=f"r{i}"),
            data=SimpleNamespace(
                tags={"stage": "finetune", "technique": "finetune+meta_only"},
                params={"ensemble.members": str(members), "data.top_k": "20"},
            ),
        )

    ids = [[f"{i:032x}", f"{i + 100:032x}"] for i in range(3)]
    runs = [run(i, m) for i, m in enumerate(ids)]  # three ensemble seeds: other member run ids each
    assert run_config(runs[0]) == {"data.top_k": "20"}
    of, groups = config_groups(runs)
    assert set(of.values()) == {0} and len(groups[("finetune", "finetune+meta_only")]) == 1


def test_a_removed_keys_logged_value_groups_as_the_code_runs():
    """Runs logged before ``zeroshot.class_text`` left carry it: at ``name`` they are the configuration of a run
    logged since (which has no such param), at ``wordnet`` one of their own, labelled by it."""

    def run(i, **params):
        return SimpleNamespace(
            info=SimpleNamespace(run_id=f"r{i}"),
            data=SimpleNamespace(
                tags={"stage": "finetune", "technique": "zeroshot"}, params={"data.top_k": "20", **params}
            ),
        )

    runs = [run(0), run(1, **{"zeroshot.class_text": "name"}), run(2, **{"zeroshot.class_text": "wordnet"})]
    assert run_config(runs[1]) == run_config(runs[0]) == {"data.top_k": "20"}
    of, groups = config_groups(runs)
    assert of == {"r0": 0, "r1": 0, "r2": 1}
    configs = groups[("finetune", "zeroshot")]
    assert config_label(configs, 1) == "zeroshot.class_text=wordnet" and config_label(configs, 0) == "config 1"

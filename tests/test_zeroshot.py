"""Generalised zero-shot (fashion_core/zeroshot.py): classes without training images predicted from their names."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import load_experiment
from fashion_core.evaluation import metrics as M
from fashion_core.zeroshot.calibration import class_groups, pseudo_unseen_folds
from fashion_core.zeroshot.names import FEATURES, NameMatcher, candidate_classes, name_tokens
from fashion_core.zeroshot.ranker import doubt, fit_ranker, harmonic, ranker_log_proba, stacked_scores
from tests.helpers.runs import run_data, run_table
from tests.helpers.zeroshot import EXP, UNSEEN, cfg

# ---------------------------------------------------------------- pieces


def test_name_evidence_without_a_shared_word():
    classes = ["Casual Shoes", "Deodorant", "Eyeshadow", "Mens Grooming Kit", "Night suits", "Suits", "Tshirts"]
    m = NameMatcher.build(classes, ["Puma Men Casual Shoes", "Nike Men Blue T-shirt", "Titan Men Watch"])
    f = {
        name: dict(zip(FEATURES, m.features([name])[0, classes.index(c)].tolist()))
        for name, c in [
            ("Colorbar Eye Shadow 002", "Eyeshadow"),
            ("Park Avenue Men Deo", "Deodorant"),
            ("Nike Men Blue T-shirt", "Tshirts"),
        ]
    }
    assert f["Colorbar Eye Shadow 002"]["share_exact"] == 1.0  # two name words joined meet the class word
    assert f["Park Avenue Men Deo"]["share_exact"] == 0.0 and f["Park Avenue Men Deo"]["share_abbrev"] == 1.0
    assert f["Nike Men Blue T-shirt"]["head_word"] == 1.0 and f["Nike Men Blue T-shirt"]["all_exact"] == 1.0
    # "men" is in every training name: it tells little about Mens Grooming Kit
    phi = m.features(["Park Avenue Men Deo"])[0]
    assert phi[classes.index("Mens Grooming Kit"), FEATURES.index("share_exact")] < 0.1
    # a longer exact match covers more of the name
    phi = m.features(["Sweet Dreams Night Suit"])[0]
    cover = FEATURES.index("name_cover")
    assert phi[classes.index("Night suits"), cover] > phi[classes.index("Suits"), cover]
    assert name_tokens("Lakme Eye Liner 03")[1] == ["liner", "eyeliner"]
    assert m.no_shared_word(["Park Avenue Men Deo", "Colorbar Eye Shadow"], ["Deodorant", "Eyeshadow"]).tolist() == [
        True,
        False,
    ]


def test_ranker_learns_shared_weights_and_scores_classes_it_never_saw():
    # Two kinds of evidence; the label always has the first: the weight of the first must be the larger.
    rng = np.random.default_rng(0)
    phi = rng.random((200, 5, 2)).astype(np.float32) * 0.2
    y = rng.integers(0, 3, 200)  # classes 3 and 4 never appear
    phi[np.arange(200), y, 0] = 1.0
    w = fit_ranker(phi, y)
    assert w[0] > 1.0 and w[0] > w[1]
    new = np.zeros((1, 5, 2), dtype=np.float32)
    new[0, 4, 0] = 1.0  # evidence for a class with no training product
    assert ranker_log_proba(new, w).argmax() == 4


def test_stacked_scores_and_calibration_constant():
    seen = np.array([True, True, False])
    meta = np.log(np.array([[0.9, 0.1, 1e-30]]))
    name = np.log(np.array([[0.3, 0.1, 0.6]]))
    gate = stacked_scores(meta, name, seen, 0.0)
    assert gate[0, 0] == pytest.approx(np.log(0.4 * 0.9)) and gate[0, 2] == pytest.approx(np.log(0.6))
    assert stacked_scores(meta, name, seen, 0.0).argmax() == 2  # 0.6 > 0.36
    assert stacked_scores(meta, name, seen, -1.0).argmax() == 0  # a negative gamma favours seen classes
    prod = stacked_scores(meta, name, seen, 0.5, "product")
    assert prod[0, 1] == pytest.approx(np.log(0.1) + np.log(0.1) - 0.5)
    with pytest.raises(ConfigError, match="choose one of"):
        stacked_scores(meta, name, seen, 0.0, "sum")
    assert harmonic(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / 1.2) and harmonic(0.0, 0.0) == 0.0
    # beta: the seen classes are held back more where the metadata model doubts (a flat p_meta), not where it is sure
    unsure = np.log(np.array([[0.5, 0.5, 1e-30]]))
    assert doubt(meta, seen) == pytest.approx([-np.log(0.9)]) and doubt(unsure, seen) == pytest.approx([np.log(2)])
    assert stacked_scores(meta, name, seen, -1.0, beta=4.0).argmax() == 0  # sure: -1 + 4 * 0.105 < 0
    assert stacked_scores(unsure, name, seen, -1.0, beta=4.0).argmax() == 2  # unsure: -1 + 4 * 0.69 > 0
    folds = pseudo_unseen_folds(np.arange(9), seed=0)
    assert len(folds) == 3 and sorted(np.concatenate(folds).tolist()) == list(range(9))


def test_grouped_folds_hold_whole_groups_out():
    groups = {i: ("Bottomwear" if i < 8 else "Bags" if i < 13 else f"small{i % 5}") for i in range(24)}
    for seed in range(4):
        folds = pseudo_unseen_folds(np.arange(24), seed, groups=groups)
        assert len(folds) == 3 and sorted(np.concatenate(folds).tolist()) == list(range(24))
        held = [{groups[int(c)] for c in f} for f in folds]
        assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1 :])  # no group split between folds
        assert max(map(len, folds)) - min(map(len, folds)) <= 3  # largest groups first keeps them balanced
    assert pseudo_unseen_folds(np.arange(6), 0, groups={i: "one" for i in range(6)}) == []  # a single group
    rows = pd.DataFrame({"subCategory": ["Bags", "Bags", "Belts", "Bags", "Belts"]})
    assert class_groups(rows, np.array([0, 0, 1, 1, 1]), "subCategory") == {0: "Bags", 1: "Belts"}
    assert class_groups(rows, np.array([0, 0, 1, 1, 1]), "class") is None
    with pytest.raises(ConfigError, match="zeroshot.fold_by"):
        cfg(**{"zeroshot.fold_by": "brand"})
    assert cfg(**{"zeroshot.fold_by": "subCategory"}).zeroshot.fold_by == "subCategory"


def test_gzsl_summary_against_a_hand_count():
    table = pd.DataFrame(
        {
            "class": ["A", "B", "C", "D", "E"],
            "n_train": [5, 3, 0, 0, 4],
            "n_val": [1, 1, 0, 0, 1],
            "n_test": [4, 2, 5, 0, 0],
            "top1": [0.75, 0.5, 0.4, np.nan, np.nan],
            "top5": [1.0, 0.5, 0.6, np.nan, np.nan],
        }
    )
    g = M.gzsl_summary(table)
    s, u = (0.75 + 0.5) / 2, 0.4
    assert g["top1_seen_mean"] == pytest.approx(s) and g["top1_unseen_mean"] == pytest.approx(u)
    assert g["top1_harmonic"] == pytest.approx(2 * s * u / (s + u))
    assert g["top1_mean_all"] == pytest.approx((0.75 + 0.5 + 0.4) / 3)
    assert g["top5_unseen_mean"] == pytest.approx(0.6) and g["n_classes_unseen"] == 1 and g["n_classes_all"] == 3
    assert g["top1_seen_mean"] == pytest.approx(M.summarize(table)["top1_mean"])  # S is the usual class-mean


def test_zero_shot_needs_the_metadata_only_model():
    with pytest.raises(ConfigError, match="fusion.mode=metadata_only"):
        load_experiment(EXP / "finetune" / "fused_text.yaml", overrides={"zeroshot.enabled": True}, stage="finetune")


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def zs_run(zs_data, zs_store):
    from fashion_core.runners.stage import run_stage

    return run_stage(cfg(), str(zs_data))


def test_unseen_classes_are_predicted_and_logged(zs_run, zs_data, tmp_path):
    data = run_data(zs_run)
    assert data.tags["zero_shot"] == "true" and data.tags["stage"] == "finetune" and data.tags["leaky"] == "false"
    assert "masterCategory" not in data.tags["fusion_inputs"] and "subCategory" not in data.tags["fusion_inputs"]
    table = run_table(zs_run, tmp_path)
    unseen = table[table["n_train"] == 0].set_index("class")
    assert set(UNSEEN) <= set(unseen.index)
    assert (unseen.loc[list(UNSEEN), "n_test"] > 0).all()
    # named from the class names, also the two whose names share no word with the products' ("Deo", "Eye Shadow");
    # Suits' products ("Raymond Men Grey Suit") are left to the seen Night suits here, which shares its word
    assert unseen.loc[["Deodorant", "Eyeshadow", "Lipstick"], "top1"].min() == 1.0, unseen
    # S, U, H and the all-class mean, by hand from predictions.csv
    preds = run_table(zs_run, tmp_path, "eval/predictions.csv")
    seen_classes = set(table.loc[table["n_train"] > 0, "class"])
    acc = (preds["pred1"] == preds["label"]).groupby(preds["label"]).mean()
    s = acc[[c for c in acc.index if c in seen_classes]].mean()
    u = acc[[c for c in acc.index if c not in seen_classes]].mean()
    m = data.metrics
    assert m["test_top1_seen_mean"] == pytest.approx(s) and m["test_top1_unseen_mean"] == pytest.approx(u)
    assert m["test_top1_harmonic"] == pytest.approx(2 * s * u / (s + u))
    assert m["test_top1_mean_all"] == pytest.approx(acc.mean())
    assert m["test_top1_mean"] == pytest.approx(s)  # the usual metric keeps its meaning: seen classes
    assert m["test_n_classes_unseen"] == len(UNSEEN)
    # every test image, the unseen classes' counted as predicted (not as wrong)
    assert m["test_top1_micro_all"] == pytest.approx((preds["pred1"] == preds["label"]).mean())
    assert "zs_beta" in m and m["zs_beta"] >= 0
    assert 0 < m["test_unseen_share_no_class_word"] < 1


def test_the_logged_pyfunc_names_unseen_classes(zs_run):
    """The run's model (metadata model + zero-shot head) serves the unseen classes too, and is registered."""
    import mlflow
    from mlflow.tracking import MlflowClient

    model = mlflow.pyfunc.load_model(f"runs:/{zs_run}/model")
    frame = pd.DataFrame(
        {
            "gender": ["Women", "Men"],
            "baseColour": ["Blue", "Blue"],
            "usage": ["Casual", "Casual"],
            "productDisplayName": ["Lakme Red Lipstick 03", "Titan Men Black Watch"],
        }
    )
    probs = model.predict(frame)
    assert probs.idxmax(axis=1).tolist() == ["Lipstick", "Watches"]
    assert probs.sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0])
    assert MlflowClient().get_model_version_by_alias("fashion-finetune-zeroshot", "best").run_id == zs_run


def test_no_test_label_enters_fitting_or_calibration(zs_run, zs_data, tmp_path):
    """Poisoned test split: labels shuffled among test rows, unseen test names replaced; fit and gamma unchanged."""
    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.zeroshot import run_zeroshot

    c = cfg()
    p = prepare_data(str(zs_data), c.data)
    splits = p.splits.copy()
    test = (splits["split"] == "test") & (splits["subset"] == "finetune")
    splits.loc[test, "label"] = np.random.default_rng(1).permutation(splits.loc[test, "label"].to_numpy())
    catalog = p.catalog.copy()
    unseen_ids = p.splits.loc[test & p.splits["label"].isin(list(UNSEEN)), "id"]
    catalog.loc[catalog["id"].isin(unseen_ids), "productDisplayName"] = "Lakme Night Suit Tie Watch Wallet"
    poisoned = dataclasses.replace(p, splits=splits, catalog=catalog)
    assert candidate_classes(poisoned.splits, "finetune") == candidate_classes(p.splits, "finetune")
    from fashion_core.tracking import runs as tracking

    tracking.set_experiment("poisoned")  # apart from the runs the compare test reads
    again = run_zeroshot(c, poisoned)
    a, b = run_data(zs_run).metrics, run_data(again).metrics
    fitted = ["zs_gamma", "zs_beta", "zs_mix_product", "logreg_c", "val_top1_mean", "val_pseudo_harmonic"]
    fitted += [f"zs_w_{f}" for f in FEATURES]
    assert {k: a[k] for k in fitted} == {k: b[k] for k in fitted}
    from fashion_core.tracking.runs import download_artifact

    w1 = np.load(download_artifact(zs_run, "checkpoint/metadata_baseline.npz", tmp_path / "a"))
    w2 = np.load(download_artifact(again, "checkpoint/metadata_baseline.npz", tmp_path / "b"))
    assert np.array_equal(w1["coef"], w2["coef"]) and np.array_equal(w1["intercept"], w2["intercept"])
    cal1 = run_table(zs_run, tmp_path / "a", "zeroshot/calibration.csv")
    cal2 = run_table(again, tmp_path / "b", "zeroshot/calibration.csv")
    pd.testing.assert_frame_equal(cal1, cal2)
    assert a["test_top1_unseen_mean"] != b["test_top1_unseen_mean"]  # the poison did reach the test scores


def test_a_deferred_zero_shot_run_evaluated_later_logs_what_it_logs_at_its_end(zs_run, zs_data, tmp_path, monkeypatch):
    """The same run as a selection run (the predicate forced): no test figure; ``fashion evaluate`` then logs the
    run's S / U / H and tables from its logged metadata model and zero-shot head, equal to the run's own."""
    from fashion_core.runners.evaluate import evaluate_run
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking import runs as tracking

    tracking.set_experiment("deferred")  # apart from the runs the compare test reads
    with monkeypatch.context() as mp:
        mp.setattr("fashion_core.runners.zeroshot.scores_test", lambda cfg, members=None: False)
        deferred = run_stage(cfg(), str(zs_data), experiment="deferred")
    assert not any(k.startswith("test_") for k in run_data(deferred).metrics)
    assert run_data(deferred).tags["selection_run"] == "true"
    evaluate_run(deferred, str(zs_data))
    a, b = run_data(zs_run).metrics, run_data(deferred).metrics
    tests = sorted(k for k in a if k.startswith("test_"))
    assert "test_top1_unseen_mean" in tests and [b.get(k) for k in tests] == pytest.approx(
        [a[k] for k in tests], abs=1e-9
    )
    for name in ("eval/per_class.csv", "eval/predictions.csv"):
        pd.testing.assert_frame_equal(
            run_table(zs_run, tmp_path / "a", name), run_table(deferred, tmp_path / "b", name)
        )


def test_compare_shows_gzsl_columns_and_shrinks_not_evaluated(zs_run, zs_data, tmp_path):
    from fashion_core.report.compare import run_compare
    from fashion_core.report.tables import display_summary
    from fashion_core.runners.stage import run_stage

    over = {"data.top_k": 1, "metadata.logreg_c": 1.0}
    meta = run_stage(
        load_experiment(EXP / "finetune" / "meta_only.yaml", overrides=over, profile="smoke", stage="finetune"),
        str(zs_data),
    )
    res = run_compare("catalogue", stages=["finetune"], grid="none", out=tmp_path / "report", log_run=False)
    summ = res.tables.summary["finetune"].set_index("technique")
    m = run_data(zs_run).metrics
    assert summ.loc["zeroshot", "top1_unseen_mean"] == pytest.approx(m["test_top1_unseen_mean"])
    assert summ.loc["zeroshot", "top1_harmonic"] == pytest.approx(m["test_top1_harmonic"])
    assert summ.loc["zeroshot", "top1_mean"] == pytest.approx(m["test_top1_mean"])
    assert summ.loc["meta_only", "top1_unseen_mean"] == 0.0 and summ.loc["meta_only", "top1_harmonic"] == 0.0
    assert {"Top-1 unseen (U)", "H", "Top-1 all classes"} <= set(display_summary(res.tables.summary["finetune"]))
    assert not set(UNSEEN) & set(res.tables.not_evaluated["class"])  # predicted zero-shot: evaluated
    assert meta in set(res.tables.runs["run_id"]) and res.tables.runs["n_mismatch"].sum() == 0


def test_pretrain_stage_with_a_class_without_training_images(zs_data, zs_store, tmp_path):
    """--rank-on all puts classes with no training image into the pretrain stage: they are predicted too."""
    from fashion_core.runners.stage import run_stage

    run_id = run_stage(cfg("pretrain", **{"data.rank_on": "all", "data.top_k": 11}), str(zs_data))
    table = run_table(run_id, tmp_path).set_index("class")
    assert table.loc["Lipstick", "n_train"] == 0 and table.loc["Lipstick", "top1"] == 1.0
    assert run_data(run_id).metrics["test_top1_unseen_mean"] > 0

"""The zero-shot benchmark no design has seen (zeroshot/holdout.py): classes with training images held out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.zeroshot.holdout import draw_holdout, eligible_classes, held_out_summary, hold_out
from tests.helpers.runs import run_data, run_table
from tests.helpers.zeroshot import SEEN, UNSEEN, cfg

HELD = ("Ties", "Wallets")


def _splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for k, c in enumerate(["A", "B", "C", "D", "E", "F"]):
        for s in ("train", "val", "test"):
            rows.append((len(rows), c, s, "finetune", ("G1", "G1", "G2", "G2", "G3", "G3")[k]))
    rows.append((len(rows), "T", "test", "finetune", "G4"))  # test only: not eligible
    rows.append((len(rows), "P", "train", "pretrain", "G5"))  # the other stage
    sp = pd.DataFrame(rows, columns=["id", "label", "split", "subset", "subCategory"])
    return sp[["id", "label", "split", "subset"]], sp[["id", "subCategory"]]


def test_the_draw_is_seeded_and_takes_eligible_classes_only():
    sp, cat = _splits()
    assert eligible_classes(sp, "finetune") == list("ABCDEF")
    a = draw_holdout(sp, cat, "finetune", 3, seed=7)
    assert a == draw_holdout(sp, cat, "finetune", 3, seed=7) and len(a) == 3 and set(a) <= set("ABCDEF")
    assert {tuple(draw_holdout(sp, cat, "finetune", 3, seed=s)) for s in range(10)} != {tuple(a)}  # seed matters
    assert draw_holdout(sp, cat, "finetune", 0, seed=7) == []


def test_a_group_draw_holds_whole_groups_and_a_list_is_checked():
    sp, cat = _splits()
    groups = {"A": "G1", "B": "G1", "C": "G2", "D": "G2", "E": "G3", "F": "G3"}
    for seed in range(5):
        held = draw_holdout(sp, cat, "finetune", 3, seed=seed, by="subCategory")
        assert len(held) == 4  # two whole groups: at least 3 classes
        assert all({c for c, g in groups.items() if g == groups[h]} <= set(held) for h in held)
    assert draw_holdout(sp, cat, "finetune", 0, seed=0, classes=("B", "A")) == ["A", "B"]
    with pytest.raises(ConfigError, match="T not among the finetune classes with training and test images"):
        draw_holdout(sp, cat, "finetune", 0, seed=0, classes=("A", "T"))
    with pytest.raises(ConfigError, match="hold out fewer"):
        draw_holdout(sp, cat, "finetune", 6, seed=0)


def test_hold_out_excludes_training_and_validation_rows_only():
    sp, _ = _splits()
    out = hold_out(sp, ["A"])
    a = out[out["label"] == "A"].set_index("id")["split"]
    assert sorted(a) == ["excluded", "excluded", "test"]
    assert out[out["label"] != "A"].equals(sp[sp["label"] != "A"]) and sp["split"].ne("excluded").all()


def test_holdout_needs_the_zero_shot_model():
    with pytest.raises(ConfigError, match="zeroshot.enabled"):
        cfg(**{"zeroshot.enabled": False, "zeroshot.holdout_n": 2})


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def ho_run(zs_data, zs_store):
    from fashion_core.runners.stage import run_stage

    return run_stage(cfg(**{"zeroshot.holdout_classes": HELD}), str(zs_data))


def test_held_out_classes_are_scored_as_unseen_beside_the_stage_own(ho_run, tmp_path):
    data = run_data(ho_run)
    assert data.tags["zs_holdout_classes"] == ",".join(HELD)
    table = run_table(ho_run, tmp_path).set_index("class")
    assert (table.loc[list(HELD), "n_train"] == 0).all() and (table.loc[list(HELD), "n_val"] == 0).all()
    assert (table.loc[list(HELD), "n_test"] > 0).all()
    m = data.metrics
    assert m["test_n_classes_unseen"] == len(UNSEEN) + len(HELD) and m["test_n_classes_heldout"] == len(HELD)
    # by hand from the per-class table: U of the held-out classes, U of the stage's own unseen ones, H
    u = table.loc[list(HELD), "top1"].mean()
    native = table.loc[list(UNSEEN), "top1"].mean()
    s = table.loc[[c for c in SEEN if c not in HELD], "top1"].mean()
    assert m["test_top1_unseen_heldout_mean"] == pytest.approx(u)
    assert m["test_top1_unseen_native_mean"] == pytest.approx(native)
    assert m["test_top1_harmonic_heldout"] == pytest.approx(2 * s * u / (s + u) if s + u else 0.0)
    assert m["n_classes_seen"] == len(SEEN) - len(HELD)  # Bags, the top class, is the pretrain stage's


def test_no_row_of_a_held_out_class_but_test_enters_fitting(ho_run, zs_data, tmp_path):
    """Poison the held-out classes' training and validation rows (names, colours): the fit is unchanged."""
    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.zeroshot import run_zeroshot
    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.runs import download_artifact

    c = cfg(**{"zeroshot.holdout_classes": HELD})
    p = prepare_data(str(zs_data), c.data)
    fit_rows = p.splits["label"].isin(list(HELD)) & p.splits["split"].isin(["train", "val"])
    ids = p.splits.loc[fit_rows, "id"]
    assert len(ids) > 0
    catalog = p.catalog.copy()
    catalog.loc[catalog["id"].isin(ids), "productDisplayName"] = "Lakme Deo Eye Shadow Lipstick Suit"
    catalog.loc[catalog["id"].isin(ids), "baseColour"] = "Poison"
    tracking.set_experiment("poisoned-holdout")
    again = run_zeroshot(c, dataclasses.replace(p, catalog=catalog))
    a, b = run_data(ho_run).metrics, run_data(again).metrics
    assert {k: v for k, v in a.items() if k != "run_seconds"} == pytest.approx(
        {k: v for k, v in b.items() if k != "run_seconds"}
    )
    w1 = np.load(download_artifact(ho_run, "checkpoint/metadata_baseline.npz", tmp_path / "a"))
    w2 = np.load(download_artifact(again, "checkpoint/metadata_baseline.npz", tmp_path / "b"))
    assert np.array_equal(w1["coef"], w2["coef"])


def test_a_deferred_holdout_run_is_evaluated_with_the_same_classes_held_out(ho_run, zs_data, monkeypatch):
    from fashion_core.runners.evaluate import evaluate_run
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking import runs as tracking

    tracking.set_experiment("deferred-holdout")
    with monkeypatch.context() as mp:
        mp.setattr("fashion_core.runners.zeroshot.scores_test", lambda cfg, members=None: False)
        deferred = run_stage(cfg(**{"zeroshot.holdout_classes": HELD}), str(zs_data), experiment="deferred-holdout")
    evaluate_run(deferred, str(zs_data))
    a, b = run_data(ho_run).metrics, run_data(deferred).metrics
    keys = sorted(k for k in a if k.startswith("test_"))
    assert "test_top1_unseen_heldout_mean" in keys
    assert [b.get(k) for k in keys] == pytest.approx([a[k] for k in keys], abs=1e-9)


def test_compare_shows_the_held_out_u_beside_the_stage_own(ho_run, tmp_path):
    from fashion_core.report.compare import run_compare
    from fashion_core.report.tables import display_summary

    res = run_compare("catalogue", stages=["finetune"], grid="none", out=tmp_path / "report", log_run=False)
    summ = res.tables.summary["finetune"].set_index("technique")
    m = run_data(ho_run).metrics
    assert summ.loc["zeroshot", "top1_unseen_heldout_mean"] == pytest.approx(m["test_top1_unseen_heldout_mean"])
    assert summ.loc["zeroshot", "top1_harmonic_heldout"] == pytest.approx(m["test_top1_harmonic_heldout"])
    assert summ.loc["zeroshot", "top1_unseen_native_mean"] == pytest.approx(m["test_top1_unseen_native_mean"])
    assert {"U held out", "H held out", "U stage's own"} <= set(display_summary(res.tables.summary["finetune"]))
    # another benchmark (fewer seen classes): never the stage's best, not paired against it
    pairs = res.tables.paired["finetune"]
    assert "zeroshot" not in set(pairs["a"]) | set(pairs["b"])


def test_held_out_summary_scores_the_drawn_classes_apart_from_the_stage_own_unseen():
    # seen A, B (0.8, 0.6); drawn H1, H2 (no train rows in the benchmark run: 0.5, 0.3); the stage's own unseen
    # N (0.1); a class without test images (Z) counts nowhere
    table = pd.DataFrame(
        {
            "class": ["A", "B", "H1", "H2", "N", "Z"],
            "n_train": [10, 5, 0, 0, 0, 3],
            "n_test": [4, 2, 3, 1, 2, 0],
            "top1": [0.8, 0.6, 0.5, 0.3, 0.1, np.nan],
            "top5": [1.0, 1.0, 0.9, 0.7, 0.4, np.nan],
        }
    )
    out = held_out_summary(table, ["H1", "H2"])
    s, u = 0.7, 0.4
    assert out["top1_unseen_heldout_mean"] == pytest.approx(u)
    assert out["top1_harmonic_heldout"] == pytest.approx(2 * s * u / (s + u))
    assert out["n_classes_heldout"] == 2
    assert out["top1_unseen_native_mean"] == pytest.approx(0.1)
    assert out["n_classes_unseen_native"] == 1
    assert held_out_summary(table, []) == {}
    # no stage-own unseen class: no native figure
    assert "top1_unseen_native_mean" not in held_out_summary(table[table["class"] != "N"], ["H1", "H2"])

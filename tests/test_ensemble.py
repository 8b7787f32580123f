"""Tests for fashion_core.runners.ensemble: the weight chosen on validation only, a weight of 0 reproducing the anchor's
own test figures, the run's tags and artifacts, the grid it joins (so compare shows it), and the refusals
(generated data, CPU).

    .venv/bin/python -m pytest tests/test_ensemble.py -q
"""

from pathlib import Path

import numpy as np
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import load_experiment
from fashion_core.runners.ensemble import ENSEMBLE_TAG, WEIGHTS, choose_weight, crossfit, run_ensemble

EXP = Path(__file__).resolve().parents[1] / "experiments"
TINY = {"data.top_k": 4, "train.epochs": 1}


def cfg(stage, technique, **over):
    return load_experiment(EXP / stage / f"{technique}.yaml", overrides={**TINY, **over}, profile="smoke", stage=stage)


# ---------------------------------------------------------------- the weight


def _two_models(n=400, c=4, seed=0):
    """Model a knows classes 0-1 and is unsure on 2-3; model b knows 2-3 and says 3, less surely, for 0-1:
    together (0 < w < 1.25) they are right everywhere."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    a, b = np.full((n, c), -5.0), np.full((n, c), -5.0)
    a[y >= 2] = np.log(1 / c)  # unsure: a tie, which goes to class 0
    a[np.flatnonzero(y < 2), y[y < 2]] = 0.0
    b[np.arange(n), np.where(y >= 2, y, 3)] = -1.0
    return a, b, y


def test_the_weight_is_the_best_on_these_rows_and_zero_is_the_anchor_alone():
    a, b, y = _two_models()
    w, curve = choose_weight(a, b, y)
    assert curve["weight"].tolist() == list(WEIGHTS)
    assert curve.loc[curve["weight"] == 0, "val_top1_mean"].item() == pytest.approx(0.5)  # a alone: 2 of 4 classes
    assert curve["val_top1_mean"].max() == pytest.approx(1.0) and w > 0
    assert curve.loc[curve["weight"] == w, "val_top1_mean"].item() == curve["val_top1_mean"].max()
    # ties go to the smaller weight: a useless b leaves the anchor alone
    w0, _ = choose_weight(a, np.zeros_like(b), y)
    assert w0 == 0.0


def test_crossfit_chooses_on_one_half_and_scores_the_other():
    a, b, y = _two_models()
    got = crossfit(a, b, y, seed=0)
    assert got["ensemble"] == pytest.approx(1.0)
    assert got["a"] == pytest.approx(0.5) and got["b"] == pytest.approx(0.5)  # each alone knows 2 of the 4 classes
    # with one weight only, nothing is chosen: the cross-fitted figure is that weight's own, the anchor's here
    only = crossfit(a, b, y, seed=0, weights=(0.0,))
    assert only["ensemble"] == pytest.approx(only["a"])


def test_crossfit_holds_the_ensemble_against_the_members_on_the_same_halves():
    """A class with one validation image sits in one half only: the halves' class-mean is not the whole's, so
    the members alone are scored on the same halves."""
    y = np.array([0, 0, 1, 1, 2])
    a = np.log(np.full((5, 3), 0.1))
    a[[0, 1], 0] = a[[2, 3], 1] = 0.0  # right on classes 0 and 1
    a[4, 0] = 0.0  # wrong on the one image of class 2
    whole = choose_weight(a, np.zeros_like(a), y, weights=(0.0,))[1]["val_top1_mean"].item()
    got = crossfit(a, np.zeros_like(a), y, seed=0)
    assert whole == pytest.approx(2 / 3)
    assert got["a"] == pytest.approx((2 / 3 + 1) / 2)  # one half holds class 2, the other does not
    assert got["ensemble"] == pytest.approx(got["a"])


# ---------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def members(dataset, isolated_module):
    from fashion_core.runners.stage import run_stage

    image = run_stage(cfg("pretrain", "baseline"), str(dataset), register=False)
    meta = run_stage(cfg("pretrain", "meta_only"), str(dataset), register=False)
    return image, meta


def _run(run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id)


def test_an_ensemble_run_is_a_run_of_its_stage_with_the_chosen_weight(members, dataset):
    from mlflow.tracking import MlflowClient

    image, meta = members
    run_id = run_ensemble([image, meta], str(dataset))
    run = _run(run_id)
    t, m = run.data.tags, run.data.metrics
    assert t["stage"] == "pretrain" and t["technique"] == "baseline+meta_only"
    assert t[ENSEMBLE_TAG] == f"{image},{meta}" and t["dataset_digest"] == _run(image).data.tags["dataset_digest"]
    assert t["ensemble_inputs"] == "image+metadata"
    assert t["transfer"] == _run(image).data.tags["transfer"]  # the metadata model's tag says nothing of a transfer
    assert t["seed"] == _run(image).data.tags["seed"] and run.info.run_name == f"baseline+meta_only · s{t['seed']}"
    assert 0 <= m["val_top1_mean_crossfit"] <= 1 and 0 <= m["test_top1_mean"] <= 1
    assert 0 <= m["val_top1_mean_crossfit_member_a"] <= 1 and 0 <= m["val_top1_mean_crossfit_member_b"] <= 1
    # the chosen weight is the smallest of those best on validation (the logged curve), and the logged validation
    # figure is the curve's at that weight; the curve's w = 0 is the anchor's own validation figure
    import pandas as pd

    from fashion_core.tracking.runs import download_artifact

    curve = pd.read_csv(download_artifact(run_id, "ensemble/weights.csv"))
    assert curve["weight"].tolist() == list(WEIGHTS)
    best = curve.loc[curve["val_top1_mean"] == curve["val_top1_mean"].max(), "weight"].min()
    assert m["ensemble_weight"] == best
    assert m["val_top1_mean"] == pytest.approx(curve.loc[curve["weight"] == best, "val_top1_mean"].item(), abs=1e-12)
    assert curve.loc[curve["weight"] == 0, "val_top1_mean"].item() == pytest.approx(
        m["val_top1_mean_member_a"], abs=1e-12
    )
    files = {a.path for a in MlflowClient().list_artifacts(run_id, "eval")}
    files |= {a.path for a in MlflowClient().list_artifacts(run_id, "ensemble")}
    assert {"eval/per_class.csv", "eval/predictions.csv", "ensemble/weights.csv", "ensemble/weights.png"} <= files
    assert run.data.params["ensemble.members"]  # the config names its members


def test_no_test_label_enters_the_weight_choice(members, dataset, isolated_module):
    """Poisoned test split: its labels shuffled; the chosen weight, the validation curve and the cross-fitted
    figure are unchanged, while the test figure moves (the poison did reach the test scoring)."""
    import dataclasses

    import pandas as pd

    from fashion_core.data.prepared import prepare_data
    from fashion_core.tracking.runs import download_artifact

    image, meta = members
    clean = run_ensemble([image, meta], str(dataset))
    p = prepare_data(str(dataset), cfg("pretrain", "baseline").data)
    splits = p.splits.copy()
    test = (splits["split"] == "test") & (splits["subset"] == "pretrain")
    # a derangement of the test labels among the stage's classes: every test label is wrong now
    classes = sorted(splits.loc[test, "label"].unique())
    splits.loc[test, "label"] = splits.loc[test, "label"].map(dict(zip(classes, classes[1:] + classes[:1])))
    poisoned = run_ensemble([image, meta], str(dataset), prepared=dataclasses.replace(p, splits=splits))
    a, b = _run(clean).data.metrics, _run(poisoned).data.metrics
    chosen = [
        "ensemble_weight",
        "val_top1_mean",
        "val_top5_mean",
        "val_top1_mean_crossfit",
        "val_top1_mean_member_a",
        "val_top1_mean_member_b",
    ]
    assert {k: a[k] for k in chosen} == {k: b[k] for k in chosen}
    pd.testing.assert_frame_equal(
        pd.read_csv(download_artifact(clean, "ensemble/weights.csv")),
        pd.read_csv(download_artifact(poisoned, "ensemble/weights.csv")),
    )
    assert a["test_top1_mean"] != b["test_top1_mean"]


@pytest.mark.parametrize("anchor", [0, 1])
def test_a_weight_of_zero_reproduces_the_anchors_own_test_figures(members, dataset, anchor):
    """The members' scores are rebuilt from their logged models: w = 0 must give the anchor's logged test metrics."""
    runs = list(members) if anchor == 0 else list(members)[::-1]
    run_id = run_ensemble(runs, str(dataset), weights=(0.0,))
    mine, own = _run(run_id).data.metrics, _run(runs[0]).data.metrics
    for key in ("test_top1_mean", "test_top5_mean", "test_top1_micro"):
        assert mine[key] == pytest.approx(own[key], abs=1e-9), key
    assert mine["val_top1_mean"] == pytest.approx(own["val_top1_mean"], abs=1e-6)


@pytest.mark.integration  # a grid, an ensemble and compare end to end
def test_it_joins_the_members_grid_so_compare_shows_it(dataset, isolated):
    from fashion_core.grid.plan import plan_grid
    from fashion_core.grid.scheduler import run_grid
    from fashion_core.report.runs import find_runs

    tasks = plan_grid(EXP, ["pretrain/baseline", "pretrain/meta_only"], seeds=[0], profile="smoke", overrides=TINY)
    run_grid(tasks, str(dataset), profile="smoke", seeds=[0], register=False)
    runs = find_runs(stages=("pretrain",)).runs
    by_tech = {r.data.tags["technique"]: r.info.run_id for r in runs}
    run_id = run_ensemble([by_tech["baseline"], by_tech["meta_only"]], str(dataset))
    assert _run(run_id).data.tags["mlflow.parentRunId"] == _run(by_tech["baseline"]).data.tags["mlflow.parentRunId"]
    shown = {r.info.run_id for r in find_runs(stages=("pretrain",)).runs}
    assert run_id in shown and set(by_tech.values()) <= shown


def test_refusals(members, dataset):
    from fashion_core.runners.stage import run_stage

    image, meta = members
    with pytest.raises(ConfigError, match="two runs"):
        run_ensemble([image], str(dataset))
    with pytest.raises(ConfigError, match="with itself"):
        run_ensemble([image, image], str(dataset))
    other_split = run_stage(cfg("pretrain", "meta_only", **{"data.split_seed": 1}), str(dataset), register=False)
    with pytest.raises(ConfigError, match="dataset_digest|different splits"):
        run_ensemble([image, other_split], str(dataset))
    finetune = run_stage(cfg("finetune", "meta_only"), str(dataset), register=False)
    with pytest.raises(ConfigError, match="differ in stage"):
        run_ensemble([image, finetune], str(dataset))


def test_the_command_takes_two_runs_apart_or_comma_joined_and_names_a_missing_one(isolated):
    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    a, b = "a" * 32, "b" * 32
    for args in ([a, b], [f"{a},{b}"]):
        res = CliRunner().invoke(main, ["ensemble", *args])
        assert res.exit_code != 0 and f"no run {a}" in res.output, res.output
    res = CliRunner().invoke(main, ["ensemble", a])
    assert res.exit_code != 0 and "two runs" in res.output, res.output

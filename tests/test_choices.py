"""Every choice the code makes reads validation rows only: the epoch a network keeps, the metadata model's C, the
grid's source run. Each as a poisoned-test check: the test labels scrambled, the choice unchanged (the ensemble's
weight, the zero-shot calibration and Optuna have theirs in test_ensemble, test_zeroshot and test_tuning).

    .venv/bin/python -m pytest tests/test_choices.py -q
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from fashion_core.config.schema import load_experiment

EXP = Path(__file__).resolve().parents[1] / "experiments"


def cfg(technique, **over):
    over = {"data.top_k": 4, "train.epochs": 2, **over}
    return load_experiment(EXP / "pretrain" / f"{technique}.yaml", overrides=over, profile="smoke", stage="pretrain")


def _poisoned(p):
    """The prepared data with every pretrain test label moved to another class (a derangement)."""
    splits = p.splits.copy()
    test = (splits["split"] == "test") & (splits["subset"] == "pretrain")
    classes = sorted(splits.loc[test, "label"].unique())
    splits.loc[test, "label"] = splits.loc[test, "label"].map(dict(zip(classes, classes[1:] + classes[:1])))
    return dataclasses.replace(p, splits=splits)


def _history(run_id, key):
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize(
    "technique, chosen", [("baseline", ["best_epoch", "epochs_run"]), ("meta_only", ["logreg_c", "val_top5_mean"])]
)
def test_no_test_label_enters_the_epoch_or_the_regularisation_a_run_keeps(technique, chosen, dataset, isolated):
    from mlflow.tracking import MlflowClient

    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.stage import run_stage

    c = cfg(technique)
    p = prepare_data(str(dataset), c.data)
    clean = run_stage(c, str(dataset), prepared=p, register=False)
    poisoned = run_stage(c, str(dataset), prepared=_poisoned(p), register=False)
    a, b = (MlflowClient().get_run(r).data.metrics for r in (clean, poisoned))
    assert {k: a[k] for k in chosen} == {k: b[k] for k in chosen}
    assert _history(clean, "val_top1_mean") == _history(poisoned, "val_top1_mean")  # the curve that chose
    assert a["test_top1_mean"] != b["test_top1_mean"]  # the poison did reach the test scoring


def test_the_grid_source_is_the_best_on_validation_whatever_test_says():
    from fashion_core.grid.plan import IMAGE, pick_best_pretrain

    runs = pd.DataFrame(
        {
            "stage": ["pretrain"] * 3,
            "status": ["FINISHED"] * 3,
            "kind": [IMAGE] * 3,
            "technique": ["a", "b", "c"],
            "seed": [0, 0, 0],
            "run_id": ["r1", "r2", "r3"],
            "val_top1_best": [0.7, 0.9, 0.8],
            "test_top1_mean": [0.99, 0.1, 0.5],
        }
    )
    assert pick_best_pretrain(runs)[0] == "r2"
    assert pick_best_pretrain(runs.assign(test_top1_mean=[0.1, 0.99, 0.5]))[0] == "r2"

"""Selection runs never score test; ``fashion evaluate`` scores it later, once, exactly as the run would have; every
test read is counted per configuration; a ``--from`` source of another split is refused (generated data, CPU).

    .venv/bin/python -m pytest tests/test_test_reads.py -q
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import load_experiment
from fashion_core.tracking.test_reads import (
    CONFIG_KEY_TAG,
    READS_TAG,
    SELECTION_TAG,
    TEST_SCORED_TAG,
    config_key,
    configs_read_on_test,
    mark_test_read,
    scores_test,
)

EXP = Path(__file__).resolve().parents[1] / "experiments"
YEAR = {
    "data.top_k": 4,
    "train.epochs": 1,
    "data.val_by": "year",
    "data.val_years": [2016],
    "data.height": 32,
    "data.width": 24,
}


def cfg(stage, technique, **over):
    return load_experiment(EXP / stage / f"{technique}.yaml", overrides={**YEAR, **over}, profile="smoke", stage=stage)


# ---------------------------------------------------------------- the count


def _scored_run(client, exp, params, digest="d1", technique="focal", stage="pretrain", scored=True, tag=True):
    """A finished run with these params; scored on test (the metric, and the tag unless ``tag`` is False)."""
    run = client.create_run(exp, tags={"stage": stage, "technique": technique, "dataset_digest": digest})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    if scored:
        client.log_metric(run.info.run_id, "test_top1_mean", 0.5)
        if tag:
            client.set_tag(run.info.run_id, TEST_SCORED_TAG, "true")
    else:
        client.set_tag(run.info.run_id, TEST_SCORED_TAG, "false")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_the_count_is_distinct_configurations_without_seed_of_one_technique_stage_and_digest(isolated):
    from mlflow.tracking import MlflowClient

    from fashion_core.tracking import runs as tracking

    client = MlflowClient()
    exp = tracking.set_experiment("reads")
    base = {"train.epochs": "5", "train.seed": "0", "train.device": "cpu", "loss.gamma": "2.0"}
    first = _scored_run(client, exp, base)
    assert mark_test_read(first) == 1  # a first look
    seed1 = _scored_run(client, exp, {**base, "train.seed": "1", "train.device": "cuda"})
    assert mark_test_read(seed1) == 1  # a second seed (on another device) of the same configuration
    epochs = _scored_run(client, exp, {**base, "train.epochs": "8"})
    assert mark_test_read(epochs) == 2  # another epoch count is another configuration
    # not counted: a selection run, another digest, technique or stage
    _scored_run(client, exp, {**base, "train.epochs": "3"}, scored=False)
    other = [
        _scored_run(client, exp, {**base, "train.epochs": "9"}, digest="d2"),
        _scored_run(client, exp, {**base, "train.epochs": "9"}, technique="ce"),
        _scored_run(client, exp, {**base, "train.epochs": "9"}, stage="finetune"),
    ]
    assert [configs_read_on_test(r) for r in other] == [1, 1, 1]
    # a run scored before the tags existed (the metric only) counts, and so does a run in another experiment
    _scored_run(client, exp, {**base, "train.epochs": "12"}, tag=False)
    elsewhere = tracking.set_experiment("reads-elsewhere")
    _scored_run(client, elsewhere, {**base, "train.epochs": "15"})
    again = _scored_run(client, exp, {**base, "train.seed": "7"})
    assert mark_test_read(again) == 4  # 5, 8, 12 and 15 epochs; this one is the first's configuration
    tags = client.get_run(again).data.tags
    assert tags[READS_TAG] == "4" and tags[TEST_SCORED_TAG] == "true"
    assert tags[CONFIG_KEY_TAG] == config_key(client.get_run(first).data.params)


def test_the_config_key_survives_a_key_added_at_its_default_or_removed_at_its_no_op_value():
    """A run logged before a key existed (or after one left) is the same configuration as today's run of the same
    setting; a different value of the key is another configuration."""
    from fashion_core.config.schema import ExperimentConfig, to_dict
    from fashion_core.tracking.runs import param_strings

    today = param_strings(to_dict(ExperimentConfig(stage="finetune").replace(**{"loss.gamma": 1.0})))
    older = {k: v for k, v in today.items() if not k.startswith("zeroshot.holdout")}  # before the key existed
    older["zeroshot.class_text"] = "name"  # a key removed since, at the value today's code behaves as
    assert config_key(older) == config_key(today)
    assert config_key({**older, "zeroshot.class_text": "wordnet"}) != config_key(today)
    assert config_key({**today, "zeroshot.holdout_n": "15"}) != config_key(today)
    assert config_key({**today, "stage": "pretrain"}) != config_key(today)


def test_the_config_key_ignores_seed_and_device_only():
    base = {"train.epochs": "5", "train.seed": "0", "train.device": "cpu", "loss.gamma": "2.0"}
    assert config_key(base) == config_key({**base, "train.seed": "3", "train.device": "cuda"})
    assert config_key(base) != config_key({**base, "loss.gamma": "1.0"})


def test_the_predicate_selection_is_the_year_held_out_validation_or_a_selection_member():
    year = cfg("pretrain", "baseline")
    standard = cfg("pretrain", "baseline", **{"data.val_by": "random"})
    assert not scores_test(year) and scores_test(standard)
    assert not scores_test(standard, [{SELECTION_TAG: "true"}, {SELECTION_TAG: "false"}])
    assert scores_test(standard, [{SELECTION_TAG: "false"}, {}])


# ---------------------------------------------------------------- deferral and fashion evaluate


@pytest.fixture(scope="module")
def years(tmp_path_factory):
    from test_experiment import year_dataset

    return year_dataset(tmp_path_factory.mktemp("years") / "fashion-years")


def _test_metrics(run_id):
    from mlflow.tracking import MlflowClient

    return {k: v for k, v in MlflowClient().get_run(run_id).data.metrics.items() if k.startswith("test_")}


def _eval_files(run_id):
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient().list_artifacts(run_id, "eval")}


def _table(run_id, path, dst):
    from fashion_core.tracking.runs import download_artifact

    return pd.read_csv(download_artifact(run_id, path, dst), keep_default_na=False)


@pytest.mark.parametrize("technique", ["baseline", "meta_only"])
def test_a_deferred_run_evaluated_later_logs_what_it_would_have_logged_at_its_end(
    technique, years, isolated, monkeypatch, tmp_path, caplog
):
    from mlflow.tracking import MlflowClient

    from fashion_core.runners import metadata_only as metadata_baseline
    from fashion_core.runners import network as experiment
    from fashion_core.runners.evaluate import evaluate_run
    from fashion_core.runners.stage import run_stage

    c = cfg("pretrain", technique)
    deferred = run_stage(c, str(years), register=False)
    run = MlflowClient().get_run(deferred)
    assert run.data.tags[SELECTION_TAG] == "true" and run.data.tags[TEST_SCORED_TAG] == "false"
    assert _test_metrics(deferred) == {} and _eval_files(deferred) == set()  # no test figure, no eval/ table
    assert "n_test_images_learnable" not in run.data.metrics
    assert run.data.metrics["val_top1_mean"] >= 0

    # the same run, scoring test at its end (the predicate forced): the figures evaluate must reproduce
    with monkeypatch.context() as mp:
        mp.setattr(experiment, "scores_test", lambda cfg: True)
        mp.setattr(metadata_baseline, "scores_test", lambda cfg: True)
        at_end = run_stage(c, str(years), register=False)
    caplog.set_level(logging.INFO, logger="fashion_core")
    caplog.clear()
    got = evaluate_run(deferred, str(years))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("fashion_core")]
    assert "configurations read on test: 1" in lines[-1]  # the forced run read this very configuration
    mine, theirs = _test_metrics(deferred), _test_metrics(at_end)
    assert mine == theirs and mine["test_top1_mean"] == got["test_top1_mean"]
    for path in ("eval/per_class.csv", "eval/predictions.csv"):
        pd.testing.assert_frame_equal(_table(deferred, path, tmp_path / "a"), _table(at_end, path, tmp_path / "b"))
    assert _eval_files(deferred) == _eval_files(at_end)
    tags = MlflowClient().get_run(deferred).data.tags
    assert tags[TEST_SCORED_TAG] == "true" and tags["test_scored_by"] == "evaluate" and tags[READS_TAG] == "1"
    assert MlflowClient().get_run(deferred).info.status == "FINISHED"
    with pytest.raises(ConfigError, match="already scored test"):  # once
        evaluate_run(deferred, str(years))
    with pytest.raises(ConfigError, match="already scored test"):  # a run that scored test at its end
        evaluate_run(at_end, str(years))


def test_an_ensemble_of_selection_runs_is_one_and_is_evaluated_once(years, isolated, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from fashion_core.runners.ensemble import run_ensemble
    from fashion_core.runners.evaluate import evaluate_run
    from fashion_core.runners.stage import run_stage

    image = run_stage(cfg("pretrain", "baseline"), str(years), register=False)
    meta = run_stage(cfg("pretrain", "meta_only"), str(years), register=False)
    deferred = run_ensemble([image, meta], str(years))
    run = MlflowClient().get_run(deferred)
    assert run.data.tags[SELECTION_TAG] == "true" and _test_metrics(deferred) == {} and _eval_files(deferred) == set()
    # the same ensemble, scoring test at its end (the predicate as the ensemble runner holds it)
    with monkeypatch.context() as mp:
        mp.setattr("fashion_core.runners.ensemble.scores_test", lambda cfg, members=None: True)
        at_end = run_ensemble([image, meta], str(years))
    assert MlflowClient().get_run(at_end).data.metrics["ensemble_weight"] == run.data.metrics["ensemble_weight"]
    evaluate_run(deferred, str(years))
    assert _test_metrics(deferred) == _test_metrics(at_end)
    pd.testing.assert_frame_equal(
        _table(deferred, "eval/predictions.csv", tmp_path / "a"), _table(at_end, "eval/predictions.csv", tmp_path / "b")
    )


# ---------------------------------------------------------------- --from and the split


def test_from_refuses_a_source_of_another_split_unless_allowed(years, isolated):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from fashion_core.cli import commands as cli
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking.references import SourceError

    src = run_stage(cfg("pretrain", "baseline"), str(years), register=False)
    standard = cfg("finetune", "finetune", **{"data.val_by": "random"})
    with pytest.raises(
        SourceError,
        match=r"another split \(digest \w+, val_by=year val_years=2016\) than this "
        r"run \(digest \w+, val_by=random\).*--allow-split-mismatch",
    ):
        run_stage(standard, str(years), source=src)
    run_id = run_stage(standard, str(years), source=src, allow_split_mismatch=True)
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["split_mismatch_allowed"] == "true" and tags["source_val_by"] == "year"
    assert tags["source_val_years"] == "2016" and tags["source_dataset_digest"] != tags["dataset_digest"]
    same = run_stage(cfg("finetune", "finetune"), str(years), source=src)  # the same split: accepted
    assert "split_mismatch_allowed" not in MlflowClient().get_run(same).data.tags
    smoke = [
        "--data",
        str(years),
        "--top-k",
        "4",
        "--profile",
        "smoke",
        "--epochs",
        "1",
        "--height",
        "32",
        "--width",
        "24",
    ]
    res = CliRunner().invoke(cli.main, ["finetune", *smoke, "--from", src])
    last = res.output.strip().splitlines()[-1]  # the lines before it are the data preparation's progress
    assert res.exit_code == 2 and last.startswith("Error: --from ") and "another split" in last

"""A tiny pretrain -> finetune on generated data: runs, tags, artifacts, and real transfer of the weights."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fashion_core.config.schema import load_experiment
from fashion_core.runners.stage import run_stage
from fashion_core.tracking.references import SourceError, load_run_model, resolve_source

EXP = Path(__file__).resolve().parents[1] / "experiments"


def cfg(stage, technique, **over):
    over = {"data.top_k": 4, "train.epochs": 2, **over}
    return load_experiment(EXP / stage / f"{technique}.yaml", overrides=over, profile="smoke", stage=stage)


def artifacts(run_id, path=""):
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient().list_artifacts(run_id, path)}


@pytest.fixture(scope="module")
def pretrained(dataset, isolated_module):
    run_id = run_stage(cfg("pretrain", "baseline"), str(dataset))
    return run_id


def test_pretrain_run_has_tags_metrics_and_artifacts(pretrained):
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(pretrained)
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["stage"] == "pretrain" and tags["technique"] == "baseline"
    assert len(tags["dataset_digest"]) == 16 and tags["mlflow.source.git.commit"]
    assert run.info.run_name == "baseline · s0" and run.data.tags["stage"] == "pretrain"
    for m in (
        "test_top1_mean",
        "test_top5_mean",
        "test_top1_micro",
        "test_top5_micro",
        "val_top1_mean",
        "train_loss",
        "test_top1_mean_lo",
        "test_top1_mean_hi",
    ):
        assert m in metrics, m
    history = MlflowClient().get_metric_history(pretrained, "val_top1_mean")
    assert [h.step for h in history] == [1, 2]
    assert {
        "eval/per_class.csv",
        "eval/predictions.csv",
        "eval/confusion.html",
        "eval/per_class_intervals.csv",
    } <= artifacts(pretrained, "eval")
    assert {"checkpoint/model_state.pt", "checkpoint/model.json", "checkpoint/last.pt"} <= artifacts(
        pretrained, "checkpoint"
    )
    assert "config.yaml" in artifacts(pretrained)
    import mlflow

    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{pretrained}'", output_format="list"
    )
    assert [m.name for m in models] == ["model"]
    assert run.data.params["loss.name"] == "ce"


def test_per_class_table_matches_predictions(pretrained, tmp_path):
    from fashion_core.evaluation import metrics as M
    from fashion_core.tracking.runs import download_artifact

    table = M.read_per_class(download_artifact(pretrained, "eval/per_class.csv", tmp_path))
    preds = M.read_predictions(download_artifact(pretrained, "eval/predictions.csv", tmp_path))
    assert list(table.columns) == ["class", "n_train", "n_val", "n_test", "top1", "top5"]
    again = M.per_class_from_predictions(preds, table["class"].tolist()).set_index("class")
    t = table.set_index("class")
    assert np.allclose(t["top1"].fillna(-1), again.loc[t.index, "top1"].fillna(-1))
    from mlflow.tracking import MlflowClient

    m = MlflowClient().get_run(pretrained).data.metrics
    assert m["test_top1_mean"] == pytest.approx(M.summarize(table)["top1_mean"])


@pytest.mark.parametrize("technique", ["imprint", "ncm", "partial", "scratch", "imprint_finetune"])
def test_finetune_techniques(pretrained, dataset, technique):
    from mlflow.tracking import MlflowClient

    run_id = run_stage(cfg("finetune", technique), str(dataset), source=pretrained)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "finetune" and run.data.tags["transfer"] == technique
    # scratch trains a new network: it names no source
    assert run.data.tags.get("source_run_id") == (None if technique == "scratch" else pretrained)
    table = pd.read_csv(MlflowClient().download_artifacts(run_id, "eval/per_class.csv"), keep_default_na=False)
    assert set(table["class"]) >= {"C4", "C5", "C6", "C7"}


def test_linear_probe_really_starts_from_the_pretrained_weights(pretrained, dataset):
    from mlflow.tracking import MlflowClient

    source, _ = load_run_model(pretrained)
    run_id = run_stage(cfg("finetune", "linear_probe"), str(dataset), source=pretrained)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["source_run_id"] == pretrained and run.data.tags["transfer"] == "linear_probe"
    tuned, meta = load_run_model(run_id)
    src, dst = source.state_dict(), tuned.state_dict()
    backbone = [k for k in src if k.startswith("backbone.")]
    assert backbone and all(torch.equal(src[k], dst[k]) for k in backbone)  # frozen: identical, BN stats too
    fresh = cfg("finetune", "scratch")
    from fashion_core.models.network import build_model

    other = build_model(fresh.model.__class__(**{**fresh.model.__dict__}), 4).state_dict()
    assert any(not torch.equal(src[k], other[k]) for k in backbone if k in other and "weight" in k)
    assert meta["classes"] == ["C4", "C5", "C6", "C7"]


def test_full_finetune_moves_the_backbone_from_the_source(pretrained, dataset):
    source, _ = load_run_model(pretrained)
    run_id = run_stage(cfg("finetune", "finetune"), str(dataset), source=pretrained)
    tuned, _ = load_run_model(run_id)
    key = "backbone.layer1.0.conv1.weight"
    delta = (tuned.state_dict()[key] - source.state_dict()[key]).abs().max().item()
    assert 0 < delta < 0.5  # changed, but close to the source (small backbone lr)


def test_source_resolution(pretrained, dataset):
    assert resolve_source("latest") == pretrained
    assert resolve_source(f"runs:/{pretrained}/model") == pretrained
    assert resolve_source("models:/fashion-pretrain@best") == pretrained
    assert resolve_source("models:/fashion-pretrain/1") == pretrained
    with pytest.raises(SourceError, match="no run"):
        resolve_source("0" * 32)
    ft = run_stage(cfg("finetune", "ncm"), str(dataset), source=pretrained)
    with pytest.raises(SourceError, match="not a pretrain run"):
        resolve_source(ft)
    with pytest.raises(SourceError, match="expected a run id"):
        resolve_source("yesterday")


def test_same_seed_same_result(dataset, isolated):
    from mlflow.tracking import MlflowClient

    a = run_stage(cfg("pretrain", "baseline"), str(dataset), register=False)
    b = run_stage(cfg("pretrain", "baseline"), str(dataset), register=False)
    ma, mb = MlflowClient().get_run(a).data.metrics, MlflowClient().get_run(b).data.metrics
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-6)
    assert ma["test_top1_mean"] == mb["test_top1_mean"]


def test_predict_top5_from_a_registered_model(pretrained, dataset):
    from fashion_core.serving.predict import predict_images

    out = predict_images([dataset / "images" / "1000.jpg"], "models:/fashion-pretrain@best")
    assert len(out) == 1 and len(out[0]) == 4  # 4 pretrain classes
    assert abs(sum(p for _, p in out[0]) - 1) < 1e-4


def test_flip_average_bench_scores_the_runs_own_validation_only(pretrained, dataset, capsys):
    from bench import tta
    from fashion_core.data.loader import TensorData

    assert tta.main([pretrained, "--data", str(dataset)]) == 0
    out = capsys.readouterr().out
    row = [ln for ln in out.splitlines() if ln.startswith(f"| {pretrained[:8]} |")]
    assert len(row) == 1 and "| pretrain | baseline |" in row[0]
    assert len(row[0].split("|")) == 2 + 3 + 3  # run, stage, technique, val x 3 views: it chooses, so no test
    assert "test " not in row[0] and "test as is" not in out
    # The average view is the mean of the two views' logits; the mirrored view really mirrors the width axis.
    model, _ = load_run_model(pretrained)
    images = torch.randint(0, 256, (3, 80, 60, 3), dtype=torch.uint8)
    data = TensorData(images, torch.zeros(3, dtype=torch.int64), {})
    dev = torch.device("cpu")
    plain, mirrored, avg = tta.view_scores(model, data, dev).values()
    np.testing.assert_allclose(avg, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    flipped = TensorData(images.flip(2), data.labels, {})
    np.testing.assert_allclose(tta.view_scores(model, flipped, dev)["as is"], mirrored, rtol=1e-5, atol=1e-6)


def test_error_budget_bench_slices_a_runs_test_errors(pretrained, dataset, capsys):
    from bench import error_budget
    from fashion_core.evaluation.metrics import read_per_class, read_predictions
    from fashion_core.tracking import runs as tracking

    assert error_budget.main([pretrained, "--data", str(dataset), "--top", "50"]) == 0
    out = capsys.readouterr().out
    pred = read_predictions(tracking.download_artifact(pretrained, "eval/predictions.csv"))
    per_class = read_per_class(tracking.download_artifact(pretrained, "eval/per_class.csv"))
    pred = error_budget.evaluated_predictions(pred, per_class)
    mean = error_budget.class_mean(pred["label"], pred["label"] == pred["pred1"])
    assert abs(mean - per_class["top1"].dropna().mean()) < 1e-9  # the class mean the run logged
    assert f"Top-1 class mean {mean:.4f}" in out
    for slicing in error_budget.SLICINGS:
        assert f"| {slicing} | test | errors |" in out
    # Every test product is in exactly one gender slice: the slices' rows add up to the evaluated rows.
    section = out.split("| gender | test |")[1].split("\n\n")[0]
    counts = [int(ln.split("|")[2]) for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert sum(counts) == len(pred)


def year_dataset(root: Path) -> Path:
    """The generated dataset with every fourth product id of 2012 moved to 2016 (a second training year)."""
    from tests.helpers.data import make_dataset

    data = make_dataset(root, odd_rows=False)
    lines = (data / "styles.csv").read_text().splitlines()
    moved = [
        ln.replace(",2012,", ",2016,") if ln.split(",")[0].isdigit() and int(ln.split(",")[0]) % 4 == 0 else ln
        for ln in lines
    ]
    (data / "styles.csv").write_text("\n".join(moved) + "\n")
    return data


@pytest.mark.integration  # prepare, pretrain and the registry end to end
def test_validation_by_year_through_prepare_pretrain_and_the_registry(tmp_path, isolated):
    """--val-by year: prepare logs the held-out year as val, pretrain validates and registers @best on it."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from fashion_core.cli import commands as cli
    from fashion_core.tracking.runs import download_artifact

    data = str(year_dataset(tmp_path / "years"))
    res = CliRunner().invoke(
        cli.main,
        [
            "prepare",
            "--data",
            data,
            "--top-k",
            "4",
            "--val-by",
            "year",
            "--val-years",
            "2016",
            "--workers",
            "1",
            "--height",
            "32",
            "--width",
            "24",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "validation: the even years 2016 held out" in res.output
    client = MlflowClient()
    prep = client.search_runs([client.get_experiment_by_name("years").experiment_id], "tags.stage = 'prepare'")[0]
    sp = pd.read_parquet(download_artifact(prep.info.run_id, "splits/splits.parquet", tmp_path / "dl"))
    val = sp[sp["split"] == "val"]
    assert len(val) > 0 and set(val["year"]) == {2016}
    assert not ((sp["split"] == "train") & (sp["year"] == 2016)).any()  # every class has 2012 products too
    assert prep.data.metrics["n_val"] == len(val) and prep.data.params["data.val_by"] == "year"
    assert prep.data.metrics["n_val_classes_pretrain"] == 4
    smoke = ["--data", data, "--top-k", "4", "--profile", "smoke", "--epochs", "2"]
    res = CliRunner().invoke(cli.main, ["pretrain", *smoke, "--val-by", "year"])
    assert res.exit_code == 0, res.output
    run = client.search_runs([prep.info.experiment_id], "tags.stage = 'pretrain'")[0]
    assert run.data.tags["dataset_digest"] == prep.data.tags["dataset_digest"]
    assert run.data.params["data.val_years"] == "[2016]" and run.data.tags["selection"] == "val_top1_mean"
    assert run.data.metrics["n_val_images"] == (val["subset"] == "pretrain").sum()
    assert client.get_model_version_by_alias("fashion-pretrain", "best").run_id == run.info.run_id
    res = CliRunner().invoke(cli.main, ["pretrain", *smoke, "--val-fraction", "0", "--no-register"])
    assert res.exit_code == 0, res.output
    last = client.search_runs(
        [prep.info.experiment_id], "tags.stage = 'pretrain'", order_by=["attributes.start_time DESC"]
    )[0]
    assert last.data.tags["selection"] == "last_epoch" and last.data.metrics["n_val_images"] == 0
    assert "kept the weights of the last epoch (2)" in res.output


def test_val_years_option_refuses_a_test_year_and_needs_val_by_year(isolated):
    from click.testing import CliRunner

    from fashion_core.cli import commands as cli

    res = CliRunner().invoke(cli.main, ["prepare", "--val-by", "year", "--val-years", "2015"])
    assert res.exit_code == 2 and "2015 is a test year" in res.output
    res = CliRunner().invoke(cli.main, ["prepare", "--val-years", "2014"])  # no --val-by year: it would do nothing
    assert res.exit_code == 2 and "--val-years 2014 needs --val-by year" in res.output

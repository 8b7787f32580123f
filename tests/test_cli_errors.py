"""One-line errors where a user types or sends something, one profile rule at every door, and --dry-run.

A mistake is one ``Error:`` line before any data is read or any store, study or run is created; a bad
request to the served model is a one-line HTTP 400 body naming the row and the reason.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fashion_core.cli.commands import main
from tests.helpers.cli import EXPERIMENTS, ROOT, one_line_error

SPACES = str(ROOT / "search_spaces")


def cli(args: list[str]):
    res = CliRunner().invoke(main, args, catch_exceptions=True)
    return res.exit_code, res.output


@pytest.fixture()
def cpu_only(monkeypatch):
    monkeypatch.setattr("fashion_core.grid.main_job.has_gpu", lambda: False)


@pytest.fixture()
def no_data_read(monkeypatch):
    """Reading the dataset fails the test: the error must come first."""

    def refuse(*a, **k):
        raise AssertionError("the data was read before the error")

    monkeypatch.setattr("fashion_core.runners.stage.prepare_data", refuse)
    monkeypatch.setattr("fashion_core.data.prepared.prepare_data", refuse)


# ---------------------------------------------------------------- references, before any data


def test_a_reference_that_cannot_be_one_is_refused_at_once(isolated, dataset, cpu_only, no_data_read):
    t0 = time.perf_counter()
    one_line_error(
        *cli(["finetune", "--from", "not-a-run", "--data", str(dataset), "--experiments-dir", EXPERIMENTS]),
        r"--from 'not-a-run': expected a run id, runs:/<id>, models:/<name>/<version>, .* or latest",
    )
    assert time.perf_counter() - t0 < 5  # no torch, no MLflow, no data
    one_line_error(
        *cli(["predict", str(dataset / "images" / "1140.jpg"), "--model", "my-model"]),
        r"--model 'my-model': expected a run id",
    )
    assert not (isolated / "mlflow.db").exists()


def test_a_run_that_does_not_exist_is_refused_before_the_data_is_read(isolated, dataset, cpu_only, no_data_read):
    from fashion_core.tracking import runs as tracking

    tracking.ensure_store()
    missing = "0" * 32
    one_line_error(
        *cli(
            [
                "finetune",
                "--from",
                missing,
                "--data",
                str(dataset),
                "--profile",
                "smoke",
                "--experiments-dir",
                EXPERIMENTS,
            ]
        ),
        rf"--from {missing}: no run {missing}; looked in",
    )
    one_line_error(
        *cli(
            [
                "grid",
                "--from",
                f"runs:/{missing}",
                "--data",
                str(dataset),
                "--profile",
                "smoke",
                "--techniques",
                "finetune/ncm",
                "--experiments-dir",
                EXPERIMENTS,
            ]
        ),
        "no run",
    )


# ---------------------------------------------------------------- read-only commands create no store


@pytest.mark.parametrize(
    "args,what",
    [
        (["compare"], "runs to compare"),
        (["predict", "--meta", "styles.csv"], "model for --model models:/fashion-pretrain@best"),
    ],
)
def test_read_only_commands_create_no_store(isolated, args, what):
    (isolated / "styles.csv").write_text("id,gender\n1,Men\n")
    one_line_error(*cli(args), f"no MLflow store at {isolated / 'mlflow.db'}, so no {what}; ")
    assert not (isolated / "mlflow.db").exists()


# ---------------------------------------------------------------- the profile by machine, at every door


@pytest.mark.parametrize(
    "command",
    [
        ["pretrain"],
        ["finetune", "--from", "latest"],
        ["grid", "--techniques", "baseline"],
        ["tune", "--spaces-dir", SPACES],
    ],
)
def test_every_training_command_picks_the_profile_by_machine(isolated, dataset, cpu_only, command):
    base = [*command, "--data", str(dataset), "--experiments-dir", EXPERIMENTS, "--dry-run"]
    code, out = cli(base)
    assert code == 0, out
    assert "profile quick (auto): no CUDA GPU here" in out and re.search(r"expected time: about \d+", out), out
    assert "dry run: the config is valid; nothing was run and no store was opened" in out
    one_line_error(*cli([*base, "--profile", "default"]), "profile default is the GPU profile .* add --device cpu")
    code, out = cli([*base, "--profile", "default", "--device", "cpu"])
    assert code == 0 and "profile default\n" in out, out
    assert not (isolated / "mlflow.db").exists() and not (isolated / "optuna.db").exists()


def test_auto_is_the_default_on_a_gpu(isolated, dataset, monkeypatch):
    monkeypatch.setattr("fashion_core.grid.main_job.has_gpu", lambda: True)
    code, out = cli(["pretrain", "--data", str(dataset), "--experiments-dir", EXPERIMENTS, "--dry-run"])
    assert code == 0 and "profile default (auto): a CUDA GPU is here" in out and "on one GPU" in out, out


def test_dry_run_prints_the_resolved_plan(isolated, dataset, cpu_only):
    code, out = cli(
        [
            "pretrain",
            "-t",
            "focal",
            "--profile",
            "smoke",
            "-o",
            "loss.gamma=1.5",
            "--data",
            str(dataset),
            "--experiments-dir",
            EXPERIMENTS,
            "--dry-run",
        ]
    )
    assert code == 0 and "pretrain/focal seed 0: resnet18" in out and "loss focal" in out, out
    assert f"data: {dataset} (exists)" in out and f"store: sqlite:///{isolated / 'mlflow.db'} (would be created)" in out
    one_line_error(
        *cli(["pretrain", "--data", str(isolated / "nope.zip"), "--experiments-dir", EXPERIMENTS, "--dry-run"]),
        "does not exist",
    )
    one_line_error(
        *cli(
            ["pretrain", "-o", "loss.gamma=-1", "--data", str(dataset), "--experiments-dir", EXPERIMENTS, "--dry-run"]
        ),
        "loss.gamma must be >= 0",
    )
    code, out = cli(
        ["run", "--profile", "smoke", "--data", str(dataset), "--experiments-dir", EXPERIMENTS, "--dry-run"]
    )
    assert code == 0 and "finetune/" in out and "dry run:" in out, out
    assert not (isolated / "mlflow.db").exists()


# ---------------------------------------------------------------- tune: checked before a study or a run


def test_tune_refuses_overrides_its_profile_rejects_before_any_study(isolated, dataset, cpu_only, no_data_read):
    one_line_error(
        *cli(
            [
                "tune",
                "--space",
                "focal_weights",
                "--spaces-dir",
                SPACES,
                "--experiments-dir",
                EXPERIMENTS,
                "--profile",
                "quick",
                "-o",
                "model.width_mult=0.25",
                "--data",
                str(dataset),
            ]
        ),
        "model.width_mult=0.25 is only supported by the resnet backbones; efficientnet_lite0 needs 1.0",
    )
    assert not (isolated / "optuna.db").exists() and not (isolated / "mlflow.db").exists()


def test_a_searched_value_the_profile_refuses_is_an_error_before_any_study(isolated, dataset, tmp_path):
    from fashion_core.config.checks import ConfigError
    from fashion_core.tuning.run import check_space_config
    from fashion_core.tuning.spaces import base_config, load_space

    (tmp_path / "trunks.yaml").write_text(
        "base: pretrain/baseline\nparams:\n"
        "  model.backbone: {type: categorical, choices: [resnet18, efficientnet_lite0]}\n"
    )
    space = load_space(tmp_path / "trunks.yaml", SPACES, EXPERIMENTS)
    check_space_config(space, base_config(space, "default_scratch"))  # full width: both trunks build
    with pytest.raises(
        ConfigError,
        match=r"model.backbone='efficientnet_lite0' with this profile and these "
        r"overrides: model.width_mult=0.25 is only supported by the resnet",
    ):
        check_space_config(space, base_config(space, "smoke"))  # a quarter-width ResNet profile


def test_the_study_names_its_objective_for_the_dashboard(isolated, dataset, tmp_path):
    import optuna

    from fashion_core.tuning.run import run_tune
    from fashion_core.tuning.spaces import load_space

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_tune(
        load_space("focal_weights", SPACES, EXPERIMENTS),
        str(dataset),
        profile="smoke",
        storage=url,
        overrides={"data.top_k": 4},
        study_name="named",
        create_only=True,
    )
    assert optuna.load_study(study_name="named", storage=url).metric_names == ["val_top1_mean"]


# ---------------------------------------------------------------- Ray


def test_grid_on_a_ray_cluster_that_is_not_running_is_one_line(monkeypatch):
    pytest.importorskip("ray")
    import ray

    from fashion_core.config.checks import ConfigError
    from fashion_core.grid.executors import RayExecutor

    def no_cluster(*a, **k):  # what ray.init(address="auto") raises with no cluster
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to ...")

    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(
        ConfigError,
        match=r"^--ray auto: no running Ray cluster found; start one with `ray start "
        r"--head`",
    ):
        RayExecutor("auto", 1.0, 0.0, 0)


# ---------------------------------------------------------------- the served model's answers


def tiny_product_model():
    from fashion_core.config.schema import ModelConfig
    from fashion_core.models.network import build_model
    from fashion_core.serving.predict import ProductModel

    torch.manual_seed(0)
    return ProductModel(["a", "b"], 32, 24, net=build_model(ModelConfig(width_mult=0.25), 2).eval())


def jpeg() -> bytes:
    from fashion_core.serving.predict import _white_jpeg

    return _white_jpeg(32, 24)


def test_a_bad_row_is_named_with_the_reason():
    from fashion_core.serving.predict import ProductInputError

    model = tiny_product_model()
    assert model.predict_proba(pd.DataFrame({"image": [jpeg()]})).shape == (1, 2)
    frame = pd.DataFrame({"image": [jpeg(), jpeg(), b"%PDF-1.4 not a photo"]})
    with pytest.raises(ProductInputError, match=r"^row 3: not a readable JPEG/PNG image$"):
        model.predict_proba(frame)
    with pytest.raises(ProductInputError, match=r"^missing fields: image \(this image model reads image\)$"):
        model.predict_proba(pd.DataFrame({"gender": ["Men"]}))


def test_the_scoring_server_answers_a_bad_request_in_one_line():
    """MLflow's own request handler (scoring_server.invocations) with the pyfunc: the body is one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from fashion_core.serving.pyfunc_model import ProductPyfunc

    pyfunc = ProductPyfunc()
    pyfunc.model = tiny_product_model()

    class Served:  # the served PyFuncModel's interface that invocations uses
        metadata = None

        def predict(self, data):
            return pyfunc.predict(None, data)

    import base64

    body = json.dumps(
        {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(jpeg()).decode()], [base64.b64encode(b"hello").decode()]],
            }
        }
    )
    with pytest.raises(MlflowException) as e:
        scoring_server.invocations(body, "application/json", Served(), None)
    answer = json.loads(e.value.serialize_as_json())
    assert e.value.get_http_status_code() == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert answer["message"] == "row 2: not a readable JPEG/PNG image" and "\n" not in e.value.serialize_as_json()
    assert np.isclose(pyfunc.predict(None, pd.DataFrame({"image": [jpeg()]})).to_numpy().sum(), 1.0)

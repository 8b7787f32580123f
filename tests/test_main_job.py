"""The first hour of a new user: `make run` end to end, the best models usable, and the newcomer's errors.

`make run` runs here exactly as the README says (same Makefile target, the MLproject's `main` entry point,
`fashion run`), on the generated dataset with the smoke profile and this interpreter's environment as
the venv (``-o`` keeps make from reinstalling it): about a minute.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fashion_core.cli.commands import main
from tests.helpers.cli import EXPERIMENTS, ROOT, one_line_error
from tests.helpers.store import module_store

VENV = Path(sys.prefix)
STAGES = ("prepare", "pretrain", "finetune", "compare")


def make(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    """`make -C <checkout> ARGS` with this interpreter's environment as the venv (never reinstalled)."""
    return subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", *args, f"VENV={VENV}", "-o", f"{VENV}/bin/fashion"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clean_env(store: Path) -> dict:
    # MLFLOW_EXPERIMENT_ID: mlflow.set_experiment exports it, and `mlflow run --experiment-name` refuses both
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "FASHION_DATA")
    }
    return {
        **env,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "FASHION_CACHE": str(store / "cache"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


@pytest.fixture(scope="module")
def made(dataset, tmp_path_factory):
    """`make run DATA=<generated> PROFILE=smoke` into a store of its own; yields (store folder, output)."""
    from mlflow.tracking import MlflowClient

    with module_store(tmp_path_factory, "main") as (path, _):
        # `make run` works in the checkout: the experiment's artifacts go to the test's folder, not ./mlruns there
        MlflowClient().create_experiment("fashion-mini", artifact_location=(path / "mlruns").as_uri())
        proc = make(
            [
                "run",
                f"DATA={dataset}",
                "PROFILE=smoke",
                "OVERRIDE=data.top_k=4",
                f"OUT={path / 'report'}",
                "EXPERIMENT=fashion-mini",
            ],
            clean_env(path),
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        yield path, out


def all_runs():
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


# ---------------------------------------------------------------- make run


@pytest.mark.integration  # reads the `make run` subprocess's store (mlflow run)
def test_make_run_does_the_whole_job(made):
    path, out = made
    runs = all_runs()
    by_stage = {s: [r for r in runs if r.data.tags.get("stage") == s] for s in STAGES + ("grid",)}
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert {r.data.tags["technique"] for r in by_stage["pretrain"]} == {"class_balanced", "fused_text", "meta_only"}
    assert {r.data.tags["technique"] for r in by_stage["finetune"]} == {
        "imprint_balanced",
        "fused_text",
        "meta_only",
        "meta_only+imprint_balanced",
    }
    # main.yaml's ensembles joined the grid, so the report compares them with their members
    grid_id = by_stage["grid"][0].info.run_id
    ensembles = [r for r in runs if r.data.tags.get("ensemble_of")]
    assert len(ensembles) == 1 and all(r.data.tags["mlflow.parentRunId"] == grid_id for r in ensembles)
    assert "meta_only+imprint_balanced" in (path / "report" / "summary_finetune.csv").read_text()
    assert len(by_stage["prepare"]) == len(by_stage["grid"]) == len(by_stage["compare"]) == 1
    # The run `mlflow run . -e main` opened is the job's own, main/<profile>: prepare, grid and compare nest under it
    (job,) = [r for r in runs if r.data.tags.get("stage") == "main"]
    assert job.info.run_name == "main/smoke" and job.data.tags["mlflow.project.entryPoint"] == "main"
    assert all(
        by_stage[s][0].data.tags["mlflow.parentRunId"] == job.info.run_id for s in ("prepare", "grid", "compare")
    )
    assert job.data.tags["dataset_digest"] == by_stage["prepare"][0].data.tags["dataset_digest"]
    assert {r.info.run_name for r in by_stage["pretrain"]} >= {"class_balanced · s0", "fused_text · s0"}
    assert (path / "report" / "report.html").is_file() and (path / "report" / "summary_finetune.csv").is_file()
    lines = out.splitlines()
    assert any(ln.startswith("profile smoke") for ln in lines)
    expected = [ln for ln in lines if ln.startswith("expected time: about")]
    assert len(expected) == 1 and lines.index(expected[0]) < next(
        i for i, ln in enumerate(lines) if "prepare run:" in ln
    )
    assert f"the report is {path / 'report' / 'report.html'}" in out
    assert "| rank | technique |" in out and "?workflowType=machine_learning" in out


@pytest.mark.integration  # reads the `make run` subprocess's store (mlflow run)
def test_every_training_run_logs_its_dataset_and_the_experiment_is_model_development(made):
    from mlflow.tracking import MlflowClient

    runs = [r for r in all_runs() if r.data.tags.get("stage") in ("prepare", "pretrain", "finetune")]
    assert len(runs) == 8  # prepare, 6 techniques, the finetune ensemble
    for r in runs:
        inputs = r.inputs.dataset_inputs
        assert [d.dataset.name for d in inputs] == ["fashion-mini"], r.info.run_name
        assert inputs[0].dataset.digest == r.data.tags["dataset_digest"]
    exp = MlflowClient().get_experiment(runs[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_profile_follows_the_machine():
    from fashion_core.config.checks import ConfigError
    from fashion_core.grid.main_job import choose_profile

    assert choose_profile("auto", gpu=True)[0] == "default"
    profile, why = choose_profile("auto", gpu=False, cores=2)
    assert profile == "quick" and "no CUDA GPU" in why
    assert choose_profile("auto", device="cpu", gpu=True)[0] == "quick"
    assert choose_profile("quick", gpu=False)[0] == "quick"
    assert choose_profile("default", device="cpu", gpu=False)[0] == "default"  # on the CPU on purpose
    with pytest.raises(ConfigError, match="GPU profile"):
        choose_profile("default", gpu=False)


def test_the_expected_time_follows_the_measured_figures():
    from fashion_core.grid.main_job import estimate_minutes, load_main_techniques
    from fashion_core.grid.plan import plan_grid

    names = load_main_techniques(EXPERIMENTS)
    assert names[:1] == ["pretrain/class_balanced"] and "finetune/imprint_balanced" in names

    def minutes(profile: str, gpu: bool = False) -> float:  # the job as run_main plans it for the profile
        return estimate_minutes(plan_grid(EXPERIMENTS, names, profile=profile), profile, gpu=gpu)

    assert 10 < minutes("quick_scratch") < 30
    assert 20 < minutes("quick") < 60  # a fresh clone's make run: 30.7 min (docs/first-run.md)
    assert minutes("quick") < minutes("cpu") * 3
    assert minutes("default") > 5 * 60  # why auto never picks it on CPUs
    assert minutes("default", gpu=True) < 30


def test_the_expected_time_scales_with_a_techniques_own_epochs():
    from fashion_core.grid.costs import PRETRAIN_MINUTES
    from fashion_core.grid.main_job import estimate_minutes
    from fashion_core.grid.plan import GridTask, plan_grid

    (task,) = plan_grid(EXPERIMENTS, ["pretrain/class_balanced"], profile="quick")  # the profile's 3 epochs
    longer = GridTask(task.cfg.replace(**{"train.epochs": 6}), task.path)
    base = estimate_minutes([], "quick", gpu=False)  # prepare + compare
    assert estimate_minutes([task], "quick", gpu=False) - base == pytest.approx(PRETRAIN_MINUTES[("quick", "cpu")])
    assert estimate_minutes([longer], "quick", gpu=False) - base == pytest.approx(
        2 * PRETRAIN_MINUTES[("quick", "cpu")]
    )


# ---------------------------------------------------------------- the best models usable


def registered(name: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_model_version_by_alias(name, "best").run_id


@pytest.mark.integration  # reads the `make run` subprocess's store (mlflow run)
def test_every_kind_of_model_is_registered_with_best_by_validation(made):
    runs = {(r.data.tags.get("stage"), r.data.tags.get("technique")): r.info.run_id for r in all_runs()}
    for stage in ("pretrain", "finetune"):
        assert registered(f"fashion-{stage}-fused") == runs[(stage, "fused_text")]
        assert registered(f"fashion-{stage}-metadata") == runs[(stage, "meta_only")]
    assert registered("fashion-pretrain") == runs[("pretrain", "class_balanced")]
    assert registered("fashion-finetune") == runs[("finetune", "imprint_balanced")]


def product(dataset: Path, pid: int) -> dict:
    """A product of the generated catalogue: its image bytes and its fields."""
    styles = pd.read_csv(dataset / "styles.csv", dtype=str, on_bad_lines="skip").set_index("id")
    row = styles.loc[str(pid)].to_dict()
    return {"image": (dataset / "images" / f"{pid}.jpg").read_bytes(), **row}


@pytest.mark.integration  # reads the `make run` subprocess's store (mlflow run)
def test_pyfunc_of_a_fused_model_takes_image_and_fields(made, dataset):
    import mlflow

    from fashion_core.serving.predict import predict_products

    model = mlflow.pyfunc.load_model("models:/fashion-finetune-fused@best")
    names = [c.name for c in model.metadata.get_input_schema().inputs]
    assert names[0] == "image" and "productDisplayName" in names and "gender" in names
    frame = pd.DataFrame([product(dataset, 1140), product(dataset, 1160)])
    probs = model.predict(frame[names])
    assert list(probs.columns) == ["C4", "C5", "C6", "C7"]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # The same numbers as `fashion predict` gives from the run's checkpoint.
    top = predict_products(
        [dataset / "images" / "1140.jpg"], "models:/fashion-finetune-fused@best", dataset / "styles.csv", k=4
    )[0]
    assert [c for c, _ in top] == list(probs.iloc[0].sort_values(ascending=False).index)
    assert np.allclose([p for _, p in top], probs.iloc[0].sort_values(ascending=False).to_numpy(), atol=1e-5)
    with pytest.raises(Exception, match=r"^missing fields: .*productDisplayName"):
        model.predict(frame[["image"]])


def cli(args: list[str]):
    res = CliRunner().invoke(main, args, catch_exceptions=True)
    return res.exit_code, res.output


@pytest.mark.integration  # reads the `make run` subprocess's store (mlflow run)
def test_predict_takes_metadata_and_refuses_a_fused_model_without_it(made, dataset, tmp_path):
    image = str(dataset / "images" / "1140.jpg")  # class C4, a finetune class
    code, out = cli(
        [
            "predict",
            image,
            "--model",
            "models:/fashion-finetune-fused@best",
            "--meta",
            str(dataset / "styles.csv"),
            "--top",
            "2",
        ]
    )
    assert code == 0 and re.search(rf"^{re.escape(image)}: C\d \d\.\d{{3}}, C\d \d\.\d{{3}}$", out, re.M), out
    fields = {k: v for k, v in product(dataset, 1140).items() if k != "image"}
    (tmp_path / "p.json").write_text(json.dumps(fields))
    code, out = cli(
        ["predict", image, "--model", "models:/fashion-finetune-fused@best", "--meta", str(tmp_path / "p.json")]
    )
    assert code == 0 and re.search(rf"^{re.escape(image)}: C\d", out, re.M), out
    code, out = cli(["predict", image, "--model", "models:/fashion-finetune-fused@best"])
    one_line_error(code, out, "is an image\\+metadata model: it reads gender, .* give them with --meta styles.csv")
    code, out = cli(
        ["predict", "--model", "models:/fashion-finetune-metadata@best", "--meta", str(tmp_path / "p.json")]
    )
    assert code == 0 and re.search(r"^row 1: C\d \d\.\d{3}", out, re.M), out
    pd.DataFrame([{"id": 7, **fields}]).to_csv(tmp_path / "other.csv", index=False)
    code, out = cli(
        ["predict", image, "--model", "models:/fashion-finetune-fused@best", "--meta", str(tmp_path / "other.csv")]
    )
    one_line_error(code, out, re.escape("--meta has no row with the id of 1140.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration  # `make run`, then an `mlflow models serve` process
def test_mlflow_models_serve_answers_a_fused_model_request(made, dataset):
    import mlflow

    path, _ = made
    port = free_port()
    env = {**clean_env(path), "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}"}
    log = open(path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            str(VENV / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/fashion-finetune-fused@best",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600  # uvicorn loads the model first: minutes on a loaded 2-core machine
        while True:
            try:
                with urllib.request.urlopen(url + "/ping", timeout=5):
                    break
            except OSError as err:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((path / "serve.log").read_text()[-2000:]) from err
                time.sleep(1)
        item = product(dataset, 1160)
        columns = ["image", "gender", "baseColour", "usage", "productDisplayName"]
        row = [base64.b64encode(item["image"]).decode()] + [item[c] for c in columns[1:]]
        body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
        req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())["predictions"][0]
        # The README's request, as written there (its photo and port swapped for this test's)
        readme = [
            ln
            for ln in (ROOT / "README.md").read_text().splitlines()
            if ln.startswith(('python -c "import base64', "curl -s -X POST"))
        ]
        assert len(readme) == 2, readme
        photo = str(dataset / "images" / "1160.jpg")
        for line in readme:
            done = subprocess.run(
                ["bash", "-c", line.replace("images/1163.jpg", photo).replace(":5001/", f":{port}/")],
                cwd=path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        assert set(json.loads(done.stdout)["predictions"][0]) == {"C4", "C5", "C6", "C7"}, done.stdout
        # Bad requests: HTTP 400 with one line that names the row and the reason, no input echoed, no trace
        bad = [row, row, [base64.b64encode(b"plain text, not a photo").decode()] + row[1:]]
        for data, message in (
            ({"columns": columns, "data": bad}, "row 3: not a readable JPEG/PNG image"),
            (
                {"columns": columns[:4], "data": [row[:4]]},
                "missing fields: productDisplayName (this image+metadata model reads image, ",
            ),
        ):
            req = urllib.request.Request(
                url + "/invocations",
                data=json.dumps({"dataframe_split": data}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=60)
            text = err.value.read().decode()
            body = json.loads(text)
            assert err.value.code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", text
            assert body["message"].startswith(message) and "\n" not in text and "stack_trace" not in body, text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    local = mlflow.pyfunc.load_model("models:/fashion-finetune-fused@best").predict(
        pd.DataFrame([{**{c: item[c] for c in columns}}])
    )
    assert set(answer) == {"C4", "C5", "C6", "C7"}
    assert np.allclose([answer[c] for c in local.columns], local.iloc[0].to_numpy(), atol=1e-5)


# ---------------------------------------------------------------- the newcomer's errors


def test_make_run_without_data_or_with_a_missing_path_says_so_before_the_set_up(tmp_path):
    env = clean_env(tmp_path)
    for data, match in (
        ("", "no data given: download the dataset from https://www.kaggle.com/"),
        (str(tmp_path / "nope.zip"), f"DATA={tmp_path / 'nope.zip'} does not exist"),
    ):
        proc = make(["run", f"DATA={data}"], env, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        assert proc.stderr.count("\n") == 1 and match in proc.stderr, proc.stderr  # make's own one line
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "fault,args,match",
    [
        ("no data", [], "no dataset given. Get the dataset from"),
        (
            "a data path that does not exist",
            ["--data", "/nonexistent/fashion.zip"],
            "'/nonexistent/fashion.zip' does not exist",
        ),
    ],
)
def test_run_without_usable_data(isolated, monkeypatch, fault, args, match):
    monkeypatch.delenv("FASHION_DATA", raising=False)
    one_line_error(*cli(["run", "--profile", "smoke", "--experiments-dir", EXPERIMENTS, *args]), match)
    assert not (isolated / "mlflow.db").exists()  # nothing started


def test_gpu_profile_on_a_machine_without_gpu(isolated, dataset, monkeypatch):
    monkeypatch.setattr("fashion_core.grid.main_job.has_gpu", lambda: False)
    one_line_error(
        *cli(["run", "--data", str(dataset), "--profile", "default", "--experiments-dir", EXPERIMENTS]),
        "profile default is the GPU profile .* PROFILE=auto or quick",
    )
    one_line_error(
        *cli(["run", "--data", str(dataset), "--device", "cuda", "--experiments-dir", EXPERIMENTS]),
        "--device cuda but there is no CUDA GPU here",
    )
    assert not (isolated / "mlflow.db").exists()


def test_compare_and_from_latest_with_no_runs_say_where_they_looked(isolated, dataset):
    from fashion_core.tracking import runs as tracking

    db = isolated / "mlflow.db"
    # no store here: one line, and none is created
    one_line_error(
        *cli(["compare", "--no-log-run"]), rf"no MLflow store at {re.escape(str(db))}, so no runs to compare"
    )
    one_line_error(
        *cli(
            [
                "finetune",
                "--data",
                str(dataset),
                "--from",
                "latest",
                "--profile",
                "smoke",
                "--experiments-dir",
                EXPERIMENTS,
            ]
        ),
        "so no pretrained model for --from latest",
    )
    assert not db.exists()
    tracking.ensure_store()  # a store without runs
    one_line_error(
        *cli(["compare", "--no-log-run"]),
        rf"no pretrain or finetune run to compare; looked in the store sqlite:///\S*{re.escape(str(db))}.* "
        "MLFLOW_TRACKING_URI=.*make run",
    )
    one_line_error(
        *cli(
            [
                "finetune",
                "--data",
                str(dataset),
                "--from",
                "latest",
                "--profile",
                "smoke",
                "--top-k",
                "4",
                "--experiments-dir",
                EXPERIMENTS,
            ]
        ),
        "latest: no finished pretrain run; looked in the store .* or run `fashion pretrain` first",
    )


def test_runs_in_the_checkout_while_working_elsewhere(isolated, tmp_path_factory, monkeypatch):
    """A newcomer ran `make run` in the checkout, then `fashion compare` in another folder."""
    from fashion_core.tracking import runs as tracking

    checkout = tmp_path_factory.mktemp("checkout")
    (checkout / "mlflow.db").write_bytes(b"")
    monkeypatch.setattr(tracking, "PROJECT_DIR", checkout)
    one_line_error(
        *cli(["compare", "--no-log-run"]),
        re.escape(
            f"this checkout's runs are in {checkout / 'mlflow.db'}: run from {checkout} or set "
            f"MLFLOW_TRACKING_URI=sqlite:///{checkout / 'mlflow.db'}"
        ),
    )


def test_main_yaml_ensembles_are_pairs_and_a_pair_without_its_runs_is_skipped(tmp_path, caplog):
    import pandas as pd

    from fashion_core.config.checks import ConfigError
    from fashion_core.grid.main_job import load_main_ensembles, load_main_techniques, run_main_ensembles

    assert load_main_ensembles(EXPERIMENTS) == [("finetune", "meta_only", "imprint_balanced")]
    (tmp_path / "main.yaml").write_text("pretrain: [meta_only]\nensembles:\n  finetune: [[meta_only]]\n")
    assert load_main_techniques(tmp_path) == ["pretrain/meta_only"]
    with pytest.raises(ConfigError, match="pair"):
        load_main_ensembles(tmp_path)
    (tmp_path / "main.yaml").write_text("pretrain: [meta_only]\nensemble:\n  finetune: [[a, b]]\n")
    with pytest.raises(ConfigError, match="expected the keys"):
        load_main_techniques(tmp_path)
    runs = pd.DataFrame(
        [
            {"stage": "finetune", "technique": "meta_only", "run_id": "a" * 32, "status": "FINISHED"},
            {"stage": "finetune", "technique": "imprint_balanced", "run_id": "b" * 32, "status": "FAILED"},
        ]
    )
    caplog.set_level(logging.INFO, logger="fashion_core")
    assert run_main_ensembles([("finetune", "meta_only", "imprint_balanced")], runs, None, "g" * 32) == []
    assert caplog.messages == [
        "ensemble finetune/meta_only+imprint_balanced: skipped, the grid has no finished finetune run "
        "of imprint_balanced"
    ]

"""The README's MLflow UI command: the server starts, the grid logs to it over http, `compare` reads it
back through the REST API, and headless Chromium renders the experiment page."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.browser import chromium, dump_dom
from tests.helpers.runs import recompute

# Starts a tracking server (10-40 s on 2 busy cores) and trains once (smoke profile): about a minute, in the
# default run because the issue asks that the README's UI command be tested in CI.

pytestmark = pytest.mark.integration  # an `mlflow ui` server process, and headless Chromium

EXP = Path(__file__).resolve().parents[1] / "experiments"
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_command(port: int) -> list[str]:
    """The README's command (`mlflow ui` on loopback over the default sqlite store), on a free port, one worker."""
    return [
        MLFLOW,
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        "sqlite:///mlflow.db",
        "--workers",
        "1",
    ]


def page_text(dom: str) -> str:
    """The visible text of a DOM: no scripts, styles, tags or comments (React splits text with comments)."""
    text = re.sub(r"<(script|style)\b.*?</\1>|<!--.*?-->", "", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow ui` in a folder of its own; stopped (its process group) at the end."""
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    log = open(root / "server.log", "w")
    # The GenAI job runner (seven extra worker processes) is not needed to browse runs; it only slows the start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        ui_command(port), cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow ui did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def grid_over_http(server, dataset, tmp_path_factory):
    """A one-technique grid and its compare report, both through the tracking server."""

    from fashion_core.grid.plan import plan_grid
    from fashion_core.grid.scheduler import run_grid
    from fashion_core.report.compare import run_compare

    url, _ = server
    work = tmp_path_factory.mktemp("client")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", url)
        mp.setenv("FASHION_CACHE", str(work / "cache"))
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(work)  # nothing may be written here: runs and artifacts go to the server
        mp.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)  # the env variable decides
        tasks = plan_grid(
            EXP, ["pretrain/baseline"], seeds=[0], profile="smoke", overrides={"data.top_k": 4, "train.epochs": 1}
        )
        res = run_grid(tasks, str(dataset), profile="smoke", seeds=[0], register=False)
        rep = run_compare(out=work / "report")
        numbers = {r: recompute(r, work / "dl") for r in res.runs["run_id"]}
        yield res, rep, numbers, work


def test_server_lists_the_grid_runs_and_compare_reads_them(server, grid_over_http):
    url, root = server
    res, rep, numbers, work = grid_over_http
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()
    assert (root / "mlflow.db").is_file() and (root / "mlartifacts").is_dir()  # stored by the server
    found = get_json(url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [res.experiment_id], "max_results": 100})[
        "runs"
    ]
    names = {r["info"]["run_name"]: r for r in found}
    assert {"grid/smoke/seeds0", "baseline · s0"} <= set(names)
    child = names["baseline · s0"]
    tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == res.parent_run_id and child["info"]["status"] == "FINISHED"
    assert child["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    # compare pulled the same runs through the server, and its numbers are the predictions'.
    assert rep.scope.grid_run_id == res.parent_run_id
    assert set(rep.tables.runs["run_id"]) == set(res.runs["run_id"])
    long = rep.tables.per_class_runs
    for run_id, truth in numbers.items():
        mine = long[(long["run_id"] == run_id) & (long["n_test"] > 0)].set_index("class")
        assert np.allclose(mine["top1"], truth.loc[mine.index, "top1"])
        assert np.allclose(mine["top5"], truth.loc[mine.index, "top5"])
    assert "compare/grid-" + res.parent_run_id[:8] in {
        r["info"]["run_name"]
        for r in get_json(url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [res.experiment_id]})["runs"]
    }


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian package `chromium`)")
def test_chromium_renders_the_experiment_page(server, grid_over_http, tmp_path):
    url, _ = server
    res = grid_over_http[0]
    n_runs = len(get_json(url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [res.experiment_id]})["runs"])
    dom, _ = dump_dom(f"{url}/#/experiments/{res.experiment_id}/runs", tmp_path / "chromium", budget_ms=30000)
    text = page_text(dom)
    assert "grid/smoke/seeds0" in text  # the parent row; its children are nested under it
    assert f"{n_runs} matching runs" in text, text[:3000]
    assert "fashion-mini" in text  # one experiment per dataset, named after it


def test_experiment_is_model_development_and_training_runs_carry_their_dataset(server, grid_over_http):
    url, _ = server
    res = grid_over_http[0]
    exp = get_json(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={res.experiment_id}")["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    found = get_json(url + "/api/2.0/mlflow/runs/search", {"experiment_ids": [res.experiment_id]})["runs"]
    child = next(r for r in found if r["info"]["run_name"] == "baseline · s0")
    inputs = child["inputs"]["dataset_inputs"]
    tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
    assert [(d["dataset"]["name"], d["dataset"]["digest"]) for d in inputs] == [
        ("fashion-mini", tags["dataset_digest"])
    ]


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (Debian package `chromium`)")
def test_chromium_opens_the_printed_link_on_the_training_runs(server, grid_over_http, tmp_path):
    from fashion_core.tracking.runs import runs_page

    url, _ = server
    res = grid_over_http[0]
    dom, _ = dump_dom(runs_page(res.experiment_id, url), tmp_path / "chromium", budget_ms=30000)
    text = page_text(dom)
    assert text.lstrip().startswith(f"Runs - Experiment {res.experiment_id}"), text[:500]  # not the GenAI overview
    assert "grid/smoke/seeds0" in text and "matching runs" in text and " Dataset " in text, text[:3000]

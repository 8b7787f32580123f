"""The one module that talks to MLflow: system metrics on every run."""

from __future__ import annotations

import time

import pytest

from fashion_core.tracking import runs as tracking
from tests.helpers.store import module_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (a new sqlite store costs seconds of migrations)."""
    with module_store(tmp_path_factory, "tracking") as (root, _):
        tracking.set_experiment("tracking")  # not the experiment another module's store left active
        yield root


def test_every_run_logs_system_metrics(store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")  # the tests' default is off; a real run's is on
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    assert tracking.system_metrics_enabled() is True
    client = MlflowClient()
    with tracking.start_run("pretrain", "baseline", "d" * 16, run_name="sys") as run:
        deadline = time.monotonic() + 60  # the sampler's first sample; seconds on a loaded machine
        while "system/cpu_utilization_percentage" not in client.get_run(run.info.run_id).data.metrics:
            assert time.monotonic() < deadline, "no system metrics sample within 60 s"
            time.sleep(0.2)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_the_mlflow_switch_turns_system_metrics_off(store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    assert tracking.system_metrics_enabled() is None  # conftest set MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false
    with tracking.start_run("pretrain", "baseline", "d" * 16, run_name="quiet") as run:
        time.sleep(0.6)
    assert not [k for k in MlflowClient().get_run(run.info.run_id).data.metrics if k.startswith("system/")]

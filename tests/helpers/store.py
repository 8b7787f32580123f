"""A test's own MLflow store, cache folder and working directory."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


def isolate(path: Path, mp: pytest.MonkeyPatch) -> None:
    """Point MLflow, the image cache and the working directory at ``path`` (undone with ``mp``)."""
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    mp.setenv("FASHION_CACHE", str(path / "cache"))
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # on in real runs; tests/test_tracking.py checks it
    # what `mlflow run` hands its child, and what mlflow.set_experiment exports into os.environ in earlier tests
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        mp.delenv(var, raising=False)
    mp.chdir(path)
    # A test that called mlflow.set_tracking_uri() would win over the env variable: clear it, restore after.
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp.setattr(tracking_utils, "_tracking_uri", None)
    # Nor may an earlier test's mlflow.set_experiment (an experiment id of another store) pick this store's experiment.
    import mlflow.tracking.fluent as fluent

    mp.setattr(fluent, "_active_experiment_id", None)


@contextlib.contextmanager
def module_store(tmp_path_factory, name: str = "store"):
    """Like the ``isolated`` fixture, for a whole test module (a new sqlite store costs seconds of migrations);
    yields (path, mp)."""
    import mlflow

    path = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        isolate(path, mp)
        yield path, mp
        while mlflow.active_run():
            mlflow.end_run()

"""A test's own MLflow store, cache folder and working directory."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

import pytest

# A migrated, empty MLflow sqlite store, made once per test process and kept in memory (MLflow's migrations take
# seconds per store).
_SCHEMA: dict[str, sqlite3.Connection] = {}


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
    # A new sqlite store gets its tables by copying a migrated empty one, not by running the migrations again.
    import mlflow.store.db.utils as db_utils

    if hasattr(db_utils, "_initialize_tables"):
        real = getattr(db_utils._initialize_tables, "__wrapped__", db_utils._initialize_tables)
        mp.setattr(db_utils, "_initialize_tables", _tables_from_schema(real))


def _tables_from_schema(initialize):
    """MLflow's ``_initialize_tables(engine)`` for sqlite as a copy of a store that ``initialize`` (the real one)
    migrated once in this process; other databases as before. The copy holds no experiment: MLflow then creates the
    Default experiment with this store's own artifact folder, as on a store it had just migrated."""

    def initialize_from_schema(engine) -> None:
        if engine.dialect.name != "sqlite":
            return initialize(engine)
        import sqlalchemy

        if "db" not in _SCHEMA:
            with tempfile.TemporaryDirectory(prefix="mlflow-schema-") as folder:
                template = sqlalchemy.create_engine(f"sqlite:///{folder}/schema.db")
                try:
                    initialize(template)
                finally:
                    template.dispose()
                memory = sqlite3.connect(":memory:", check_same_thread=False)
                with contextlib.closing(sqlite3.connect(f"{folder}/schema.db")) as db:
                    db.backup(memory)
            _SCHEMA["db"] = memory
        with engine.connect() as conn:
            _SCHEMA["db"].backup(conn.connection.driver_connection)

    initialize_from_schema.__wrapped__ = initialize  # type: ignore[attr-defined]
    return initialize_from_schema


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

"""Where the tracking store is, checked before anything opens it: a read-only command creates no store."""

from __future__ import annotations

import os
from pathlib import Path

from fashion_core.config.checks import ConfigError
from fashion_core.tracking import runs


def sqlite_store() -> Path | None:
    """The file of the tracking store when it is a local sqlite one (None for a server or other store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"  # MLflow's own default
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0]).expanduser()


def require_store(what: str) -> None:
    """A read-only command never creates a store: a sqlite file that does not exist is a one-line error."""
    db = sqlite_store()
    if db is None or db.is_file():
        return
    project = runs.PROJECT_DIR  # read at call time: the checkout this code runs from
    ours = project / "mlflow.db"
    where = (
        f"this checkout's runs are in {ours}: run from {project} or set MLFLOW_TRACKING_URI=sqlite:///{ours}"
        if ours.is_file() and ours.resolve() != db.resolve()
        else "run from the folder that holds your mlflow.db or set MLFLOW_TRACKING_URI=sqlite:////path/to/mlflow.db "
        "(or http://host:5000)"
    )
    raise ConfigError(f"no MLflow store at {db.resolve()}, so no {what}; {where}")


def store_line() -> str:
    """Where runs would go, for a dry run (which opens nothing)."""
    db = sqlite_store()
    if db is None:
        return f"store: {os.environ.get('MLFLOW_TRACKING_URI')}"
    return f"store: sqlite:///{db.resolve()} ({'exists' if db.is_file() else 'would be created'})"

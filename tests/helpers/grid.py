"""Grid helpers: the tiny grid's settings, its per-cell numbers, a recorded status, and a worker killed mid-cell."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

EXP = Path(__file__).resolve().parents[2] / "experiments"
TINY = {"data.top_k": 4, "train.epochs": 1}


def kill_first_running_cell(stop: threading.Event, killed: list) -> None:
    """Wait for a grid's pretrain cell to be RUNNING, then SIGKILL its worker process (the run's tag worker_pid).

    For the grid tests that kill a worker in the middle of a cell (a Ray worker or a --jobs pool worker);
    ``killed`` gets the run id, ``stop`` ends the wait.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    while not stop.is_set():
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
                pid = run.data.tags.get("worker_pid")
                if pid and run.data.tags.get("stage") == "pretrain" and int(pid) != os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(run.info.run_id)
                    return
        time.sleep(0.2)


def run_grid_killing_one_cell(tasks, dataset, **grid_options):
    """``run_grid`` while ``kill_first_running_cell`` kills one pretrain cell's worker, and the checks every such
    grid must pass: the killed attempt ends KILLED, every cell FINISHED exactly once, and the killed attempt is not a
    cell's result. Returns the grid's result and its child runs."""
    from mlflow.tracking import MlflowClient

    from fashion_core.grid.scheduler import run_grid

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_running_cell, args=(stop, killed), daemon=True)
    killer.start()
    try:
        res = run_grid(tasks, str(dataset), register=False, **grid_options)
    finally:
        stop.set()
    client = MlflowClient()
    assert len(killed) == 1, "no cell was seen running, so none was killed"
    assert client.get_run(killed[0]).info.status == "KILLED"
    assert (res.runs["status"] == "FINISHED").all() and len(res.runs) == len(tasks)
    children = client.search_runs([res.experiment_id], f"tags.grid_run_id = '{res.parent_run_id}'")
    finished = [r.data.tags["config_hash"] for r in children if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(res.runs["config_hash"])  # every cell FINISHED exactly once
    assert killed[0] not in set(res.runs["run_id"])  # the killed attempt is not the cell's result
    return res, children


def cell_numbers(res) -> dict:
    """Per cell (stage, technique, seed): its logged metrics except timings, and its source's technique/seed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    by_id = {r["run_id"]: (r["technique"], r["seed"]) for _, r in res.runs.iterrows()}
    out = {}
    for _, r in res.runs.iterrows():
        metrics = client.get_run(r["run_id"]).data.metrics
        out[(r["stage"], r["technique"], r["seed"])] = (
            {k: v for k, v in metrics.items() if "second" not in k and not k.startswith("system/")},
            by_id.get(r["source_run_id"]),
        )
    return out


def record_status(monkeypatch) -> list[dict]:
    """Make ``run_grid``'s status record its counts after every change; returns the list it fills."""
    from fashion_core.grid.status import GridStatus

    seen: list[dict] = []

    class Recording(GridStatus):
        def update(self, name, state, seconds=None):
            super().update(name, state, seconds)
            seen.append(self.counts())

    monkeypatch.setattr("fashion_core.grid.scheduler.GridStatus", Recording)
    return seen

"""A grid's cells and its MLflow runs: the parent run, one child run per cell, a failed cell's record.

A :class:`Cell` is one task ready to run (picklable, no images); :func:`run_cell` runs it in the
grid's process, a local worker or a Ray worker alike and returns its row of ``RUN_COLUMNS``.
``grid.run_grid`` schedules the cells and starts and finishes the parent run with the helpers here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import to_dict
from fashion_core.data.prepared import prepare_data
from fashion_core.engine.console import console
from fashion_core.grid.claims import (
    CELL_KEY_TAG,
    CONTINUED_BY_TAG,
    CONTINUES_TAG,
    GRID_KEY_TAG,
    SESSION_TAG,
    claim_cell,
)
from fashion_core.grid.claims import reopen as reopen_run
from fashion_core.grid.executors import worker_place
from fashion_core.grid.plan import IMAGE, STAGE_ORDER, GridTask, model_kind, needs_source
from fashion_core.report.tables import markdown_table
from fashion_core.runners.stage import run_stage
from fashion_core.tracking import heartbeat
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import best_val_score, run_name
from fashion_core.tracking.versions import git_commit

if TYPE_CHECKING:
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

RUNS_ARTIFACT = tracking.GRID_RUNS_ARTIFACT
SOURCE_ARTIFACT = "grid/source.json"
PLAN_ARTIFACT = "grid/plan.json"
WAITING = "WAITING"  # a row's status while another live grid runs the cell (never in a finished grid's table)
RUN_COLUMNS = (
    "stage",
    "technique",
    "seed",
    "kind",
    "run_id",
    "status",
    "reused",
    "seconds",
    "config_hash",
    "source_run_id",
    "test_top1_mean",
    "val_top1_best",
    "error",
    "host",
    "worker",
    "device",
)


# ---------------------------------------------------------------- the grid's runs


def mlflow_client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def start_parent(
    experiment_id: str,
    digest: str,
    code: str,
    tasks: Sequence[GridTask],
    profile: str,
    seeds: Sequence[int],
    params: Mapping[str, Any],
    key: str = "",
    reopen: str | None = None,
) -> str:
    """Create the parent run (not made active: the children are started by ``run_stage`` meanwhile).

    ``key`` is the grid's ``grid_claims.grid_key``; ``reopen``: an ended grid run of that key, continued
    instead of a new one (or, under ``mlflow run``, linked from the launched run).
    """
    commit, dirty = git_commit()
    techniques = sorted(
        {f"{t.cfg.stage}/{t.cfg.technique}" for t in tasks}, key=lambda s: (STAGE_ORDER.index(s.split("/")[0]), s)
    )
    seed_text = ",".join(str(s) for s in seeds)
    tags = {
        "stage": "grid",
        "technique": "grid",
        "dataset_digest": digest,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": str(dirty).lower(),
        "profile": profile,
        "seeds": seed_text,
        "code_version": code,
        "mlflow.note.content": (
            f"Technique grid, profile `{profile}`, seeds {seed_text}: {len(tasks)} runs of {', '.join(techniques)}."
        ),
    }
    if key:
        tags[GRID_KEY_TAG] = key
    tags.update(heartbeat.run_tags())
    client = mlflow_client()
    name = f"grid/{profile}/seeds{seed_text}"
    # Under `mlflow run . -e grid` the run MLflow made for this process becomes the parent; it is taken
    # out of the environment so that the children and later runs do not adopt it too.
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    if launched:
        run_id = launched
        if reopen:  # the launched run is this command's run: the old one is linked, not continued
            tags[CONTINUES_TAG] = reopen
            client.set_tag(reopen, CONTINUED_BY_TAG, run_id)
            logger.info(f"grid run {reopen} of the same grid ended unfinished; this grid run continues it")
        client.set_tag(run_id, "mlflow.runName", name)
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    elif reopen:
        run_id = reopen
        why = client.get_run(run_id).data.tags.get(heartbeat.REASON_TAG, client.get_run(run_id).info.status)
        restarts = reopen_run(run_id, tags)
        logger.info(f"continuing grid run {run_id} of the same grid (it had ended: {why}); restart {restarts}")
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    logged = client.get_run(run_id).data.params  # `mlflow run` logged its entry point's parameters already
    for k, v in params.items():
        if k not in logged:
            client.log_param(run_id, k, str(v)[:6000])
    return run_id


def _record_failure(
    task: GridTask, cfg_hash: str, digest: str, code: str, experiment_id: str, parent: str, error: str
) -> str:
    """The FAILED child run of a technique: the one ``run_stage`` opened, else a new one holding the error."""
    client = mlflow_client()
    found = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.config_hash = '{cfg_hash}' and tags.grid_run_id = '{parent}'"),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:  # it failed before a run existed (e.g. no pretrained model to start from)
        commit, dirty = git_commit()
        tags = {
            "stage": task.cfg.stage,
            "technique": task.cfg.technique,
            "dataset_digest": digest,
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            "git_dirty": str(dirty).lower(),
            "config_hash": cfg_hash,
            "grid_run_id": parent,
            "mlflow.parentRunId": parent,
            "code_version": code,
            "seed": str(task.cfg.train.seed),
            "mlflow.note.content": f"Failed before training: {error}",
        }
        run_id = client.create_run(experiment_id, run_name=run_name(task.cfg), tags=tags).info.run_id
    client.set_tag(run_id, "error", error[:5000])
    client.log_text(run_id, error, "error.txt")
    if client.get_run(run_id).info.status not in ("FAILED", "KILLED"):
        client.set_terminated(run_id, "FAILED")
    return run_id


def task_row(
    task: GridTask,
    run_id: str | None,
    status: str,
    reused: bool,
    seconds: float,
    cfg_hash: str,
    source: str | None,
    error: str = "",
) -> dict:
    """A row of ``RUN_COLUMNS`` (where it ran is added by ``run_cell``)."""
    top1 = val = float("nan")
    if run_id and status == "FINISHED":
        top1 = mlflow_client().get_run(run_id).data.metrics.get("test_top1_mean", float("nan"))
        val = best_val_score(run_id)
    return {
        "stage": task.cfg.stage,
        "technique": task.cfg.technique,
        "seed": task.cfg.train.seed,
        "kind": model_kind(task.cfg),
        "run_id": run_id,
        "status": status,
        "reused": reused,
        "seconds": round(seconds, 1),
        "config_hash": cfg_hash,
        "source_run_id": source or "",
        "test_top1_mean": top1,
        "val_top1_best": val,
        "error": error,
        "host": "",
        "worker": "",
        "device": "",
    }


def finish_parent(
    parent: str,
    rows: list[dict],
    sources: Mapping[str, str | None],
    rankings: pd.DataFrame,
    seconds: float,
    status: str,
) -> pd.DataFrame:
    """Log the runs table, the source choices and the counts to the parent run, then end it."""
    client = mlflow_client()
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    client.log_text(parent, runs.to_csv(index=False), RUNS_ARTIFACT)
    client.log_text(
        parent,
        json.dumps({"sources": sources, "candidates": rankings.to_dict("records")}, indent=1, default=str),
        SOURCE_ARTIFACT,
    )
    counts = {
        "n_runs": len(runs),
        "n_finished": int((runs["status"] == "FINISHED").sum()),
        "n_failed": int((runs["status"] == "FAILED").sum()),
        "n_reused": int(runs["reused"].sum()),
        "grid_seconds": seconds,
    }
    for k, v in counts.items():
        client.log_metric(parent, k, float(v))
    if sources.get(IMAGE):
        client.set_tag(parent, "source_run_id", sources[IMAGE])
    note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
    table = markdown_table(runs[["stage", "technique", "seed", "status", "reused", "test_top1_mean"]])
    client.set_tag(
        parent,
        "mlflow.note.content",
        f"{note}\n\nFinished {counts['n_finished']}, failed {counts['n_failed']}, "
        f"reused {counts['n_reused']} in {seconds:.0f} s.\n\n{table}",
    )
    client.set_terminated(parent, status)
    return runs


@dataclass(frozen=True)
class Cell:
    """One task ready to run: its source and identity, and where it logs; picklable, no images.

    ``run_cell`` runs it in the grid's process, a local worker or a Ray worker alike.
    """

    index: int
    task: GridTask
    source: str | None
    cfg_hash: str
    data: str | None
    exp_name: str
    experiment_id: str
    parent: str
    digest: str
    code: str
    register: bool = True
    libs: str = ""
    session: str = ""  # this grid invocation (``grid_claims.SESSION_TAG``): its own dead attempts are closed at once
    cell_key: str = ""  # ``grid_claims.cell_key``: the cell's identity across grids
    profile: str = ""  # the grid's profile, a tag of every cell's run


_PREPARED: dict[tuple, Any] = {}  # per worker process: the data is prepared (the cache opened) once


def _prepared_for(cell: Cell):
    key = (cell.data, json.dumps(to_dict(cell.task.cfg.data), sort_keys=True))
    if key not in _PREPARED:
        _PREPARED[key] = prepare_data(cell.data, cell.task.cfg.data)
    return _PREPARED[key]


def _close_dead_attempts(cell: Cell) -> Run | None:
    """Before a cell runs: an earlier attempt's FINISHED run is the result; a RUNNING one (its worker died) is KILLED.

    A grid invocation runs a cell again only when Ray or the pool retries it after losing its worker; this
    keeps every cell at one FINISHED run. A RUNNING attempt of another invocation of the same grid (one
    that crashed, whose worker may still be finishing it) is left to ``grid_claims.claim_cell``.
    """
    client = mlflow_client()
    found = client.search_runs(
        [cell.experiment_id],
        filter_string=(f"tags.config_hash = '{cell.cfg_hash}' and tags.grid_run_id = '{cell.parent}'"),
    )
    for run in found:
        if run.info.status == "FINISHED":
            return run
    for run in found:
        if run.info.status == "RUNNING" and run.data.tags.get(SESSION_TAG, "") == cell.session:
            client.set_tag(run.info.run_id, "error", "its worker died; the cell was retried")
            client.set_tag(run.info.run_id, heartbeat.REASON_TAG, "its worker died; the cell was retried")
            client.set_terminated(run.info.run_id, "KILLED")
    return None


@contextlib.contextmanager
def _claim_held(run_id: str):
    """Beat the claimed run; an interrupt before its stage run started (reading the data) ends it KILLED."""
    try:
        with heartbeat.beating(run_id):
            yield
    except KeyboardInterrupt:
        client = mlflow_client()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
        raise


def _claim_run(cell: Cell) -> str:
    """The cell's run, created before the data is read: the claim other grids see (``grid_claims.claim_cell``)."""
    task = cell.task
    tags = {
        "stage": task.cfg.stage,
        "technique": task.cfg.technique,
        "dataset_digest": cell.digest,
        "config_hash": cell.cfg_hash,
        "grid_run_id": cell.parent,
        "mlflow.parentRunId": cell.parent,
        "code_version": cell.code,
        "seed": str(task.cfg.train.seed),
        CELL_KEY_TAG: cell.cell_key,
        SESSION_TAG: cell.session,
        **heartbeat.run_tags(),
    }
    return mlflow_client().create_run(cell.experiment_id, run_name=run_name(task.cfg), tags=tags).info.run_id


def run_cell(cell: Cell, prepared=None, worker: bool = True) -> dict:
    """Run one cell as a child run of the grid (or record its failure); returns its row of ``RUN_COLUMNS``.

    ``worker``: in a worker process (``--jobs``, Ray), whose logging nothing has set up: the package's messages are
    shown on its stdout (its warnings on its stderr) while the cell runs, every line starting with the cell's name
    (``executors.CELL_LINE``). The grid's own process (``worker=False``) shows them as its application set up.
    """
    task, place = cell.task, worker_place()
    if worker:
        with console(prefix=f"[{task.name}] "):
            return run_cell(cell, prepared, worker=False)
    t1 = time.perf_counter()
    try:
        earlier = _close_dead_attempts(cell)
        if earlier is not None:
            logger.info(f"  an earlier attempt finished: run {earlier.info.run_id}")
            return {**task_row(task, earlier.info.run_id, "FINISHED", False, 0.0, cell.cfg_hash, cell.source), **place}
        if needs_source(task.cfg) and not cell.source:
            raise ConfigError(
                f"no finished pretrain run of this model kind ({model_kind(task.cfg)}) to start from; pass --from"
            )
        claim, holder = None, None
        if cell.cell_key:
            claim, holder = claim_cell(cell.experiment_id, cell.cell_key, lambda: _claim_run(cell))
        if holder is not None:  # another live grid runs this cell: the grid waits for it (grid.run_grid)
            logger.info(f"  another grid is running this cell: run {holder}")
            return {**task_row(task, holder, WAITING, False, 0.0, cell.cfg_hash, cell.source), **place}
        with contextlib.ExitStack() as stack:
            if claim is not None:
                stack.enter_context(_claim_held(claim))
                stack.enter_context(tracking.claimed_run(claim, cell.parent))
            prepared = prepared or _prepared_for(cell)
            run_id = run_stage(
                task.cfg,
                cell.data,
                source=cell.source,
                experiment=cell.exp_name,
                parent_run_id=cell.parent,
                register=cell.register,
                prepared=prepared,
                tags={
                    "config_hash": cell.cfg_hash,
                    "grid_run_id": cell.parent,
                    "code_version": cell.code,
                    "library_versions": cell.libs,
                    "host": place["host"],
                    "worker_pid": os.getpid(),
                    **({"profile": cell.profile} if cell.profile else {}),
                },
            )
        row = task_row(task, run_id, "FINISHED", False, time.perf_counter() - t1, cell.cfg_hash, cell.source)
    except Exception as e:  # one technique failing must not stop the grid
        error = f"{type(e).__name__}: {e}"
        logger.warning(f"  FAILED: {error}")
        row = cell_failed(cell, error + "\n\n" + traceback.format_exc(), time.perf_counter() - t1)
    return {**row, **place}


def cell_failed(cell: Cell, error: str, seconds: float) -> dict:
    """The FAILED row (and child run) of a cell."""
    failed = _record_failure(cell.task, cell.cfg_hash, cell.digest, cell.code, cell.experiment_id, cell.parent, error)
    return task_row(cell.task, failed, "FAILED", False, seconds, cell.cfg_hash, cell.source, error.split("\n\n")[0])

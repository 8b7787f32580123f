"""The technique grid: every ``experiments/`` config as a child run of one parent ``stage=grid`` run.

Pretrain techniques run first (every seed), then the finetune techniques start from a
pretrained model: ``--from`` when given, else the grid's own best pretrain run of their model
kind (image network, or fused network with the same metadata encoders) by *validation*
class-mean top-1 (the test split never selects). A technique whose finished run has the same
resolved config (hash tagged ``config_hash``), dataset digest and code (git commit, plus a hash
of uncommitted changes and of the numeric libraries' versions; tag ``code_version``; never when
the commit is unknown) is reused instead of rerun; a technique that
fails is recorded as a FAILED child run and the grid goes on. The parent run lists every child
in ``grid/runs.csv``; ``runners.stage.run_stage`` runs each technique (and dispatches the
metadata-only baseline to its own runner). The plan is ``grid_plan``'s, the cells and their runs
``grid_cells``'; this module schedules them.

A crash leaves nothing RUNNING for long: every run beats (``heartbeat``), and a grid first ends the
experiment's runs whose process died. Rerunning a grid that did not finish continues its grid run; a cell
that another live grid runs already (same cell key) is waited for and reused (``grid_claims``).

    fashion grid --profile quick --seeds 0 --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fashion_core.config.checks import ConfigError
from fashion_core.data.prepared import Prepared, prepare_data

# The plan and the cells live in grid_plan and grid_cells; callers import them from here (as before the split).
from fashion_core.grid.cells import (
    PLAN_ARTIFACT,
    RUN_COLUMNS,
    WAITING,
    Cell,
    cell_failed,
    finish_parent,
    mlflow_client,
    run_cell,
    start_parent,
    task_row,
)
from fashion_core.grid.claims import cell_key, finished_in, grid_key, holder_state, unfinished_grid
from fashion_core.grid.eta import cell_costs
from fashion_core.grid.executors import InlineExecutor, RayExecutor, local_pool, stop_pool
from fashion_core.grid.plan import IMAGE, GridTask, config_hash, model_kind, needs_source, pick_best_pretrain
from fashion_core.grid.status import GridStatus
from fashion_core.tracking import heartbeat
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.references import resolve_source

# Run lookups live in tracking, the code version in versions; callers and tests import them from here too
# (and patch grid.code_version).
from fashion_core.tracking.runs import find_reusable
from fashion_core.tracking.versions import code_version, library_versions, reusable_version

logger = logging.getLogger(__name__)

STATUS_POLL_SECONDS = 0.5  # how often the status asks the workers which cells they have started


@dataclass
class GridResult:
    """What a grid did: the parent run, one row per task (``RUN_COLUMNS``), the finetune sources.

    ``source_run_id`` is the image networks' pretrained model; ``sources`` maps every model kind
    (see :func:`model_kind`) to the pretrain run its finetune techniques started from.
    """

    parent_run_id: str
    runs: pd.DataFrame
    source_run_id: str | None = None
    seconds: float = 0.0
    experiment_id: str = ""
    sources: dict = field(default_factory=dict)
    rankings: pd.DataFrame = field(default_factory=pd.DataFrame)


def run_grid(
    tasks: Sequence[GridTask],
    data: str | None,
    *,
    source: str | None = None,
    experiment: str | None = None,
    reuse: bool = True,
    register: bool = True,
    profile: str = "",
    seeds: Sequence[int] | None = None,
    jobs: int = 1,
    gpus_per_cell: float = 0.0,
    ray: str | None = None,
    cpus_per_cell: float = 1,
    max_retries: int = 2,
    threads_per_cell: int | None = None,
    show_status: bool = False,
) -> GridResult:
    """Run the tasks as child runs of one parent ``stage=grid`` run.

    Args:
        tasks: from :func:`plan_grid` (pretrain tasks before finetune ones).
        data: the ``--data`` value.
        source: the finetune techniques' pretrained model (run id, runs:/, models:/ or latest);
            None: per model kind (:func:`model_kind`), the grid's best pretrain run of that kind by
            validation class-mean top-1, or ``latest`` when the grid runs no pretrain technique.
        experiment: MLflow experiment (default: one per dataset, as the stages do).
        reuse: reuse a FINISHED run of the same config hash, dataset digest and code version (commit, changes,
            library versions; never an unknown one).
        register: register pretrain models (``fashion-pretrain``, alias @best follows validation).
        profile, seeds: recorded on the parent run.
        jobs: cells at once in local worker processes (1: one after another in this process); a cell
            whose worker process dies reruns in a rebuilt pool, ``max_retries`` times.
        threads_per_cell: a local worker's torch threads (default: the cores divided by ``jobs``).
        gpus_per_cell: with ``jobs`` or ``ray``, the GPUs of a cell (0.25: four cells share one).
        ray: ``auto`` or a cluster address: every cell a Ray task (``cpus_per_cell``, ``gpus_per_cell``,
            retried ``max_retries`` times when its worker dies).
        show_status: a live status of the cells on stderr (``grid_status.GridStatus``).

    Every cell starts as soon as it can: cells without a source at once, a finetune cell when
    every pretrain cell of its model kind has ended (its source is then chosen as the sequential
    grid chooses it); a cell's numbers do not depend on ``jobs``.

    Returns:
        A :class:`GridResult`; failed techniques are rows with status FAILED, never an exception.
    """
    if not tasks:
        raise ConfigError("the grid has no technique to run")
    t0 = time.perf_counter()
    prepared = prepare_data(data, tasks[0].cfg.data)
    experiment_id = tracking.set_experiment(experiment or tracking.experiment_name_for(prepared.root))
    exp_name = mlflow_client().get_experiment(experiment_id).name  # under `mlflow run`, the launched run's experiment
    fixed = resolve_source(source, exp_name) if source else None  # a bad --from fails before any run
    seeds = list(seeds) if seeds is not None else sorted({t.cfg.train.seed for t in tasks})
    code = code_version()
    heartbeat.sweep(experiment_id)  # runs left RUNNING by a crash (this grid's, or anyone's) end KILLED
    session = uuid.uuid4().hex[:12]
    key = grid_key([config_hash(t.cfg) for t in tasks], prepared.digest, code, profile, seeds, source, reuse)
    ended = unfinished_grid(experiment_id, key)
    if reuse and not reusable_version(code):
        logger.info("code version unknown (not a git checkout): no finished run is reused, every technique runs")
    executor, how = _executor(jobs, gpus_per_cell, ray, cpus_per_cell, max_retries, threads_per_cell)
    if data and ray:  # Ray workers may start elsewhere: a path, not a relative one
        data = str(Path(data).resolve()) if Path(data).exists() else data
    params = {
        "profile": profile,
        "seeds": ",".join(map(str, seeds)),
        "n_tasks": len(tasks),
        "from": source or "",
        "techniques": ",".join(dict.fromkeys(f"{t.cfg.stage}/{t.cfg.technique}" for t in tasks)),
        "reuse": reuse,
        **{k: v for k, v in how.items() if k != "executor"},
    }
    libs = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    parent = start_parent(
        experiment_id,
        prepared.digest,
        code,
        tasks,
        profile,
        seeds,
        params,
        key=key,
        reopen=ended.info.run_id if ended is not None else None,
    )
    heartbeat.start(parent)
    # A continued grid's own finished cells are its result; a linked (mlflow run) grid's are reused.
    own_grids = [parent] + ([ended.info.run_id] if ended is not None and ended.info.run_id != parent else [])
    mlflow_client().log_dict(
        parent,
        {
            "cells": [
                {"index": i, "name": t.name, "kind": model_kind(t.cfg), "needs_source": needs_source(t.cfg)}
                for i, t in enumerate(tasks)
            ],
            **how,
        },
        PLAN_ARTIFACT,
    )
    logger.info(
        f"grid run {parent}: {len(tasks)} runs in experiment {exp_name!r} (dataset digest {prepared.digest}), "
        f"{how['executor']}"
    )
    status = _status(tasks, how, profile, gpus_per_cell, bool(fixed)) if show_status else None
    return _GridLoop(
        tasks=tasks,
        prepared=prepared,
        data=data,
        exp_name=exp_name,
        experiment_id=experiment_id,
        parent=parent,
        own_grids=own_grids,
        code=code,
        register=register,
        libs=libs,
        session=session,
        profile=profile,
        reuse=reuse,
        fixed=fixed,
        executor=executor,
        how=how,
        status=status,
        t0=t0,
    ).run()


@dataclass(eq=False)
class _GridLoop:
    """One grid's scheduling, once ``run_grid`` has set it up: the cells' state, shared by the steps of its loop.

    ``run`` starts the cells without a source, then waits for the cells that run, looks at the deferred ones
    (another live grid runs them) and releases the finetune cells whose source is known, until none is left;
    then it stops the executor and finishes the parent run (KILLED on Ctrl-C or SIGTERM).
    """

    tasks: Sequence[GridTask]
    prepared: Prepared
    data: str | None
    exp_name: str
    experiment_id: str
    parent: str
    own_grids: list[str]
    code: str
    register: bool
    libs: str
    session: str
    profile: str
    reuse: bool
    fixed: str | None  # the --from source of every finetune cell, resolved
    executor: Any
    how: dict
    status: GridStatus | None
    t0: float
    # a submitted cell's future -> the state the status shows (queued / running)
    shown: dict = field(init=False)
    rows: list[dict | None] = field(init=False)
    # model kind -> pretrain run, chosen when every pretrain run of it ended
    sources: dict[str, str | None] = field(init=False)
    rankings: list[pd.DataFrame] = field(init=False)
    running: dict = field(init=False)  # future -> Cell
    # cells another live grid runs: index -> (cell, that grid's run)
    deferred: dict[int, tuple[Cell, str]] = field(init=False)
    waiting: list[int] = field(init=False)
    inline: bool = field(init=False)
    poll: float = field(init=False)  # how often a deferred cell's run is looked at

    def __post_init__(self) -> None:
        self.shown = {}
        self.rows = [None] * len(self.tasks)
        self.sources = {}
        self.rankings = []
        self.running = {}
        self.deferred = {}
        self.waiting = [i for i, t in enumerate(self.tasks) if needs_source(t.cfg)]
        self.inline = self.how["executor"] == "sequential"
        self.poll = min(5.0, max(0.2, heartbeat.interval() / 4))

    def start(self, i: int, this_source: str | None) -> None:
        task = self.tasks[i]
        h = config_hash(task.cfg, this_source)
        own = finished_in(self.experiment_id, h, self.own_grids)
        if own is not None:
            logger.info(
                f"[{i + 1}/{len(self.tasks)}] {task.name}\n  finished before the restart: run {own.info.run_id}"
            )
            self.rows[i] = task_row(
                task, own.info.run_id, "FINISHED", own.data.tags.get("grid_run_id") != self.parent, 0.0, h, this_source
            )
            if self.status is not None:
                self.status.update(task.name, "finished", 0.0)
            return
        old = find_reusable(h, self.prepared.digest, self.code, self.experiment_id) if self.reuse else None
        if old is not None:
            logger.info(
                f"[{i + 1}/{len(self.tasks)}] {task.name}\n  reusing finished run {old.info.run_id} "
                "(same config, data, code and libraries)"
            )
            self.rows[i] = task_row(task, old.info.run_id, "FINISHED", True, 0.0, h, this_source)
            if self.status is not None:
                self.status.update(task.name, "reused")
            return
        cell = Cell(
            i,
            task,
            this_source,
            h,
            self.data,
            self.exp_name,
            self.experiment_id,
            self.parent,
            self.prepared.digest,
            self.code,
            self.register,
            self.libs,
            self.session,
            cell_key(h, self.prepared.digest, self.code, self.session),
            self.profile,
        )
        logger.info(f"[{i + 1}/{len(self.tasks)}] {task.name}")
        self.submit(cell)

    def submit(self, cell: Cell) -> None:
        i, task = cell.index, cell.task
        if self.inline:  # it runs now, in this process
            if self.status is not None:
                self.status.update(task.name, "running")
            self.running[self.executor.submit(run_cell, cell, self.prepared, worker=False)] = cell
            return
        try:
            future = self.executor.submit(run_cell, cell)
        except RuntimeError as e:  # a broken pool (a worker was killed) takes no more cells
            self.rows[i] = cell_failed(cell, f"{type(e).__name__}: {e}", 0.0)
            if self.status is not None:
                self.status.update(task.name, "failed")
            return
        self.running[future] = cell
        if self.status is not None:  # running only once a worker has started it (show_starts)
            self.shown[future] = "queued"
            self.status.update(task.name, "queued")

    def settle(self, cell: Cell, row: dict) -> None:
        """A cell's row came back: its result, or word that another live grid runs it (then it waits)."""
        if row["status"] == WAITING:
            self.deferred[cell.index] = (cell, row["run_id"])
            if self.status is not None:
                self.status.update(cell.task.name, "queued")
            return
        self.rows[cell.index] = row
        if self.status is not None:
            self.status.update(cell.task.name, "reused" if row["reused"] else row["status"].lower(), row["seconds"])

    def look_at_deferred(self) -> None:
        """Reuse the runs other grids finished for the deferred cells; claim again those whose run ended otherwise."""
        for i, (cell, holder) in list(self.deferred.items()):
            state = holder_state(holder)
            if state == "running":
                continue
            del self.deferred[i]
            if state == "finished":
                theirs = mlflow_client().get_run(holder).data.tags.get("grid_run_id") != self.parent
                logger.info(f"  {cell.task.name}: reusing run {holder}, which another grid finished")
                self.settle(cell, task_row(cell.task, holder, "FINISHED", theirs, 0.0, cell.cfg_hash, cell.source))
            else:
                logger.info(f"  {cell.task.name}: run {holder} ended unfinished; claiming the cell again")
                time.sleep(random.uniform(0, self.poll))  # two grids that lost a tie do not tie again
                self.submit(cell)

    def show_starts(self) -> None:
        """Show the cells a worker has started as running (and a rerun that waits again as queued).

        At most ``concurrency`` at a time: a worker may start its next cell a moment before the end
        of the previous one reaches this process.
        """
        assert self.status is not None  # called only when the status is shown
        started = self.executor.started(list(self.running))
        free = self.how["concurrency"] - sum(v == "running" for v in self.shown.values())
        for f, cell in self.running.items():
            now = self.shown.get(f)
            if now == "queued" and f in started and free > 0:
                self.shown[f], free = "running", free - 1
                self.status.update(cell.task.name, "running")
            elif now == "running" and f not in started:
                self.shown[f] = "queued"
                self.status.update(cell.task.name, "queued")

    def release(self) -> None:
        """Start the finetune cells whose source is known (every pretrain cell of their kind has ended)."""
        for i in list(self.waiting):
            kind = model_kind(self.tasks[i].cfg)
            if kind not in self.sources:
                if not self.fixed and any(
                    self.rows[j] is None
                    for j, t in enumerate(self.tasks)
                    if t.cfg.stage == "pretrain" and model_kind(t.cfg) == kind
                ):
                    continue
                self.sources[kind], ranking = (
                    (self.fixed, pd.DataFrame())
                    if self.fixed
                    else _pick_source([r for r in self.rows if r is not None], self.tasks, kind, self.exp_name)
                )
                self.rankings.append(ranking)
            self.waiting.remove(i)
            self.start(i, self.sources[kind])

    def run(self) -> GridResult:
        """Run every cell, then finish the parent run: FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
        status_ = "FAILED"
        try:
            # SIGTERM between two children must end the parent KILLED too, not leave it RUNNING.
            with tracking._sigterm_as_interrupt():
                self.loop()
            status_ = "FINISHED"
        except KeyboardInterrupt:
            status_ = "KILLED"
            raise
        finally:
            runs, seconds, ranked = self.finish(status_)
        logger.info(
            f"grid {self.parent} done in {seconds:.0f} s: {int((runs['status'] == 'FINISHED').sum())} finished, "
            f"{int((runs['status'] == 'FAILED').sum())} failed, {int(runs['reused'].sum())} reused"
        )
        return GridResult(
            parent_run_id=self.parent,
            runs=runs,
            source_run_id=self.sources.get(IMAGE),
            seconds=seconds,
            experiment_id=self.experiment_id,
            sources=self.sources,
            rankings=ranked,
        )

    def loop(self) -> None:
        """Start the cells without a source, then every other one as soon as it can, until none runs or waits."""
        for i, task in enumerate(self.tasks):
            if not needs_source(task.cfg):
                self.start(i, None)
        self.release()
        looked = time.monotonic()
        while self.running or self.deferred:
            for f in self.ended():
                self.collect(f)
            if self.deferred and time.monotonic() - looked >= self.poll:
                looked = time.monotonic()
                self.look_at_deferred()
            self.release()
            if self.status is not None and not self.inline:
                self.show_starts()

    def ended(self) -> set:
        """The running cells' futures that are done (the set may be empty).

        Waits for the first at most until the status or a deferred cell is next looked at; a grid with only
        deferred cells sleeps a poll.
        """
        if self.running:
            wait = STATUS_POLL_SECONDS if self.status is not None else None
            if self.deferred:
                wait = min(wait or self.poll, self.poll)
            done, _ = cf.wait(list(self.running), timeout=wait, return_when=cf.FIRST_COMPLETED)
        else:
            time.sleep(self.poll)
            done = set()
        return done

    def collect(self, f: cf.Future) -> None:
        """A running cell ended: its row, or a FAILED one when its worker died."""
        cell = self.running.pop(f)
        self.shown.pop(f, None)
        try:
            row = f.result()
        except Exception as e:  # the worker itself died (a cell's own errors come back as rows)
            error = f"{type(e).__name__}: {e}"
            logger.warning(f"  {cell.task.name} FAILED: {error}")
            row = cell_failed(cell, error, 0.0)
        self.settle(cell, row)

    def finish(self, status_: str) -> tuple[pd.DataFrame, float, pd.DataFrame]:
        """Stop the executor (at once unless every cell ended), finish the parent run; its runs, seconds, rankings."""

        if status_ == "FINISHED" or self.inline:
            self.executor.shutdown(wait=True)
        elif hasattr(self.executor, "_processes"):  # a local pool: its workers are stopped (their runs end KILLED)
            stop_pool(self.executor)
        else:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.status is not None:
            self.status.close()
        seconds = time.perf_counter() - self.t0
        ranked = pd.concat(self.rankings, ignore_index=True) if self.rankings else pd.DataFrame()
        try:
            runs = finish_parent(
                self.parent, [r for r in self.rows if r is not None], self.sources, ranked, seconds, status_
            )
        finally:
            heartbeat.stop(self.parent)
        return runs, seconds, ranked


def _status(
    tasks: Sequence[GridTask], how: dict, profile: str, gpus_per_cell: float, source_given: bool = False
) -> GridStatus:
    """The live status of a grid's cells, with each cell's relative cost for the ETA (``--from``: no cell waits)."""
    import torch

    gpu = gpus_per_cell > 0 or (how["executor"] == "sequential" and torch.cuda.is_available())
    return GridStatus(
        [t.name for t in tasks], how["concurrency"], costs=cell_costs(tasks, profile, gpu, source_given=source_given)
    )


def _executor(
    jobs: int,
    gpus_per_cell: float,
    ray: str | None,
    cpus_per_cell: float,
    max_retries: int,
    threads_per_cell: int | None = None,
):
    """The executor of the cells and what it gives each (logged on the parent run as the plan)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if ray:
        ex = RayExecutor(ray, cpus_per_cell, gpus_per_cell, max_retries)
        return ex, {"executor": f"Ray cluster {ray} ({ex.info['nodes']} nodes)", **ex.info}
    if jobs == 1:
        return InlineExecutor(), {"executor": "sequential", "jobs": 1, "concurrency": 1}
    pool, info = local_pool(jobs, gpus_per_cell, threads_per_cell=threads_per_cell, max_retries=max_retries)
    return pool, {
        "executor": f"{info['jobs']} local worker processes, {info['threads_per_cell']} threads each"
        + (f", {gpus_per_cell} GPU each" if gpus_per_cell else ""),
        "concurrency": info["jobs"],
        **info,
    }


def _pick_source(
    rows: list[dict], tasks: Sequence[GridTask], kind: str, exp_name: str
) -> tuple[str | None, pd.DataFrame]:
    """The source of a model kind without ``--from``: the grid's best pretrain run of it, else ``latest``."""
    src, ranking = pick_best_pretrain(pd.DataFrame(rows, columns=list(RUN_COLUMNS)), kind)
    if src:
        best = ranking.iloc[0]
        logger.info(
            f"{kind} finetune techniques start from pretrain run {src}: best validation class-mean top-1 "
            f"{best['val_top1_best']:.4f} ({best['technique']}, seed {best['seed']})"
        )
    elif kind == IMAGE and not any(t.cfg.stage == "pretrain" for t in tasks):
        try:
            src = resolve_source("latest", exp_name)
            logger.info(f"image finetune techniques start from the latest finished pretrain run {src}")
        except ConfigError as e:
            logger.info(f"no pretrained model for the finetune techniques: {e}")
    else:
        logger.info(f"no finished {kind} pretrain run in this grid: the {kind} techniques that need one fail")
    return src, ranking

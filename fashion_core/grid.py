"""The technique grid: every ``experiments/`` config as a child run of one parent ``stage=grid`` run.

Pretrain techniques run first (every seed), then the finetune techniques start from a
pretrained model: ``--from`` when given, else the grid's own best pretrain run of their model
kind (image network, or fused network with the same metadata encoders) by *validation*
class-mean top-1 (the test split never selects). A technique whose finished run has the same
resolved config (hash tagged ``config_hash``), dataset digest and code (git commit, plus a hash
of uncommitted changes and of the numeric libraries' versions; tag ``code_version``; never when
the commit is unknown) is reused instead of rerun; a technique that
fails is recorded as a FAILED child run and the grid goes on. The parent run lists every child
in ``grid/runs.csv``; ``experiment.run_stage`` runs each technique (and dispatches the
metadata-only baseline to its own runner).

    fashion grid --profile quick --seeds 0 --data ../shared/data/fashion-product-images-small.tar.gz
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from . import tracking
# Run lookups live in tracking; callers and tests import them from here too (and patch grid.code_version).
from .tracking import best_val_score, code_version, find_reusable, grid_run_ids, reusable_version  # noqa: F401
from .config import STAGES, ConfigError, ExperimentConfig, find_technique, list_techniques, load_experiment, to_dict
from .progress import GridStatus

STAGE_ORDER = STAGES  # pretrain first: the finetune techniques need its model
RUNS_ARTIFACT = tracking.GRID_RUNS_ARTIFACT
SOURCE_ARTIFACT = "grid/source.json"
PLAN_ARTIFACT = "grid/plan.json"
RUN_COLUMNS = ("stage", "technique", "seed", "kind", "run_id", "status", "reused", "seconds", "config_hash",
               "source_run_id", "test_top1_mean", "val_top1_best", "error", "host", "worker", "device")
IMAGE = "image"  # the kind of a plain image network


@dataclass(frozen=True)
class GridTask:
    """One technique at one seed: a resolved config and the file it came from."""

    cfg: ExperimentConfig
    path: Path

    @property
    def name(self) -> str:
        return f"{self.cfg.stage}/{self.cfg.technique}/seed{self.cfg.train.seed}"


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


# ---------------------------------------------------------------- planning

def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a range ``"0-2"`` works too; duplicates are dropped."""
    import re

    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"--seeds {text!r}: expected non-negative integers separated by commas, e.g. 0,1,2")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds += [v for v in range(lo, hi + 1) if v not in seeds]
    return seeds


def select_techniques(experiments_dir: str | Path = "experiments", names: Sequence[str] | None = None,
                      stages: Sequence[str] = STAGE_ORDER) -> list[Path]:
    """The technique files of a grid, pretrain first.

    Args:
        experiments_dir: the folder with ``pretrain/`` and ``finetune/``.
        names: ``None``/``["all"]`` for every file of ``stages``, else stems (``focal``), qualified
            stems (``finetune/ncm``) or YAML paths; a stem found in two stages must be qualified.
        stages: the stages to include.

    Returns:
        The files, pretrain ones first, each once.
    """
    for s in stages:
        if s not in STAGE_ORDER:
            raise ConfigError(f"unknown stage {s!r}; choose from: {', '.join(STAGE_ORDER)}")
    ordered = [s for s in STAGE_ORDER if s in stages]
    if not names or list(names) == ["all"]:
        files = [p for s in ordered for p in list_techniques(s, experiments_dir)]
        if not files:
            raise ConfigError(f"no technique files in {experiments_dir}/{{{','.join(ordered)}}}/")
        return files
    picked: dict[str, list[Path]] = {s: [] for s in STAGE_ORDER}
    for name in names:
        if name.endswith((".yaml", ".yml")):
            p = Path(name)
            if not p.is_file():
                raise ConfigError(f"technique file {name!r} not found")
            stage = p.parent.name if p.parent.name in STAGE_ORDER else load_experiment(p).stage
            picked[stage].append(p)
            continue
        stage_hint, _, stem = name.rpartition("/")
        where = [stage_hint] if stage_hint else ordered
        hits = []
        for s in where:
            try:
                hits.append((s, find_technique(stem, s, experiments_dir)))
            except ConfigError:
                pass
        if not hits:
            valid = [f"{s}/{p.stem}" for s in ordered for p in list_techniques(s, experiments_dir)]
            raise ConfigError(f"unknown technique {name!r}; choose from: {', '.join(valid)}")
        if len(hits) > 1:
            raise ConfigError(f"technique {name!r} exists in {' and '.join(s for s, _ in hits)}; "
                              f"write {hits[0][0]}/{stem} or {hits[1][0]}/{stem}")
        picked[hits[0][0]].append(hits[0][1])
    out: list[Path] = []
    for s in STAGE_ORDER:
        for p in picked[s]:
            if p not in out:
                out.append(p)
    return out


def plan_grid(experiments_dir: str | Path = "experiments", techniques: Sequence[str] | None = None,
              stages: Sequence[str] = STAGE_ORDER, seeds: Sequence[int] = (0,), profile: str = "default",
              overrides: Mapping[str, Any] | None = None) -> list[GridTask]:
    """Resolve every (technique, seed) of a grid into a config, pretrain first, seed-major within a stage.

    Args:
        experiments_dir, techniques, stages: see :func:`select_techniques`.
        seeds: training seeds (``train.seed``).
        profile: a config profile (``quick`` on CPUs).
        overrides: dotted keys applied to every technique after its file (``data.top_k``, ``train.epochs``).

    Returns:
        The tasks in run order; every config is validated, so a bad value fails before any run.
    """
    files = select_techniques(experiments_dir, techniques, stages)
    # A file under experiments/<stage>/ belongs to that stage; any other file says its own.
    loaded = [(p, load_experiment(p, overrides=overrides, profile=profile,
                                  stage=p.parent.name if p.parent.name in STAGE_ORDER else None)) for p in files]
    tasks: list[GridTask] = []
    for stage in STAGE_ORDER:
        for seed in seeds:
            tasks += [GridTask(c.replace(**{"train.seed": seed}), p) for p, c in loaded if c.stage == stage]
    data_cfgs = {json.dumps(to_dict(t.cfg.data), sort_keys=True) for t in tasks}
    if len(data_cfgs) > 1:
        raise ConfigError("the techniques of one grid must share the data settings (split, size); "
                          f"got {len(data_cfgs)} different ones - set them with the grid's data options")
    return tasks


# ---------------------------------------------------------------- reuse and source selection

def needs_source(cfg: ExperimentConfig) -> bool:
    """Whether a config trains from a pretrained model (finetune with a transfer method that uses one)."""
    from .models import transfer_policy

    return cfg.stage == "finetune" and bool(transfer_policy(cfg.transfer.method)["pretrained"])


def config_hash(cfg: ExperimentConfig, source_run_id: str | None = None) -> str:
    """16 hex digits identifying a resolved config (and, for transfer, the pretrain run it starts from)."""
    payload = {"config": to_dict(cfg), "source_run_id": source_run_id if needs_source(cfg) else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_kind(cfg: ExperimentConfig) -> str:
    """Which pretrained networks fit a config: ``image``, ``<mode>-<hash>`` of the metadata encoders, or '' (no network).

    A finetune technique starts only from a pretrain run of its own kind: image techniques from an
    image network, a fused one from a network with the same metadata encoders; the metadata-only
    baseline is no network at all.
    """
    from .fusion import INPUT_KEYS

    f = cfg.fusion
    if f.mode == "metadata_only":
        return ""
    if f.mode == "none":
        return IMAGE
    encoders = {k: to_dict(getattr(f, k)) for k in INPUT_KEYS}
    return f"{f.mode}-{hashlib.sha256(json.dumps(encoders, sort_keys=True).encode()).hexdigest()[:8]}"


def pick_best_pretrain(runs: pd.DataFrame, kind: str = IMAGE) -> tuple[str | None, pd.DataFrame]:
    """The finished pretrain run of a kind with the best validation class-mean top-1, and the ranking."""
    cand = runs[(runs["stage"] == "pretrain") & (runs["status"] == "FINISHED") & (runs["kind"] == kind)]
    cand = cand[cand["val_top1_best"].notna()].sort_values("val_top1_best", ascending=False, kind="stable")
    table = cand[["kind", "technique", "seed", "run_id", "val_top1_best"]].reset_index(drop=True)
    return (str(cand.iloc[0]["run_id"]) if len(cand) else None), table


# ---------------------------------------------------------------- dispatch

Runner = Callable[..., str]


def runner_for(cfg: ExperimentConfig) -> Runner:
    """The function that runs a config as one MLflow run (same keywords as ``experiment.run_stage``)."""
    from .experiment import run_stage

    return run_stage


# ---------------------------------------------------------------- the grid

def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _start_parent(experiment_id: str, digest: str, code: str, tasks: Sequence[GridTask], profile: str,
                  seeds: Sequence[int], params: Mapping[str, Any]) -> str:
    """Create the parent run (not made active: the children are started by ``run_stage`` meanwhile)."""
    commit, dirty = tracking.git_commit()
    techniques = sorted({f"{t.cfg.stage}/{t.cfg.technique}" for t in tasks},
                        key=lambda s: (STAGE_ORDER.index(s.split("/")[0]), s))
    seed_text = ",".join(str(s) for s in seeds)
    tags = {"stage": "grid", "technique": "grid", "dataset_digest": digest, "git_commit": commit,
            "mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower(), "profile": profile,
            "seeds": seed_text, "code_version": code,
            "mlflow.note.content": (f"Technique grid, profile `{profile}`, seeds {seed_text}: "
                                    f"{len(tasks)} runs of {', '.join(techniques)}.")}
    client = _client()
    name = f"grid/{profile}/seeds{seed_text}"
    # Under `mlflow run . -e grid` the run MLflow made for this process becomes the parent; it is taken
    # out of the environment so that the children and later runs do not adopt it too.
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    if launched:
        run_id = launched
        client.set_tag(run_id, "mlflow.runName", name)
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    logged = client.get_run(run_id).data.params  # `mlflow run` logged its entry point's parameters already
    for k, v in params.items():
        if k not in logged:
            client.log_param(run_id, k, str(v)[:6000])
    return run_id


def _record_failure(task: GridTask, cfg_hash: str, digest: str, code: str, experiment_id: str, parent: str,
                    error: str) -> str:
    """The FAILED child run of a technique: the one ``run_stage`` opened, else a new one holding the error."""
    client = _client()
    found = client.search_runs([experiment_id], filter_string=(f"tags.config_hash = '{cfg_hash}' and "
                                                               f"tags.grid_run_id = '{parent}'"),
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:  # it failed before a run existed (e.g. no pretrained model to start from)
        commit, dirty = tracking.git_commit()
        tags = {"stage": task.cfg.stage, "technique": task.cfg.technique, "dataset_digest": digest,
                "git_commit": commit, "mlflow.source.git.commit": commit, "git_dirty": str(dirty).lower(),
                "config_hash": cfg_hash, "grid_run_id": parent, "mlflow.parentRunId": parent, "code_version": code,
                "seed": str(task.cfg.train.seed), "mlflow.note.content": f"Failed before training: {error}"}
        run_id = client.create_run(experiment_id, run_name=task.name, tags=tags).info.run_id
    client.set_tag(run_id, "error", error[:5000])
    client.log_text(run_id, error, "error.txt")
    if client.get_run(run_id).info.status not in ("FAILED", "KILLED"):
        client.set_terminated(run_id, "FAILED")
    return run_id


def _row(task: GridTask, run_id: str | None, status: str, reused: bool, seconds: float, cfg_hash: str,
         source: str | None, error: str = "") -> dict:
    """A row of ``RUN_COLUMNS`` (where it ran is added by ``run_cell``)."""
    top1 = val = float("nan")
    if run_id and status == "FINISHED":
        top1 = _client().get_run(run_id).data.metrics.get("test_top1_mean", float("nan"))
        val = best_val_score(run_id)
    return {"stage": task.cfg.stage, "technique": task.cfg.technique, "seed": task.cfg.train.seed,
            "kind": model_kind(task.cfg), "run_id": run_id, "status": status, "reused": reused,
            "seconds": round(seconds, 1), "config_hash": cfg_hash, "source_run_id": source or "",
            "test_top1_mean": top1, "val_top1_best": val, "error": error, "host": "", "worker": "", "device": ""}


def _finish_parent(parent: str, rows: list[dict], sources: Mapping[str, str | None], rankings: pd.DataFrame,
                   seconds: float, status: str) -> pd.DataFrame:
    """Log the runs table, the source choices and the counts to the parent run, then end it."""
    from .report import markdown_table

    client = _client()
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    client.log_text(parent, runs.to_csv(index=False), RUNS_ARTIFACT)
    client.log_text(parent, json.dumps({"sources": sources, "candidates": rankings.to_dict("records")},
                                       indent=1, default=str), SOURCE_ARTIFACT)
    counts = {"n_runs": len(runs), "n_finished": int((runs["status"] == "FINISHED").sum()),
              "n_failed": int((runs["status"] == "FAILED").sum()), "n_reused": int(runs["reused"].sum()),
              "grid_seconds": seconds}
    for k, v in counts.items():
        client.log_metric(parent, k, float(v))
    if sources.get(IMAGE):
        client.set_tag(parent, "source_run_id", sources[IMAGE])
    note = client.get_run(parent).data.tags.get("mlflow.note.content", "")
    table = markdown_table(runs[["stage", "technique", "seed", "status", "reused", "test_top1_mean"]])
    client.set_tag(parent, "mlflow.note.content",
                   f"{note}\n\nFinished {counts['n_finished']}, failed {counts['n_failed']}, "
                   f"reused {counts['n_reused']} in {seconds:.0f} s.\n\n{table}")
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


_PREPARED: dict[tuple, Any] = {}  # per worker process: the data is prepared (the cache opened) once


def _prepared_for(cell: Cell, log):
    from .data import prepare_data

    key = (cell.data, json.dumps(to_dict(cell.task.cfg.data), sort_keys=True))
    if key not in _PREPARED:
        _PREPARED[key] = prepare_data(cell.data, cell.task.cfg.data, log=log)
    return _PREPARED[key]


def _close_dead_attempts(cell: Cell) -> dict | None:
    """Before a cell runs: an earlier attempt's FINISHED run is the result; a RUNNING one (its worker died) is KILLED.

    A cell runs twice only when Ray retries it after losing its worker; this keeps every cell at
    one FINISHED run.
    """
    client = _client()
    found = client.search_runs([cell.experiment_id], filter_string=(f"tags.config_hash = '{cell.cfg_hash}' and "
                                                                    f"tags.grid_run_id = '{cell.parent}'"))
    for run in found:
        if run.info.status == "FINISHED":
            return run
    for run in found:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "error", "its worker died; the cell was retried")
            client.set_terminated(run.info.run_id, "KILLED")
    return None


def run_cell(cell: Cell, prepared=None, log=None) -> dict:
    """Run one cell as a child run of the grid (or record its failure); returns its row of ``RUN_COLUMNS``."""
    from .executors import worker_place

    task, place = cell.task, worker_place()
    if log is None:  # a worker: every line says which cell it is about
        def log(message: str, _name=task.name) -> None:
            print(f"[{_name}] {message}", flush=True)
    t1 = time.perf_counter()
    try:
        earlier = _close_dead_attempts(cell)
        if earlier is not None:
            log(f"  an earlier attempt finished: run {earlier.info.run_id}")
            return {**_row(task, earlier.info.run_id, "FINISHED", False, 0.0, cell.cfg_hash, cell.source), **place}
        if needs_source(task.cfg) and not cell.source:
            raise ConfigError(f"no finished pretrain run of this model kind ({model_kind(task.cfg)}) "
                              "to start from; pass --from")
        prepared = prepared or _prepared_for(cell, log)
        run_id = runner_for(task.cfg)(task.cfg, cell.data, source=cell.source, experiment=cell.exp_name,
                                      parent_run_id=cell.parent, register=cell.register, prepared=prepared,
                                      log=log, tags={"config_hash": cell.cfg_hash, "grid_run_id": cell.parent,
                                                     "code_version": cell.code, "library_versions": cell.libs,
                                                     "host": place["host"],
                                                     "worker_pid": os.getpid()})
        row = _row(task, run_id, "FINISHED", False, time.perf_counter() - t1, cell.cfg_hash, cell.source)
    except Exception as e:  # one technique failing must not stop the grid
        error = f"{type(e).__name__}: {e}"
        log(f"  FAILED: {error}")
        row = _cell_failed(cell, error + "\n\n" + traceback.format_exc(), time.perf_counter() - t1)
    return {**row, **place}


def _cell_failed(cell: Cell, error: str, seconds: float) -> dict:
    """The FAILED row (and child run) of a cell."""
    failed = _record_failure(cell.task, cell.cfg_hash, cell.digest, cell.code, cell.experiment_id, cell.parent, error)
    return _row(cell.task, failed, "FAILED", False, seconds, cell.cfg_hash, cell.source, error.split("\n\n")[0])


def run_grid(tasks: Sequence[GridTask], data: str | None, *, source: str | None = None,
             experiment: str | None = None, reuse: bool = True, register: bool = True,
             profile: str = "", seeds: Sequence[int] | None = None, log=print, jobs: int = 1,
             gpus_per_cell: float = 0.0, ray: str | None = None, cpus_per_cell: float = 1,
             max_retries: int = 2, threads_per_cell: int | None = None, show_status: bool = False) -> GridResult:
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
        jobs: cells at once in local worker processes (1: one after another in this process).
        threads_per_cell: a local worker's torch threads (default: the cores divided by ``jobs``).
        gpus_per_cell: with ``jobs`` or ``ray``, the GPUs of a cell (0.25: four cells share one).
        ray: ``auto`` or a cluster address: every cell a Ray task (``cpus_per_cell``, ``gpus_per_cell``,
            retried ``max_retries`` times when its worker dies).
        show_status: a live status of the cells on stderr (``progress.GridStatus``).

    Every cell starts as soon as it can: cells without a source at once, a finetune cell when
    every pretrain cell of its model kind has ended (its source is then chosen as the sequential
    grid chooses it); a cell's numbers do not depend on ``jobs``.

    Returns:
        A :class:`GridResult`; failed techniques are rows with status FAILED, never an exception.
    """
    from .data import prepare_data
    from .model_source import resolve_source

    if not tasks:
        raise ConfigError("the grid has no technique to run")
    t0 = time.perf_counter()
    prepared = prepare_data(data, tasks[0].cfg.data, log=log)
    experiment_id = tracking.set_experiment(experiment or tracking.experiment_name_for(prepared.root))
    exp_name = _client().get_experiment(experiment_id).name  # under `mlflow run`, the launched run's experiment
    fixed = resolve_source(source, exp_name) if source else None  # a bad --from fails before any run
    seeds = list(seeds) if seeds is not None else sorted({t.cfg.train.seed for t in tasks})
    code = code_version()
    if reuse and not reusable_version(code):
        log("code version unknown (not a git checkout): no finished run is reused, every technique runs")
    executor, how = _executor(jobs, gpus_per_cell, ray, cpus_per_cell, max_retries, threads_per_cell)
    if data and ray:  # Ray workers may start elsewhere: a path, not a relative one
        data = str(Path(data).resolve()) if Path(data).exists() else data
    params = {"profile": profile, "seeds": ",".join(map(str, seeds)), "n_tasks": len(tasks), "from": source or "",
              "techniques": ",".join(dict.fromkeys(f"{t.cfg.stage}/{t.cfg.technique}" for t in tasks)),
              "reuse": reuse, **{k: v for k, v in how.items() if k != "executor"}}
    libs = ", ".join(f"{k} {v}" for k, v in tracking.library_versions().items())
    parent = _start_parent(experiment_id, prepared.digest, code, tasks, profile, seeds, params)
    _client().log_dict(parent, {"cells": [{"index": i, "name": t.name, "kind": model_kind(t.cfg),
                                           "needs_source": needs_source(t.cfg)} for i, t in enumerate(tasks)],
                                **how}, PLAN_ARTIFACT)
    log(f"grid run {parent}: {len(tasks)} runs in experiment {exp_name!r} (dataset digest {prepared.digest}), "
        f"{how['executor']}")
    status = GridStatus([t.name for t in tasks], how["concurrency"]) if show_status else None
    rows: list[dict | None] = [None] * len(tasks)
    sources: dict[str, str | None] = {}  # model kind -> pretrain run, chosen when every pretrain run of it ended
    rankings: list[pd.DataFrame] = []
    running: dict = {}  # future -> Cell
    waiting = [i for i, t in enumerate(tasks) if needs_source(t.cfg)]
    inline = how["executor"] == "sequential"

    def start(i: int, this_source: str | None) -> None:
        task = tasks[i]
        h = config_hash(task.cfg, this_source)
        old = find_reusable(h, prepared.digest, code, experiment_id) if reuse else None
        if old is not None:
            log(f"[{i + 1}/{len(tasks)}] {task.name}\n  reusing finished run {old.info.run_id} "
                "(same config, data, code and libraries)")
            rows[i] = _row(task, old.info.run_id, "FINISHED", True, 0.0, h, this_source)
            if status is not None:
                status.update(task.name, "reused")
            return
        cell = Cell(i, task, this_source, h, data, exp_name, experiment_id, parent, prepared.digest, code, register,
                    libs)
        log(f"[{i + 1}/{len(tasks)}] {task.name}")
        if status is not None:
            status.update(task.name, "running")
        if inline:
            running[executor.submit(run_cell, cell, prepared, log)] = cell
            return
        try:
            running[executor.submit(run_cell, cell)] = cell
        except RuntimeError as e:  # a broken pool (a worker was killed) takes no more cells
            rows[i] = _cell_failed(cell, f"{type(e).__name__}: {e}", 0.0)

    def release() -> None:
        """Start the finetune cells whose source is known (every pretrain cell of their kind has ended)."""
        for i in list(waiting):
            kind = model_kind(tasks[i].cfg)
            if kind not in sources:
                if not fixed and any(rows[j] is None for j, t in enumerate(tasks)
                                     if t.cfg.stage == "pretrain" and model_kind(t.cfg) == kind):
                    continue
                sources[kind], ranking = (fixed, pd.DataFrame()) if fixed else \
                    _pick_source([r for r in rows if r is not None], tasks, kind, exp_name, log)
                rankings.append(ranking)
            waiting.remove(i)
            start(i, sources[kind])

    status_ = "FAILED"
    try:
        # SIGTERM between two children must end the parent KILLED too, not leave it RUNNING.
        with tracking._sigterm_as_interrupt():
            for i, task in enumerate(tasks):
                if not needs_source(task.cfg):
                    start(i, None)
            release()
            while running:
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for f in done:
                    cell = running.pop(f)
                    try:
                        rows[cell.index] = f.result()
                    except Exception as e:  # the worker itself died (a cell's own errors come back as rows)
                        error = f"{type(e).__name__}: {e}"
                        log(f"  {cell.task.name} FAILED: {error}")
                        rows[cell.index] = _cell_failed(cell, error, 0.0)
                    if status is not None:
                        status.update(cell.task.name, rows[cell.index]["status"].lower())
                release()
        status_ = "FINISHED"
    except KeyboardInterrupt:
        status_ = "KILLED"
        raise
    finally:
        from .executors import stop_pool

        if status_ == "FINISHED" or inline:
            executor.shutdown(wait=True)
        elif hasattr(executor, "_processes"):  # a local pool: its workers are stopped (their runs end KILLED)
            stop_pool(executor)
        else:
            executor.shutdown(wait=False, cancel_futures=True)
        if status is not None:
            status.close()
        seconds = time.perf_counter() - t0
        ranked = pd.concat(rankings, ignore_index=True) if rankings else pd.DataFrame()
        runs = _finish_parent(parent, [r for r in rows if r is not None], sources, ranked, seconds, status_)
    log(f"grid {parent} done in {seconds:.0f} s: {int((runs['status'] == 'FINISHED').sum())} finished, "
        f"{int((runs['status'] == 'FAILED').sum())} failed, {int(runs['reused'].sum())} reused")
    return GridResult(parent_run_id=parent, runs=runs, source_run_id=sources.get(IMAGE), seconds=seconds,
                      experiment_id=experiment_id, sources=sources, rankings=ranked)


def _executor(jobs: int, gpus_per_cell: float, ray: str | None, cpus_per_cell: float, max_retries: int,
              threads_per_cell: int | None = None):
    """The executor of the cells and what it gives each (logged on the parent run as the plan)."""
    from .executors import InlineExecutor, RayExecutor, local_pool

    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if ray:
        ex = RayExecutor(ray, cpus_per_cell, gpus_per_cell, max_retries)
        return ex, {"executor": f"Ray cluster {ray} ({ex.info['nodes']} nodes)", **ex.info}
    if jobs == 1:
        return InlineExecutor(), {"executor": "sequential", "jobs": 1, "concurrency": 1}
    pool, info = local_pool(jobs, gpus_per_cell, threads_per_cell=threads_per_cell, max_retries=max_retries)
    return pool, {"executor": f"{info['jobs']} local worker processes, {info['threads_per_cell']} threads each"
                  + (f", {gpus_per_cell} GPU each" if gpus_per_cell else ""), "concurrency": info["jobs"], **info}


def _pick_source(rows: list[dict], tasks: Sequence[GridTask], kind: str, exp_name: str,
                 log) -> tuple[str | None, pd.DataFrame]:
    """The source of a model kind without ``--from``: the grid's best pretrain run of it, else ``latest``."""
    from .model_source import resolve_source

    src, ranking = pick_best_pretrain(pd.DataFrame(rows, columns=list(RUN_COLUMNS)), kind)
    if src:
        best = ranking.iloc[0]
        log(f"{kind} finetune techniques start from pretrain run {src}: best validation class-mean top-1 "
            f"{best['val_top1_best']:.4f} ({best['technique']}, seed {best['seed']})")
    elif kind == IMAGE and not any(t.cfg.stage == "pretrain" for t in tasks):
        try:
            src = resolve_source("latest", exp_name)
            log(f"image finetune techniques start from the latest finished pretrain run {src}")
        except ConfigError as e:
            log(f"no pretrained model for the finetune techniques: {e}")
    else:
        log(f"no finished {kind} pretrain run in this grid: the {kind} techniques that need one fail")
    return src, ranking


"""The main job: prepare -> pretrain -> finetune -> compare, with the techniques of ``experiments/main.yaml``.

The profile follows the machine unless given (``auto``): the accurate ``default`` profile on a CUDA
GPU, ``quick`` on CPUs (the whole job in well under an hour on 2 cores). The choice, the reason and
the expected time (from the measured figures in docs/) are printed before anything starts. The
techniques run as one grid (``grid.run_grid``: finetune techniques start from the grid's best
pretrain run of their kind by validation), then the file's ``ensembles`` combine pairs of its runs
(``ensemble.run_ensemble``, as children of the grid run), and ``report.run_compare`` reports that grid.

    fashion run --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from fashion_core.config.checks import STAGES, ConfigError
from fashion_core.config.schema import describe
from fashion_core.data.sources import check_data_spec, resolve_dataset

# The cost figures live in run_costs (the grid's ETA uses them too); main_job's names as before.
from fashion_core.grid.costs import COMPARE_MINUTES, ENSEMBLE_MINUTES, PREPARE_MINUTES, PRETRAIN_MINUTES, task_minutes
from fashion_core.grid.plan import plan_grid
from fashion_core.grid.scheduler import run_grid
from fashion_core.report.compare import run_compare
from fashion_core.runners.ensemble import run_ensemble
from fashion_core.runners.prepare import run_prepare
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.store import store_line
from fashion_core.tracking.versions import git_commit

logger = logging.getLogger(__name__)

MAIN_FILE = "main.yaml"  # in the experiments folder
ENSEMBLES_KEY = "ensembles"  # main.yaml: per stage, [anchor, second] technique pairs combined after the grid
AUTO = "auto"


@dataclass
class MainResult:
    """What the main job did: its profile, the prepare, grid and compare runs, the report folder."""

    profile: str
    prepare_run_id: str
    grid_run_id: str
    compare_run_id: str | None
    report: Path
    minutes: float
    main_run_id: str = ""  # the job's own run, main/<profile>, parent of the prepare, grid and compare runs


def load_main_techniques(experiments_dir: str | Path = "experiments") -> list[str]:
    """The ``stage/technique`` names listed in ``<experiments_dir>/main.yaml``, pretrain first."""
    path = Path(experiments_dir) / MAIN_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {path}: it lists the main job's techniques (pretrain: [...], finetune: [...]); or pass --techniques"
        )
    raw = _main_file(path)
    names = []
    for stage in STAGES:
        values = raw.get(stage) or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{path}: {stage} must be a list of technique names")
        names += [f"{stage}/{v}" for v in values]
    if not names:
        raise ConfigError(f"{path} lists no technique")
    return names


def _main_file(path: Path) -> Mapping:
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, Mapping) or set(raw) - set(STAGES) - {ENSEMBLES_KEY}:
        raise ConfigError(
            f"{path}: expected the keys {' and '.join(STAGES)}, each a list of technique names "
            f"(and {ENSEMBLES_KEY}: per stage, pairs [anchor, second])"
        )
    return raw


def load_main_ensembles(experiments_dir: str | Path = "experiments") -> list[tuple[str, str, str]]:
    """The (stage, anchor, second) technique pairs that ``<experiments_dir>/main.yaml`` combines after the grid."""
    path = Path(experiments_dir) / MAIN_FILE
    if not path.is_file():
        return []
    raw = _main_file(path).get(ENSEMBLES_KEY) or {}
    if not isinstance(raw, Mapping) or set(raw) - set(STAGES):
        raise ConfigError(f"{path}: {ENSEMBLES_KEY} maps {' and '.join(STAGES)} to lists of [anchor, second]")
    pairs = []
    for stage in STAGES:
        for pair in raw.get(stage) or []:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
                raise ConfigError(
                    f"{path}: {ENSEMBLES_KEY}.{stage}: each entry is a pair [anchor, second], got {pair!r}"
                )
            pairs.append((stage, pair[0], pair[1]))
    return pairs


def run_main_ensembles(
    pairs: Sequence[tuple[str, str, str]], runs: Any, data: str | None, grid_run_id: str
) -> list[str]:
    """Combine the grid's finished runs of each pair (``fashion ensemble``), as children of the grid run.

    A pair whose members are not both in the grid (``--techniques`` left one out) or did not finish is skipped
    with a line; an ensemble that fails is reported and the job goes on to compare what it has.
    """
    done = []
    finished = runs[runs["status"] == "FINISHED"] if len(runs) else runs
    for stage, a, b in pairs:
        ids = []
        for tech in (a, b):
            hit = (
                finished[(finished["stage"] == stage) & (finished["technique"] == tech)]["run_id"]
                if len(finished)
                else []
            )
            ids.append(next(iter(hit), None))
        if None in ids:
            logger.info(
                f"ensemble {stage}/{a}+{b}: skipped, the grid has no finished {stage} run of "
                f"{' and '.join(t for t, i in zip((a, b), ids) if i is None)}"
            )
            continue
        try:  # both ids found: a None was skipped above
            done.append(run_ensemble(cast("list[str]", ids), data, grid_run=grid_run_id))
        except Exception as e:  # the grid's runs stand; the report compares what there is
            logger.warning(f"ensemble {stage}/{a}+{b} failed: {type(e).__name__}: {e}")
    return done


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_profile(
    profile: str, device: str | None = None, gpu: bool | None = None, cores: int | None = None
) -> tuple[str, str]:
    """(profile, why): ``auto`` follows the machine; ``default`` on a machine without a GPU is refused.

    Args:
        profile: ``auto`` or a profile name.
        device: ``train.device`` when given (``cpu`` runs ``default`` on CPUs on purpose).
        gpu, cores: the machine (default: this one).
    """
    gpu = has_gpu() if gpu is None else gpu
    cores = cores or os.cpu_count() or 1
    slow = PRETRAIN_MINUTES[("default", "cpu")] / 60
    if profile == AUTO:
        if gpu and device != "cpu":
            return "default", "a CUDA GPU is here, so the accurate profile"
        return "quick", (
            f"no CUDA GPU here ({cores} CPU cores): the accurate `default` profile would take about "
            f"{slow:.0f} h per image pretrain on 2 cores; `quick` is the profile sized for CPUs"
        )
    if profile == "default" and not gpu and device != "cpu":
        raise ConfigError(
            f"profile default is the GPU profile (about {slow:.0f} h per pretrain on 2 CPU cores) and "
            "there is no CUDA GPU here: use PROFILE=auto or quick (sized for CPUs; quick_scratch is the fastest), "
            "or add --device cpu (make run DEVICE=cpu) to run it on the CPU anyway"
        )
    return profile, "as asked"


def start_main_run(experiment_id: str, profile: str, techniques: Sequence[str]) -> str:
    """The main job's own run, ``main/<profile>``: the parent of its prepare, grid and compare runs.

    Under ``mlflow run . -e main`` it is the run MLflow opened (taken out of the environment, so that the
    prepare and grid runs do not adopt it). It is never the active run: the grid starts its children
    itself, and MLflow allows one active run per process.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    commit, dirty = git_commit()
    tags = {
        "stage": "main",
        "technique": "main",
        "profile": profile,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.note.content": f"The main job, profile `{profile}`: prepare, then one grid of "
        f"{', '.join(techniques)}, then compare (the child runs).",
    }
    name = f"main/{profile}"
    launched = os.environ.pop("MLFLOW_RUN_ID", None)
    if launched:
        client.set_tag(launched, "mlflow.runName", name)
        for k, v in tags.items():
            client.set_tag(launched, k, v)
        return launched
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def estimate_minutes(tasks: Sequence[Any], profile: str, gpu: bool) -> float:
    """Expected minutes of the whole job (prepare, every task, compare) from the measured figures in docs/."""
    return PREPARE_MINUTES + COMPARE_MINUTES + sum(task_minutes(t.cfg, profile, gpu) for t in tasks)


def duration(minutes: float) -> str:
    """Minutes as a person reads them: whole minutes, or hours with one decimal from 90 minutes on."""
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{max(1, round(minutes))} min"


def log_expected(minutes: float, what: str, gpu: bool) -> None:
    """The expected-time line of a command: the main job's, and every training command's before it starts."""
    logger.info(
        f"expected time: about {duration(minutes)} ({what}) on "
        + ("one GPU" if gpu else "2 idle CPU cores; more when other jobs share them")
        + "; estimated from the measured figures in docs/"
    )


def pick_profile(profile: str, device: str | None) -> tuple[str, bool]:
    """(profile, on a GPU) of a command, the choice logged (``auto`` says why): see :func:`choose_profile`.

    ``device`` is ``train.device`` as the user gave it; ``cuda`` on a machine without one is refused here, before
    any data is read.
    """
    gpu = has_gpu()
    if device == "cuda" and not gpu:
        raise ConfigError("--device cuda but there is no CUDA GPU here; use auto or cpu")
    chosen, why = choose_profile(profile, device, gpu=gpu)
    logger.info(f"profile {chosen}" + (f" (auto): {why}" if profile == AUTO else ""))
    return chosen, gpu and device != "cpu"


def run_main(
    data: str | None,
    profile: str = AUTO,
    techniques: Sequence[str] | None = None,
    experiments_dir: str | Path = "experiments",
    overrides: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    out: str | Path = "reports/compare",
    reuse: bool = True,
    dry_run: bool = False,
) -> MainResult | None:
    """Prepare the data, run the main techniques as one grid, and compare them.

    Args:
        data: the ``--data`` value.
        profile: ``auto`` (see :func:`choose_profile`) or a profile name.
        techniques: grid technique names (default: ``<experiments_dir>/main.yaml``).
        overrides: dotted keys applied to every technique (``train.device`` among them).
        experiment: MLflow experiment (default: one per dataset; under ``mlflow run``, its experiment).
        out: local folder of the report.
        reuse: reuse finished runs of the same config, data and code (see ``grid.run_grid``).
        dry_run: print the plan (every config resolved and checked) and return None: no run, no store.

    Returns:
        A :class:`MainResult` (None for a dry run).
    """
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    check_data_spec(data)  # no data / a path that does not exist: one line, before anything else
    overrides = dict(overrides or {})
    chosen, gpu = pick_profile(profile, overrides.get("train.device"))
    names = list(techniques) if techniques else load_main_techniques(experiments_dir)
    tasks = plan_grid(experiments_dir, names, STAGES, [0], chosen, overrides)  # every config checked before any run
    planned = {(t.cfg.stage, t.cfg.technique) for t in tasks}
    pairs = [x for x in load_main_ensembles(experiments_dir) if {(x[0], x[1]), (x[0], x[2])} <= planned]
    minutes = estimate_minutes(tasks, chosen, gpu) + ENSEMBLE_MINUTES * len(pairs)
    logger.info(f"techniques: {', '.join(dict.fromkeys(f'{t.cfg.stage}/{t.cfg.technique}' for t in tasks))}")
    if pairs:
        logger.info(f"then ensembles (validation-weighted): {', '.join(f'{st}/{a}+{b}' for st, a, b in pairs)}")
    log_expected(minutes, f"prepare, {len(tasks) + len(pairs)} runs, compare", gpu)
    if dry_run:
        for t in tasks:
            logger.info("  " + describe(t.cfg))
        logger.info(f"data: {data or os.environ.get('FASHION_DATA')} (exists)")
        logger.info(store_line())
        logger.info("dry run: every config is valid; nothing was run and no store was opened")
        return None
    client = MlflowClient()
    # under `mlflow run` the experiment is the launched run's (set_experiment reads it before it is adopted)
    exp_id = tracking.set_experiment(experiment or tracking.experiment_name_for(resolve_dataset(data)))
    exp_name = client.get_experiment(exp_id).name
    main_run = start_main_run(exp_id, chosen, [f"{t.cfg.stage}/{t.cfg.technique}" for t in tasks])
    logger.info(f"main job run {main_run} (main/{chosen}): prepare, grid and compare nest under it")
    try:
        p, prepare_run = run_prepare(data, tasks[0].cfg.data, experiment=exp_name)
        client.set_tag(main_run, "dataset_digest", p.digest)
        client.set_tag(prepare_run, "mlflow.parentRunId", main_run)
        grid = run_grid(tasks, data, experiment=exp_name, reuse=reuse, profile=chosen, seeds=[0])
        client.set_tag(grid.parent_run_id, "mlflow.parentRunId", main_run)
        run_main_ensembles(pairs, grid.runs, data, grid.parent_run_id)
        report = run_compare(exp_name, STAGES, grid.parent_run_id, out=out)
        if report.run_id:
            client.set_tag(report.run_id, "mlflow.parentRunId", main_run)
    except KeyboardInterrupt:
        client.set_terminated(main_run, "KILLED")
        raise
    except BaseException:
        client.set_terminated(main_run, "FAILED")
        raise
    client.set_terminated(main_run, "FINISHED")
    elapsed = (time.perf_counter() - t0) / 60
    path = (Path(out) / "report.html").resolve()
    logger.info(f"\nmain job done in {elapsed:.1f} min (profile {chosen}): the report is {path}")
    logger.info(f"browse the runs: `make ui`, then {tracking.runs_page(grid.experiment_id)}")
    return MainResult(chosen, prepare_run, grid.parent_run_id, report.run_id, path, elapsed, main_run)

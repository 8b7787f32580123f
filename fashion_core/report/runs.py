"""Which runs a report covers: the experiment, the grid, the newest finished run per (stage, technique, seed)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from fashion_core.config.checks import REMOVED_KEYS, ConfigError
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import tracking_uri
from fashion_core.tracking.test_reads import TEST_SCORED_TAG

STAGES = ("pretrain", "finetune")
PER_CLASS_ARTIFACT = "eval/per_class.csv"
PREDICTIONS_ARTIFACT = "eval/predictions.csv"


class CompareError(ConfigError):
    """Nothing to compare, or a filter that names something that does not exist."""


# ---------------------------------------------------------------- which runs


@dataclass
class Scope:
    """What a report covers: the experiment, the grid (if any), the runs used and those left out."""

    experiment_id: str
    experiment_name: str
    grid_run_id: str | None
    runs: list = field(default_factory=list)  # mlflow Run objects, FINISHED, one per (stage, technique, config, seed)
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, run_name, stage, technique, seed, reason
    dataset_digest: str = ""
    # run id -> the config's keys that tell it apart from other configs of its technique ('' when it has one)
    configs: dict = field(default_factory=dict)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def seed_of(run) -> int:
    tags, params = run.data.tags, run.data.params
    value = tags.get("seed", params.get("train.seed", "0"))
    try:
        return int(value)
    except ValueError:
        return 0


def _pick_experiment(client, experiment: str | None, grid: str | None):
    """The experiment named, the grid's, else the one holding the newest grid (or stage) run."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise CompareError(
                f"no experiment {experiment!r}; choose one of: {', '.join(names) or 'none'}; {tracking.store_hint()}"
            )
        return exp
    if grid and grid not in ("latest", "none"):
        try:
            return client.get_experiment(client.get_run(grid).info.experiment_id)
        except Exception:
            raise CompareError(f"--grid {grid}: no such run in {tracking_uri()}") from None
    for flt in ("tags.stage = 'grid'", "tags.stage = 'pretrain'", "tags.stage = 'finetune'"):
        runs = tracking.find_runs(flt, max_results=1)  # newest first, across every experiment
        if runs:
            return client.get_experiment(runs[0].info.experiment_id)
    raise CompareError(
        f"no pretrain or finetune run to compare; {tracking.store_hint()}; or run `make run` / `fashion grid` first"
    )


# Logged params that do not make another configuration of a technique: the seed (a row holds its seeds)
# and the device (the tag ``device`` says where a run ran).
NOT_CONFIG = ("train.seed", "train.device")
# A param that names other runs (an ensemble's member run ids) differs with the seed those runs were trained
# with, not with the configuration: three ensemble seeds are one configuration.
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def run_config(run) -> dict[str, str]:
    """A run's logged configuration (its params), less ``NOT_CONFIG``, params that name run ids, and the keys of
    removed options (``REMOVED_KEYS``) at the value the code still follows (what a run logged since does)."""
    return {
        k: v
        for k, v in run.data.params.items()
        if k not in NOT_CONFIG and not RUN_ID.search(str(v)) and not (k in REMOVED_KEYS and v == REMOVED_KEYS[k][0])
    }


def same_config(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Two logged configs agree on every key both have (a key added to the code since is not a difference); a
    removed option's key that only one holds is (``run_config`` keeps it only at a value the code left)."""
    return all(a[k] == b[k] for k in a.keys() & b.keys()) and all((k in a) == (k in b) for k in REMOVED_KEYS)


def config_groups(runs: Sequence) -> tuple[dict[str, int], dict[tuple, list[dict]]]:
    """Configurations per (stage, technique): run id -> group number (newest config 0), and the groups' configs."""
    groups: dict[tuple, list[dict]] = {}
    of: dict[str, int] = {}
    for r in runs:  # newest first
        key = (r.data.tags.get("stage"), r.data.tags.get("technique"))
        cfg = run_config(r)
        known = groups.setdefault(key, [])
        hit = next((i for i, c in enumerate(known) if same_config(c, cfg)), None)
        if hit is None:
            known.append(cfg)
            hit = len(known) - 1
        of[r.info.run_id] = hit
    return of, groups


def config_label(configs: Sequence[Mapping[str, str]], i: int, max_keys: int = 3) -> str:
    """The keys that tell config ``i`` apart from the others of its technique, e.g. ``train.epochs=20``."""
    if len(configs) < 2:
        return ""
    mine = configs[i]
    # a key another config has at another value, or a removed option's that it lacks (the value the code follows)
    keys = sorted(k for k in mine if any(c[k] != mine[k] if k in c else k in REMOVED_KEYS for c in configs))
    text = ", ".join(f"{k}={mine[k]}" for k in keys[:max_keys]) + (
        f", +{len(keys) - max_keys} more" if len(keys) > max_keys else ""
    )
    return text or f"config {i + 1}"


def _unscored(run) -> bool:
    """A run that has not scored test yet: a selection run (or an ensemble of them) before `fashion evaluate`."""
    return run.data.tags.get(TEST_SCORED_TAG) == "false"


def find_runs(  # noqa: C901 - one branch per run filter
    experiment: str | None = None,
    stages: Sequence[str] = STAGES,
    grid: str | None = "latest",
    tags: Mapping[str, str] | None = None,
) -> Scope:
    """Select the runs of a report through the tracking API.

    Args:
        experiment: experiment name (default: the one with the newest grid, else the newest stage run).
        stages: pretrain and/or finetune.
        grid: ``latest`` (the newest grid run of the experiment; every run when there is none),
            a grid run id, or ``none`` (every run of the experiment).
        tags: extra ``tag = value`` filters.

    Returns:
        A :class:`Scope`: FINISHED runs, the newest per (stage, technique, configuration, seed) among
        those of the dataset digest most runs share; every other matching run is in ``left_out`` with
        the reason. A configuration is the logged config less the seed and device (:func:`run_config`;
        the ``config_hash`` tag hashes the seed too, so it cannot group seeds): two configurations of a
        technique (e.g. a 20-epoch override of a 4-epoch run) are two rows, told apart in ``configs``.
    """
    for s in stages:
        if s not in STAGES:
            raise CompareError(f"unknown stage {s!r}; choose from: {', '.join(STAGES)}")
    client = _client()
    exp = _pick_experiment(client, experiment, grid)
    grid_id = None
    if grid == "latest":
        latest = client.search_runs(
            [exp.experiment_id],
            filter_string="tags.stage = 'grid'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        grid_id = latest[0].info.run_id if latest else None
    elif grid and grid != "none":
        try:
            run = client.get_run(grid)
        except Exception:
            raise CompareError(
                f"--grid {grid}: no such run in {tracking_uri()}; use latest, a grid run id, or none"
            ) from None
        if run.data.tags.get("stage") != "grid":
            raise CompareError(f"--grid {grid}: a {run.data.tags.get('stage', 'untagged')} run, not a grid run")
        grid_id = grid
    clauses = [f"tags.{k} = '{v}'" for k, v in (tags or {}).items()]
    runs = []
    if grid_id:
        for run_id in tracking.grid_run_ids(grid_id):
            run = client.get_run(run_id)
            if run.data.tags.get("stage") in stages and all(run.data.tags.get(k) == v for k, v in (tags or {}).items()):
                runs.append(run)
    else:
        for stage in stages:
            runs += client.search_runs(
                [exp.experiment_id],
                filter_string=" and ".join([f"tags.stage = '{stage}'"] + clauses),
                order_by=["attributes.start_time DESC"],
                max_results=5000,
            )
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    kept, left = [], []
    # Runs on other data (another split or top-k) are not comparable: keep the digest most runs share
    # (the newest run's among equals).
    # A selection run (the year-held-out validation) has scored no test: it has nothing to report until
    # `fashion evaluate` scores it, and its split's digest must not outvote the runs that have.
    scored = [r for r in runs if r.info.status == "FINISHED" and not _unscored(r)]
    finished = [r.data.tags.get("dataset_digest", "") for r in scored]
    digest = max(dict.fromkeys(finished), key=finished.count) if finished else ""
    seen: dict[tuple, str] = {}
    comparable = [r for r in scored if r.data.tags.get("dataset_digest", "") == digest]
    group_of, groups = config_groups(comparable)
    for r in runs:
        t = r.data.tags
        key = (t.get("stage"), t.get("technique"), group_of.get(r.info.run_id, -1), seed_of(r))
        reason = ""
        if r.info.status != "FINISHED":
            reason = f"{r.info.status.lower()}" + (f": {t['error'].splitlines()[0]}" if t.get("error") else "")
        elif _unscored(r):
            reason = f"not read on test (a selection run; `fashion evaluate {r.info.run_id}` scores it once)"
        elif t.get("dataset_digest", "") != digest:
            reason = f"other dataset digest ({t.get('dataset_digest')} vs {digest})"
        elif key in seen:
            reason = f"superseded by the newer run {seen[key]}"
        if reason:
            left.append(
                {
                    "run_id": r.info.run_id,
                    "run_name": r.info.run_name,
                    "stage": key[0],
                    "technique": key[1],
                    "seed": key[3],
                    "reason": reason,
                }
            )
        else:
            seen[key] = r.info.run_id
            kept.append(r)
    if not kept:
        where = f"grid {grid_id}" if grid_id else f"experiment {exp.name!r}"
        raise CompareError(
            f"no finished {'/'.join(stages)} run in {where} matches"
            + (f" the tags {dict(tags)}" if tags else "")
            + ("; --grid none compares every run of the experiment" if grid_id else "")
        )
    left_out = pd.DataFrame(left, columns=["run_id", "run_name", "stage", "technique", "seed", "reason"])
    configs = {
        r.info.run_id: config_label(
            groups[(r.data.tags.get("stage"), r.data.tags.get("technique"))], group_of[r.info.run_id]
        )
        for r in kept
    }
    return Scope(exp.experiment_id, exp.name, grid_id, kept, left_out, digest, configs)

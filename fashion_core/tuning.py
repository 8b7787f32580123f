"""Optuna studies over search spaces; every trial a nested MLflow run, chosen on validation only.

A search space (``search_spaces/<name>.yaml``) names a base technique and the parameters to
search. ``run_tune`` opens the Optuna storage (sqlite, PostgreSQL or a journal file), creates
or resumes the study, and runs trials as child runs of one ``stage=tune`` parent run per
invocation. A trial trains on the train split, reports validation class-mean top-1 after every
epoch to the median pruner and returns its best validation value. The test split's rows are
dropped before a single image is gathered, so no trial can read it, let alone select on it.
A trial whose worker died is failed and queued again with the same parameters (heartbeats on
RDB storages, a process check on journal files). ``final_run`` trains the best configuration
as a normal pretrain/finetune run tagged ``selected=true``: the only time test is read.

    fashion tune --space focal_weights --profile quick --n-trials 30 --final \
        --data ../shared/data/fashion-product-images-small.tar.gz
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import yaml

from . import tracking
from .config import ConfigError, ExperimentConfig, find_technique, flatten, load_experiment, to_dict

if TYPE_CHECKING:  # optuna and torch are imported where used, never at import time
    import optuna

    from .data import Prepared

DEFAULT_STORAGE = "sqlite:///optuna.db"
PARAM_KINDS = ("float", "int", "categorical")
PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
SPACE_KEYS = ("description", "base", "objective", "fixed", "params")
# Validation metrics only: the test split never drives a choice.
OBJECTIVES = ("val_top1_mean", "val_top5_mean", "val_top1_micro")
MAX_RETRY = 2  # a trial whose worker died is queued again at most this many times
PRUNER_STARTUP_TRIALS = 5  # median pruning starts once this many trials have completed
# Settings that may differ between the workers of one study (hardware, not the experiment).
WORKER_LOCAL_KEYS = ("train.device", "train.compile")


# ---------------------------------------------------------------- search spaces

@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range, or a list of choices, maybe conditional."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # (earlier categorical param, the values that activate this one)

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched given the values chosen before it."""
        return all(k in chosen and chosen[k] in values for k, values in self.when)

    def suggest(self, trial: "optuna.Trial") -> Any:
        """Ask the trial for a value."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values to check against the config before anything runs."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
        else:
            d.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        return d


@dataclass(frozen=True)
class SearchSpace:
    """A search space file, parsed and checked against its base technique."""

    name: str
    path: Path
    base_path: Path
    stage: str
    description: str
    objective: str
    fixed: tuple[tuple[str, Any], ...]
    params: tuple[Param, ...]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def sample(self, trial: "optuna.Trial") -> dict[str, Any]:
        """The trial's values as dotted config overrides (conditional parameters only when active)."""
        chosen: dict[str, Any] = {}
        for p in self.params:
            if p.active(chosen):
                chosen[p.name] = p.suggest(trial)
        return chosen


def _space_error(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"search space {path}: {msg}")


def _number(path: Path, where: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _space_error(path, f"{where} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise _space_error(path, f"{where} must be an integer, got {value!r}")
    return int(value) if integer else float(value)


def _parse_param(path: Path, name: str, spec: Any, earlier: dict[str, Param]) -> Param:
    """One entry of ``params:``; every mistake is a one-line error naming the parameter."""
    if not isinstance(spec, Mapping):
        raise _space_error(path, f"parameter {name!r} must be a mapping with a type, e.g. "
                                 "{type: float, low: 0.0, high: 5.0}")
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise _space_error(path, f"parameter {name!r}: unknown type {kind!r}; choose one of: {', '.join(PARAM_KINDS)}")
    unknown = sorted(set(spec) - set(PARAM_FIELDS[kind]))
    if unknown:
        raise _space_error(path, f"parameter {name!r}: unknown field(s) {', '.join(unknown)}; "
                                 f"a {kind} parameter has: {', '.join(PARAM_FIELDS[kind])}")
    when = _parse_when(path, name, spec.get("when"), earlier)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise _space_error(path, f"parameter {name!r}: choices must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise _space_error(path, f"parameter {name!r}: choice {c!r} is not a number, string, bool or null")
        if len(set(map(repr, choices))) != len(choices):
            raise _space_error(path, f"parameter {name!r}: repeated choices in {list(choices)}")
        return Param(name, kind, choices=tuple(choices), when=when)
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            raise _space_error(path, f"parameter {name!r}: a {kind} range needs low and high")
    low = _number(path, f"parameter {name!r} low", spec["low"], integer)
    high = _number(path, f"parameter {name!r} high", spec["high"], integer)
    if low > high:
        raise _space_error(path, f"parameter {name!r}: low ({low}) > high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _space_error(path, f"parameter {name!r}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(path, f"parameter {name!r} step", step, integer)
        if step <= 0:
            raise _space_error(path, f"parameter {name!r}: step must be > 0, got {step}")
        if log:
            raise _space_error(path, f"parameter {name!r}: step and log cannot be used together")
    if log and low <= 0:
        raise _space_error(path, f"parameter {name!r}: a log range needs low > 0, got {low}")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(path: Path, name: str, when: Any, earlier: dict[str, Param]) -> tuple[tuple[str, tuple], ...]:
    """``when: {loss.weights: effective_number}``: searched only when an earlier categorical has these values."""
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise _space_error(path, f"parameter {name!r}: when must map an earlier parameter to its value(s)")
    out = []
    for ref, values in when.items():
        if ref not in earlier or earlier[ref].kind != "categorical":
            valid = [p for p, spec in earlier.items() if spec.kind == "categorical"]
            raise _space_error(path, f"parameter {name!r}: when refers to {ref!r}, which is not an earlier categorical "
                                     f"parameter; choose one of: {', '.join(valid) or '(none)'}")
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        bad = [v for v in values if v not in earlier[ref].choices]
        if bad or not values:
            raise _space_error(path, f"parameter {name!r}: when {ref} = {bad or values} is not among its choices "
                                     f"{list(earlier[ref].choices)}")
        out.append((str(ref), values))
    return tuple(out)


def find_space(name_or_path: str | Path, root: str | Path = "search_spaces") -> Path:
    """A search space by name (``focal_weights``) or path; an unknown name lists the valid ones."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"search space file {str(p)!r} not found")
        return p
    cand = Path(root) / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    valid = sorted(x.stem for x in Path(root).glob("*.yaml"))
    raise ConfigError(f"unknown search space {str(name_or_path)!r}; choose one of: "
                      f"{', '.join(valid) or '(none in ' + str(root) + ')'}")


def _find_base(base: Any, path: Path, experiments_dir: str | Path) -> Path:
    """``base: pretrain/baseline`` (a technique of experiments/<stage>/) or a path to a technique file."""
    if not isinstance(base, str) or not base:
        raise _space_error(path, "base must name a technique, e.g. base: pretrain/baseline")
    if base.endswith((".yaml", ".yml")):
        p = Path(base)
        for cand in (p, path.parent / p):
            if cand.is_file():
                return cand
        raise _space_error(path, f"base technique file {base!r} not found")
    stage, sep, name = base.partition("/")
    if not sep or stage not in ("pretrain", "finetune"):
        raise _space_error(path, f"base {base!r} must look like pretrain/<technique> or finetune/<technique>")
    return find_technique(name, stage, experiments_dir)


def load_space(name_or_path: str | Path, spaces_dir: str | Path = "search_spaces",
               experiments_dir: str | Path = "experiments") -> SearchSpace:
    """Read and check a search space; a bad one is a ConfigError before anything runs.

    Checks: the file's keys, each parameter's type and fields, low <= high, log ranges above 0,
    non-empty choices, conditions on earlier parameters, and that every bound and choice is a
    valid value of an existing config key of the base technique (unknown keys list the valid ones).

    Args:
        name_or_path: a stem of ``spaces_dir`` or a path to a YAML file.
        spaces_dir: the folder of search spaces.
        experiments_dir: where ``base: <stage>/<technique>`` is looked up.
    Returns:
        The parsed SearchSpace.
    """
    path = find_space(name_or_path, spaces_dir)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise _space_error(path, f"not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise _space_error(path, "the top level must be a mapping")
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise _space_error(path, f"unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPACE_KEYS)}")
    base_path = _find_base(raw.get("base"), path, experiments_dir)
    objective = raw.get("objective", "val_top1_mean")
    if objective not in OBJECTIVES:
        raise _space_error(path, f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)} "
                                 "(validation metrics only: the test split never selects)")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise _space_error(path, "fixed must map config keys to values, e.g. loss.name: focal")
    fixed = flatten(fixed)
    params_raw = raw.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        raise _space_error(path, "params must map at least one config key to its range or choices")
    params: dict[str, Param] = {}
    for name, spec in params_raw.items():
        params[str(name)] = _parse_param(path, str(name), spec, dict(params))
    clash = sorted(set(params) & set(fixed))
    if clash:
        raise _space_error(path, f"{', '.join(clash)} both fixed and searched")
    try:
        base = load_experiment(base_path, overrides=fixed)
    except ConfigError as e:
        raise _space_error(path, f"base {base_path} with fixed values: {e}") from None
    for p in params.values():
        if p.name.split(".")[0] in ("stage", "technique", "description", "data"):
            raise _space_error(path, f"{p.name!r} cannot be searched (it changes what the study is about, "
                                     "not how a model is trained)")
        for v in p.extremes():
            try:
                base.replace(**{p.name: v})
            except ConfigError as e:
                raise _space_error(path, f"parameter {p.name!r} = {v!r}: {e}") from None
    return SearchSpace(name=path.stem, path=path, base_path=base_path, stage=base.stage,
                       description=str(raw.get("description", "")), objective=objective,
                       fixed=tuple(fixed.items()), params=tuple(params.values()))


def base_config(space: SearchSpace, profile: str = "default",
                overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config every trial starts from: profile <- base technique <- fixed <- overrides.

    Overriding a searched key is an error: the study would silently ignore the override.
    """
    overrides = dict(overrides or {})
    searched = sorted(set(overrides) & set(space.param_names))
    if searched:
        raise ConfigError(f"{', '.join(searched)} searched by {space.path}; do not override it (-o)")
    cfg = load_experiment(space.base_path, overrides={**dict(space.fixed), **overrides}, profile=profile,
                          stage=space.stage)
    return cfg.replace(technique=space.name)


def trial_config(base: ExperimentConfig, params: Mapping[str, Any]) -> ExperimentConfig:
    """The base config with a trial's values."""
    return base.replace(**dict(params))


def best_config_yaml(space: SearchSpace, params: Mapping[str, Any], note: str = "",
                     header: str = "") -> str:
    """A technique file (the ``experiments/`` format: only keys that differ from the defaults) of the
    base technique with the fixed and the tuned values."""
    raw = yaml.safe_load(space.base_path.read_text()) or {}
    raw = flatten({k: v for k, v in raw.items() if k != "technique"})
    raw.update(dict(space.fixed))
    raw.update(dict(params))
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        d = nested
        parts = key.split(".")
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        d[parts[-1]] = list(value) if isinstance(value, tuple) else value
    nested.pop("description", None)  # the base's own words would describe the untuned technique
    desc = " ".join(x for x in (space.description.strip(), note) if x)
    ordered = {"description": desc, "stage": nested.pop("stage", space.stage), **nested}
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- storage

@dataclass
class StudyStorage:
    """An opened Optuna storage and what kind it is."""

    url: str
    storage: Any  # optuna.storages.BaseStorage
    kind: str  # "rdb" | "journal"
    journal_path: Path | None = None

    @property
    def display(self) -> str:
        """The URL with any password masked (safe to log)."""
        return mask_url(self.url)

    @property
    def dashboard(self) -> str:
        """The command that browses the study (a journal file by its path; PostgreSQL with its driver named,
        as optuna-dashboard's SQLAlchemy would otherwise look for psycopg 3)."""
        return f"optuna-dashboard {self.journal_path if self.journal_path else mask_url(_with_driver(self.url))}"


def mask_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed (SQLAlchemy 2.1 assumes psycopg 3;
    the dev extras install psycopg2)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return dialect + url[len("postgresql"):]
    raise ConfigError("storage postgresql://...: no PostgreSQL driver; pip install psycopg2-binary (or psycopg)")


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):].removeprefix("//"))
    if "://" not in url and url.endswith((".journal", ".log")):
        return Path(url)
    return None


def check_storage_url(url: str) -> str:
    """The storage kind ("rdb" or "journal") of a URL; anything else is a ConfigError naming the valid forms."""
    journal = _journal_path(url)
    if journal is not None:
        if not str(journal) or str(journal) == ".":
            raise ConfigError(f"storage {url!r}: name the journal file, e.g. journal:optuna.journal")
        return "journal"
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(f"storage {mask_url(url)!r}: use sqlite:///optuna.db (one machine), "
                          "postgresql://user:password@host:5432/db (many machines) or journal:FILE "
                          "(many processes on one host)")
    return "rdb"


def open_storage(url: str, heartbeat: int = 60,
                 on_dead_trial: Callable[[Any, Any], None] | None = None) -> StudyStorage:
    """Open an Optuna storage by URL.

    Args:
        url: ``sqlite:///optuna.db`` (one machine), ``postgresql://user:pass@host:5432/db`` (many
            machines), or ``journal:PATH`` / a ``*.journal`` path (many processes on one host).
        heartbeat: RDB storages: seconds between a running trial's heartbeats; a trial silent for
            twice this long is failed and ``on_dead_trial(study, frozen_trial)`` runs.
        on_dead_trial: what to do with such a trial (see ``retry_dead_trial``).
    Returns:
        The StudyStorage.
    """
    import optuna

    kind = check_storage_url(url)
    journal = _journal_path(url)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        if not journal.parent.is_dir():
            raise ConfigError(f"storage {url!r}: folder {str(journal.parent)!r} does not exist")
        return StudyStorage(url, optuna.storages.JournalStorage(JournalFileBackend(str(journal))), "journal", journal)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    # sqlite: wait for the lock instead of failing; servers: drop connections that died while a trial trained.
    engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    rdb_url = _with_driver(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
        try:
            storage = optuna.storages.RDBStorage(rdb_url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                 grace_period=2 * heartbeat,
                                                 heartbeat_stale_trial_callback=on_dead_trial)
        except Exception as e:  # a bad host, database or driver: one line, not a SQLAlchemy traceback
            raise ConfigError(f"storage {mask_url(url)!r}: cannot open it ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return StudyStorage(url, storage, "rdb")


# ---------------------------------------------------------------- dead workers

def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _own_attr(trial, key: str) -> Any:
    """A user attr this very trial set (a retried trial inherits its original's, which do not count)."""
    if trial.user_attrs.get("worker_trial") != trial.number:
        return None
    return trial.user_attrs.get(key)


def _close_dead_runs(trial) -> None:
    """The MLflow runs of a dead worker's trial: the trial run FAILED (trial_state=failed), its parent KILLED."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for key, status in (("mlflow_run_id", "FAILED"), ("mlflow_parent_run_id", "KILLED")):
        run_id = _own_attr(trial, key)
        if not run_id:
            continue
        try:
            if key == "mlflow_run_id":
                client.set_tag(run_id, "trial_state", "failed")
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status)
        except MlflowException:  # the run lives in another tracking store (another machine's sqlite)
            pass


def retry_dead_trial(study, trial, log=print, why: str = "", close_runs: bool = True) -> None:
    """A trial whose worker died: close its MLflow runs and queue its parameters again (at most MAX_RETRY times).

    Args:
        study, trial: the study and the dead trial (a FrozenTrial), as Optuna's heartbeat callback gets them.
        why: for the log line.
        close_runs: end the trial's MLflow run FAILED and its parent KILLED (False when the worker ends them itself).
    """
    import optuna

    if close_runs:
        _close_dead_runs(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    why = why or f"its worker ({trial.user_attrs.get('worker', 'unknown')}) died"
    log(f"trial {trial.number}: {why}; failed and queued again with the same parameters")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reap_dead_workers(study, storage: StudyStorage, log=print) -> int:
    """Journal storage: fail and retry RUNNING trials whose worker process on this host is gone.

    RDB storages do this with heartbeats inside Optuna; a journal file has no heartbeat, but all
    its workers share one host, so a process check is exact. Returns the number of trials reaped.
    """
    if storage.kind != "journal":
        return 0
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    reaped = 0
    # One reaper at a time, so a dead trial is retried once even when several workers notice it.
    with _file_lock(Path(str(storage.journal_path) + ".reaper.lock")):
        for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
            owner = _own_attr(t, "worker")
            if not owner:
                continue
            owner_host, _, pid = str(owner).rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # it finished meanwhile
            retry_dead_trial(study, t, log)
            reaped += 1
    return reaped


# ---------------------------------------------------------------- the study

def make_pruner(pruning: bool = True, prune_from: int = 1):
    """Median pruning on per-epoch validation reports, from epoch ``prune_from`` on, once 5 trials completed."""
    import optuna

    if not pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=prune_from)


def study_settings(space: SearchSpace, base: ExperimentConfig, digest: str,
                   source_run_id: str | None = None) -> dict[str, Any]:
    """What every worker of a study must agree on (kept in the study's user attrs)."""
    config = {k: v for k, v in flatten(to_dict(base)).items() if k not in WORKER_LOCAL_KEYS}
    settings = {"space": space.name, "stage": space.stage, "objective": space.objective,
                "params": {p.name: p.to_dict() for p in space.params}, "config": config,
                "dataset_digest": digest, "source_run_id": source_run_id}
    text = json.dumps(settings, sort_keys=True, default=str)
    settings["fingerprint"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return settings


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("space", "stage", "objective", "dataset_digest", "source_run_id", "params"):
        if old.get(key) != new.get(key):
            out.append(key)
    oc, nc = old.get("config", {}), new.get("config", {})
    out += [f"{k} ({oc.get(k)!r} -> {nc.get(k)!r})" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
    return out


def open_study(storage: StudyStorage, study_name: str, settings: Mapping[str, Any], *, seed: int | None = 0,
               pruner=None):
    """Create the study or load it (``load_if_exists``), and check the workers agree on its settings.

    The sampler's seed is ``seed`` plus the number of trials already in the study, so a resumed
    invocation does not replay the random start-up points of the first one.
    """
    import optuna

    study = optuna.create_study(storage=storage.storage, study_name=study_name, direction="maximize",
                                load_if_exists=True, pruner=pruner)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", dict(settings))
    elif stored.get("fingerprint") != settings["fingerprint"]:
        diff = _settings_diff(stored, settings)
        raise ConfigError(f"study {study_name!r} in {storage.display} was created with other settings "
                          f"({'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}); pass the same space, profile and "
                          "overrides, or choose another --study-name")
    if seed is not None:
        seed = seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


def without_test(p: "Prepared") -> "Prepared":
    """The prepared data without the test split's rows: nothing downstream can gather a test image or label."""
    return dataclasses.replace(p, splits=p.splits[p.splits["split"] != "test"].reset_index(drop=True))


# ---------------------------------------------------------------- the objective

class Objective:
    """One trial: sample, train on train, report validation every epoch, return the objective.

    A trial builds its model, loss and optimizer groups as ``experiment.run_stage`` does, so the
    final run of the best trial's config reproduces it.

    Args:
        space: the search space.
        base: the base config (``base_config``).
        prepared: validation-only prepared data (``without_test``): the test split is not in it.
        digest: the dataset digest tagged on every run.
        parent_run_id: the invocation's ``stage=tune`` run.
        storage: the study's storage (journal files are checked for dead workers before each trial).
        source: finetune spaces: the pretrained (model, meta); each trial gets its own copy.
    """

    def __init__(self, space: SearchSpace, base: ExperimentConfig, prepared: "Prepared", digest: str,
                 parent_run_id: str, storage: StudyStorage, study_name: str, source: tuple | None = None, log=print):
        if (prepared.splits["split"] == "test").any():
            raise ValueError("the objective takes validation-only prepared data (see without_test)")
        self.space, self.base, self.prepared, self.digest = space, base, prepared, digest
        self.parent_run_id, self.storage, self.study_name = parent_run_id, storage, study_name
        self.source, self.log = source, log
        self._stage_cache: tuple[str, Any] | None = None

    def stage(self, cfg: ExperimentConfig):
        """(config, fusion plan, stage data) of a trial config; rebuilt only when its fusion settings change.

        Raises:
            ConfigError: no training or no validation images.
        """
        from . import fusion
        from .experiment import build_stage_data

        key = json.dumps(to_dict(cfg.fusion), sort_keys=True)
        if self._stage_cache is None or self._stage_cache[0] != key:
            self._stage_cache = None  # free the old tensors before gathering new ones
            planned, plan = fusion.plan_stage(cfg, self.prepared, self.source, self.log)
            sd = build_stage_data(self.prepared, cfg.stage, plan.extras if plan is not None else None)
            if len(sd.val) == 0:
                raise ConfigError("tuning needs a validation split: data.val_fraction must be > 0, or data.val_by=year "
                                  "with a held-out year that has this stage's products")
            if len(sd.train) == 0:
                raise ConfigError(f"the {cfg.stage} stage has no training images with these split settings")
            self._stage_cache = (key, (planned.fusion, plan, sd))
        planned_fusion, plan, sd = self._stage_cache[1]
        # the encoder settings really used (from a fused source run they carry over), as run_stage logs them
        return dataclasses.replace(cfg, fusion=planned_fusion), plan, sd

    def __call__(self, trial: "optuna.Trial") -> float:
        import mlflow
        import optuna

        reap_dead_workers(trial.study, self.storage, self.log)
        params = self.space.sample(trial)
        cfg, plan, sd = self.stage(trial_config(self.base, params))
        for key, value in (("worker", _worker_id()), ("worker_trial", trial.number),
                           ("mlflow_parent_run_id", self.parent_run_id)):
            trial.set_user_attr(key, value)
        tags = {"optuna_study": self.study_name, "optuna_trial": trial.number, "search_space": self.space.name,
                "tuned_stage": self.space.stage, "tune_role": "trial", "seed": cfg.train.seed}
        retried = _frozen(trial).system_attrs.get("failed_trial")  # set by Optuna's retry callback
        if retried is not None:
            tags["retry_of_trial"] = retried
        state, pruned = "failed", None
        name = f"{self.study_name}/trial-{trial.number}"
        with tracking.start_run("tune", self.space.name, self.digest, run_name=name, config=to_dict(cfg), tags=tags,
                                nested=True, parent_run_id=self.parent_run_id) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                value = self._train(trial, cfg, plan, sd)
                state = "complete" if not math.isnan(value) else "failed"
            except optuna.TrialPruned as e:
                state, pruned = "pruned", e
            except KeyboardInterrupt:
                # A stopped worker (Ctrl-C, SIGTERM): the trial never got a fair evaluation; queue it again.
                retry_dead_trial(trial.study, _frozen(trial), self.log, why="interrupted", close_runs=False)
                raise
            finally:
                mlflow.set_tag("trial_state", state)
        if pruned is not None:
            raise pruned
        return value

    def _train(self, trial, cfg: ExperimentConfig, plan, sd) -> float:
        """Train one config; report the objective per epoch; prune when the pruner says so."""
        import optuna
        import torch

        from . import fusion
        from .experiment import setup_model
        from .losses import build_loss
        from .train import evaluate, fit, pick_device

        device = pick_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)  # the same initial weights as run_stage gives this config (--final)
        source = copy.deepcopy(self.source) if self.source is not None else None
        model, policy, lr_mult = setup_model(cfg, sd, source, device, self.log, plan=plan)
        criterion = fusion.wrap_criterion(cfg, build_loss(cfg.loss, sd.n_train))
        tracking.log_metrics({"n_classes": len(sd.classes), "n_train_images": len(sd.train),
                              "n_val_images": len(sd.val)})
        model.to(device)
        key = self.space.objective
        if not policy.get("train", True):  # imprint / ncm: nothing to train, the head is the result
            v = {f"val_{k}": x for k, x in evaluate(model, sd.val, device, criterion).items()}
            tracking.log_metrics(v, step=0)
            trial.report(v[key], 0)
            return float(v[key])

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            trial.report(float(metrics[key]), epoch)
            # after the last epoch nothing is left to save: keep the result instead of pruning it
            if epoch < cfg.train.epochs and trial.should_prune():
                tracking.log_metrics({"pruned_at_epoch": epoch})
                raise optuna.TrialPruned(f"{key} {metrics[key]:.4f} at epoch {epoch} is below the median "
                                         "of earlier trials")

        groups = fusion.param_groups(model, cfg.train.lr, lr_mult, cfg.train.weight_decay)
        prefix = f"trial {trial.number}: "
        result = fit(model, sd.train, sd.val, criterion, groups, cfg.train, device, on_epoch=on_epoch,
                     log=lambda m: self.log(prefix + m))
        best = result.history[result.best_epoch - 1] if result.best_epoch else {}
        value = float(result.best_val if key == "val_top1_mean" else best.get(key, float("nan")))
        tracking.log_metrics({"best_epoch": result.best_epoch, "epochs_run": len(result.history), "objective": value})
        return value


def _frozen(trial):
    """The FrozenTrial of a running trial (for the retry callback)."""
    for t in trial.study.get_trials(deepcopy=True):
        if t.number == trial.number:
            return t
    raise KeyError(trial.number)


# ---------------------------------------------------------------- the parent run's summary

@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's figure helpers warn about small studies (one value of a choice, equal importances): not news here."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def log_study_summary(study, space: SearchSpace, header: str = "", log=print) -> dict[str, Any]:
    """On the active parent run: Optuna's figures, the trials table, counts and the best configuration.

    Returns:
        ``{"best_value", "best_trial", "best_params", "best_yaml", "counts"}`` (best_* None without a complete trial).
    """
    import mlflow
    import optuna.visualization as vis
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    tracking.log_metrics({"n_trials": len(trials), "n_complete": counts["complete"], "n_pruned": counts["pruned"],
                          "n_failed": counts["fail"]})
    if trials:
        tracking.log_frame(study.trials_dataframe(), "tune/trials.csv")
    figures: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(study),
        "slice": lambda: vis.plot_slice(study),
    }
    names = space.param_names
    if len(names) >= 2:  # the space's first two parameters against each other (focal_weights: gamma x scheme)
        figures[f"contour_{names[0]}_x_{names[1]}"] = lambda: vis.plot_contour(study, params=names[:2])
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for name, make in figures.items():
        try:
            with _quiet_optuna():
                fig = make()
        except Exception as e:  # a figure is never worth losing the summary (importances need 2+ complete trials)
            log(f"figure {name} skipped: {e}")
            continue
        tracking.log_figure_html(fig, f"tune/figures/{name}.html")
    out: dict[str, Any] = {"best_value": None, "best_trial": None, "best_params": None, "best_yaml": None,
                           "counts": counts}
    if done:
        best = study.best_trial
        note = (f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, "
                f"validation {space.objective} {best.value:.4f}.")
        text = best_config_yaml(space, best.params, note, header)
        mlflow.log_text(text, f"tune/best/{space.name}.yaml")
        mlflow.set_tags({"best_trial": best.number, "best_params": json.dumps(best.params)})
        tracking.log_metrics({"best_value": best.value})
        out.update(best_value=best.value, best_trial=best.number, best_params=dict(best.params), best_yaml=text)
    return out


# ---------------------------------------------------------------- invocations

@dataclass
class TuneResult:
    """What one ``fashion tune`` invocation did."""

    study_name: str
    storage: str  # masked URL
    dashboard: str = ""  # the optuna-dashboard command
    parent_run_id: str | None = None
    final_run_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] | None = None
    best_yaml: str | None = None
    seconds: float = 0.0


def _header(study_name: str, storage: StudyStorage, profile: str, overrides: Mapping[str, Any]) -> str:
    opts = " ".join(f"-o {k}={v}" for k, v in overrides.items())
    return (f"Best configuration of Optuna study {study_name!r} ({storage.display}).\n"
            f"Trained in the study with: --profile {profile} {opts}".rstrip() + "\n"
            f"Save as experiments/<stage>/<name>.yaml and run it with the same --profile and -o options.")


def run_tune(space: SearchSpace, data: str | None, *, profile: str = "default",
             overrides: Mapping[str, Any] | None = None, study_name: str | None = None,
             storage: str = DEFAULT_STORAGE, n_trials: int = 20, timeout: float | None = None,
             seed: int | None = 0, pruning: bool = True, prune_from: int = 1, heartbeat: int = 60,
             experiment: str | None = None, create_only: bool = False, final: bool = False,
             source: str | None = "latest", prepared: "Prepared | None" = None, pruner=None,
             catch: tuple[type[BaseException], ...] = (RuntimeError,), log=print) -> TuneResult:
    """One ``fashion tune`` invocation: a worker of a study, and optionally its final run.

    Args:
        space: a loaded search space.
        data: the ``--data`` value.
        profile, overrides: applied to the base technique (the same for every worker; checked).
        study_name: default: the space's name.
        storage: an Optuna storage URL (see ``open_storage``).
        n_trials: trials this invocation runs (0: none).
        timeout: stop starting trials after this many seconds (None: no limit).
        seed: sampler seed (offset by the trials already in the study); None: random.
        pruning, prune_from: median pruning on per-epoch validation, from this epoch on.
        heartbeat: RDB storages: heartbeat seconds; a trial silent for twice this is failed and retried.
        create_only: create the storage, the study and the MLflow experiment, then return.
        final: afterwards, train the best configuration as a normal run tagged ``selected=true`` (reads test once).
        source: finetune spaces: the pretrained model (run id, runs:/, models:/ or latest).
        prepared: reuse prepared data.
        pruner: an Optuna pruner instead of ``make_pruner(pruning, prune_from)``.
        catch: trial exceptions that fail the trial without stopping the worker (e.g. out of memory).
    Returns:
        TuneResult.
    """
    import optuna

    from .data import prepare_data
    from .experiment import load_run_model, resolve_source

    t0 = time.perf_counter()
    check_storage_url(storage)  # a typo is an error before any data is read or any run starts
    overrides = dict(overrides or {})
    study_name = study_name or space.name
    base = base_config(space, profile, overrides)
    if base.fusion.mode == "metadata_only":
        raise ConfigError(f"{space.base_path}: the metadata-only baseline trains no network; nothing to tune here")
    p = prepared or prepare_data(data, base.data, log=log)
    experiment = experiment or tracking.experiment_name_for(p.root)
    tracking.set_experiment(experiment)
    src_run, src_model = None, None
    if space.stage == "finetune":
        from .models import transfer_policy

        if transfer_policy(base.transfer.method)["pretrained"]:
            src_run = resolve_source(source or "latest", experiment)
            src_model = load_run_model(src_run)
            # The architecture comes from the pretrained run, as in run_stage.
            base = base.replace(**{f"model.{k}": v for k, v in src_model[1]["model"].items() if k != "init"})
    settings = study_settings(space, base, p.digest, src_run)
    st = open_storage(storage, heartbeat, on_dead_trial=lambda s, t: retry_dead_trial(s, t, log))
    study = open_study(st, study_name, settings, seed=seed, pruner=pruner or make_pruner(pruning, prune_from))
    result = TuneResult(study_name=study_name, storage=st.display, dashboard=st.dashboard)
    n_before = len(study.get_trials(deepcopy=False))
    log(f"study {study_name!r} in {st.display}: {n_before} trial(s) so far; MLflow experiment {experiment!r}")
    if create_only:
        return result
    if n_trials > 0:
        reap_dead_workers(study, st, log)
        objective = Objective(space, base, without_test(p), p.digest, "", st, study_name, src_model, log)
        objective.stage(base)  # gathers the images once; no data is an error before the parent run starts
        tags = {"optuna_study": study_name, "optuna_storage": st.display, "search_space": space.name,
                "tuned_stage": space.stage, "tune_role": "study", "base_technique": space.base_path.stem,
                "profile": profile, "worker": _worker_id()}
        if src_run:
            tags["source_run_id"] = src_run
        with tracking.start_run("tune", space.name, p.digest, run_name=f"tune/{study_name}", config=to_dict(base),
                                tags=tags, description=space.description or None) as parent:
            import mlflow

            result.parent_run_id = parent.info.run_id
            mlflow.log_params({"tune.n_trials": n_trials, "tune.timeout": timeout, "tune.sampler_seed": seed,
                               "tune.pruning": pruning, "tune.prune_from": prune_from,
                               "tune.objective": space.objective})
            mlflow.log_text(space.path.read_text(), "tune/search_space.yaml")
            objective.parent_run_id = result.parent_run_id

            def progress(study_, trial) -> None:
                best = ""
                with contextlib.suppress(ValueError):
                    best = f"; best {study_.best_value:.4f} (trial {study_.best_trial.number})"
                value = f" {trial.value:.4f}" if trial.value is not None else ""
                params = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in trial.params.items()}
                log(f"trial {trial.number} {trial.state.name.lower()}{value} {params}{best}")

            try:
                study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=catch, callbacks=[progress])
            finally:
                summary = log_study_summary(study, space, _header(study_name, st, profile, overrides), log)
            for k in ("counts", "best_value", "best_trial", "best_params", "best_yaml"):
                setattr(result, k, summary[k])
    else:
        result.counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
                         for s in optuna.trial.TrialState}
    if final:
        result.final_run_id = final_run(study, space, data, profile=profile, overrides=overrides, prepared=p,
                                        experiment=experiment, source=src_run, tune_run_id=result.parent_run_id,
                                        header=_header(study_name, st, profile, overrides), log=log)
    result.seconds = time.perf_counter() - t0
    return result


def final_run(study, space: SearchSpace, data: str | None, *, profile: str = "default",
              overrides: Mapping[str, Any] | None = None, prepared: "Prepared | None" = None,
              experiment: str | None = None, source: str | None = None, tune_run_id: str | None = None,
              header: str = "", log=print) -> str:
    """Train the study's best configuration as a normal pretrain/finetune run tagged ``selected=true``.

    The config is the best-configuration YAML loaded like any technique file (same profile and
    overrides as the study), so the run is exactly what ``fashion pretrain -t <that file>`` would do.
    Returns:
        The run id.
    """
    from optuna.trial import TrialState

    from .experiment import run_stage

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet; run some trials before --final")
    best = study.best_trial
    note = (f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, "
            f"validation {space.objective} {best.value:.4f}.")
    text = best_config_yaml(space, best.params, note, header)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{space.name}.yaml"
        path.write_text(text)
        cfg = load_experiment(path, overrides=dict(overrides or {}), profile=profile, stage=space.stage)
    expected = trial_config(base_config(space, profile, overrides), best.params)
    if space.stage == "pretrain":  # (finetune: run_stage takes the architecture from the source run)
        mismatch = {k: v for k, v in flatten(to_dict(cfg)).items()
                    if k not in ("description",) and flatten(to_dict(expected)).get(k) != v}
        if mismatch:  # the YAML must reproduce the trial exactly; anything else is a bug worth stopping for
            raise RuntimeError(f"best-configuration YAML does not reproduce trial {best.number}: {mismatch}")
    log(f"final run of study {study.study_name!r}: trial {best.number} {best.params} "
        f"(validation {space.objective} {best.value:.4f})")
    tags = {"selected": "true", "optuna_study": study.study_name, "optuna_trial": best.number,
            "search_space": space.name, "tuned_val_objective": f"{best.value:.6f}"}
    if tune_run_id:
        tags["tune_run_id"] = tune_run_id
    run_id = run_stage(cfg, data, source=source, experiment=experiment, tags=tags, prepared=prepared, log=log)
    if run_id:
        study.set_user_attr("final_run_id", run_id)
        if tune_run_id:
            from mlflow.tracking import MlflowClient

            MlflowClient().set_tag(tune_run_id, "final_run_id", run_id)
    return run_id

"""Dead workers: a trial whose worker died is failed, its MLflow runs closed, and its parameters queued again."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashion_core.tuning.storage import StudyStorage

logger = logging.getLogger(__name__)

MAX_RETRY = 2  # a trial whose worker died is queued again at most this many times


# ---------------------------------------------------------------- dead workers


def worker_id() -> str:
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


def retry_dead_trial(study, trial, why: str = "", close_runs: bool = True) -> None:
    """A trial whose worker died: close its MLflow runs and queue its parameters again (at most MAX_RETRY times).

    Args:
        study, trial: the study and the dead trial (a FrozenTrial), as Optuna's heartbeat callback gets them.
        why: for the warning it logs.
        close_runs: end the trial's MLflow run FAILED and its parent KILLED (False when the worker ends them itself).
    """
    import optuna

    if close_runs:
        _close_dead_runs(trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    why = why or f"its worker ({trial.user_attrs.get('worker', 'unknown')}) died"
    logger.warning(f"trial {trial.number}: {why}; failed and queued again with the same parameters")


def retried_trial_number(trial) -> int | None:
    """The number of the trial a (frozen) trial re-runs after its worker died, or None (Optuna's retry callback)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reap_dead_workers(study, storage: StudyStorage) -> int:
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
            retry_dead_trial(study, t)
            reaped += 1
    return reaped

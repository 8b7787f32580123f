"""Heartbeats on running MLflow runs, and the sweep that ends the runs whose process is gone.

A crash (``kill -9``, an out-of-memory kill, a lost machine) runs no ``finally``: its runs would stay
RUNNING for ever. So every run this process holds open carries three tags:

- ``heartbeat``: unix seconds, refreshed by one daemon thread per process every ``FASHION_HEARTBEAT_S``
  seconds (default 60) until the run ends;
- ``heartbeat_s``: that interval, so a reader judges the run by its writer's period, not its own;
- ``heartbeat_process``: ``host/pid-namespace:pid:start-time`` of the process that beats it.

A RUNNING run is dead (``verdict``) when its process is gone (readable only on the same machine),
when its heartbeat is older than ``STALE_BEATS`` intervals, or when it has none and started longer ago
than that. ``sweep`` ends an experiment's dead runs KILLED with a ``killed_reason`` tag; a grid, a tune
and every stage run that starts at the top level call it (``tracking.start_run``, ``grid.run_grid``).
The store is the only thing shared: no server, no lock file.

    FASHION_HEARTBEAT_S=5 PYTHONPATH=. python -c "from fashion_core.tracking import heartbeat; print(heartbeat.run_tags())"
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone

from fashion_core.config.checks import ConfigError

logger = logging.getLogger(__name__)

INTERVAL_ENV = "FASHION_HEARTBEAT_S"
DEFAULT_INTERVAL = 60.0
# A beat can be late by a busy database or a loaded machine; five missed ones are a dead process, not a slow one.
STALE_BEATS = 5
TAG, INTERVAL_TAG, PROCESS_TAG, REASON_TAG = "heartbeat", "heartbeat_s", "heartbeat_process", "killed_reason"


def interval() -> float:
    """Seconds between two beats (``FASHION_HEARTBEAT_S``, default 60)."""
    text = os.environ.get(INTERVAL_ENV, "")
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{INTERVAL_ENV}={text!r}: expected a positive number of seconds, e.g. 60")
    return value


def _machine() -> str:
    """This machine as a process sees it: the host name and, on Linux, the pid namespace.

    Two containers may share a host name but not their process ids: a pid is only checked where both match.
    """
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/{ns}"


def _start_time(pid: int) -> float | None:
    """When a process started (None when it is gone, a zombie, or psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_id(pid: int | None = None) -> str:
    """``machine:pid:start`` of a process (default: this one); the start time tells a reused pid apart."""
    pid = pid or os.getpid()
    start = _start_time(pid)
    return f"{_machine()}:{pid}:{start:.2f}" if start is not None else f"{_machine()}:{pid}:"


def process_gone(ident: str) -> bool:
    """Whether the process a ``heartbeat_process`` tag names has ended; False when it cannot be told (another machine)."""
    parts = ident.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _machine():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    try:
        import psutil  # noqa: F401
    except ImportError:  # no start times: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    start = _start_time(pid)
    if start is None or _zombie(pid):  # a killed worker its parent has not reaped yet has ended all the same
        return True
    return bool(parts[2]) and abs(start - float(parts[2])) > 1.0  # the pid now names another process


def _zombie(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_tags() -> dict[str, str]:
    """The tags a run starts with: a first beat, the interval and this process."""
    return {TAG: f"{time.time():.1f}", INTERVAL_TAG: f"{interval():g}", PROCESS_TAG: process_id()}


class _Beater:
    """One daemon thread per process that refreshes the ``heartbeat`` tag of every run held open here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: collections.Counter[str] = collections.Counter()
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        # set when a run starts: the loop wakes and reads the interval again (a run may ask for a shorter one)
        self.wake = threading.Event()

    def add(self, run_id: str) -> None:
        with self.lock:
            if self.pid != os.getpid():  # a forked child inherits the counts but not the thread
                self.runs, self.thread, self.pid = collections.Counter(), None, os.getpid()
            self.runs[run_id] += 1
            self.wake.set()
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="fashion-heartbeat", daemon=True)
                self.thread.start()

    def remove(self, run_id: str) -> None:
        with self.lock:
            self.runs[run_id] -= 1
            if self.runs[run_id] <= 0:
                del self.runs[run_id]

    def _loop(self) -> None:
        from mlflow.tracking import MlflowClient

        while True:
            self.wake.wait(interval())
            self.wake.clear()
            with self.lock:
                ids = list(self.runs)
                if not ids:  # nothing open: the thread ends, the next run starts a new one
                    self.thread = None
                    return
            client = MlflowClient()
            for run_id in ids:
                if run_id not in self.runs:  # ended meanwhile
                    continue
                try:
                    client.set_tag(run_id, TAG, f"{time.time():.1f}")
                except Exception:  # noqa: BLE001 - a busy store or a run deleted meanwhile: the next beat tries again
                    pass


_BEATER = _Beater()


def start(run_id: str) -> None:
    """Beat ``run_id`` from now on (counted: nested holders each call ``stop``)."""
    _BEATER.add(run_id)


def stop(run_id: str) -> None:
    _BEATER.remove(run_id)


@contextlib.contextmanager
def beating(run_id: str) -> Iterator[None]:
    """Beat ``run_id`` while the block runs."""
    start(run_id)
    try:
        yield
    finally:
        stop(run_id)


def beaten_here() -> set[str]:
    """The runs this process beats now."""
    with _BEATER.lock:
        return set(_BEATER.runs) if _BEATER.pid == os.getpid() else set()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def last_seen(run) -> float:
    """Unix seconds of a run's last heartbeat, else of its start."""
    try:
        return float(run.data.tags[TAG])
    except (KeyError, ValueError):
        return run.info.start_time / 1000


def verdict(run, now: float | None = None) -> str | None:
    """Why a RUNNING run is dead (the ``killed_reason``), or None while it may be alive."""
    if run.info.run_id in beaten_here():
        return None
    now = time.time() if now is None else now
    tags = run.data.tags
    seen = last_seen(run)
    ident = tags.get(PROCESS_TAG, "")
    if ident and process_gone(ident):
        pid = ident.rsplit(":", 2)[1]
        return f"its process is gone (pid {pid} on {socket.gethostname()}; last heartbeat {_when(seen)})"
    try:
        theirs = float(tags.get(INTERVAL_TAG, 0))
    except ValueError:
        theirs = 0.0
    window = STALE_BEATS * max(interval(), theirs)
    if now - seen <= window:
        return None
    if TAG in tags:
        return f"stale heartbeat (last seen {_when(seen)}, {now - seen:.0f} s ago)"
    return f"stale heartbeat (none since its start at {_when(seen)}, {now - seen:.0f} s ago)"


def end_dead(client, run, reason: str) -> None:
    """End a dead RUNNING run KILLED, with the reason, at its last sign of life."""
    end = max(run.info.start_time, int(last_seen(run) * 1000))
    client.set_tag(run.info.run_id, REASON_TAG, reason[:5000])
    client.set_terminated(run.info.run_id, "KILLED", end_time=end)


def sweep(experiment_id: str) -> list[str]:
    """End the experiment's dead RUNNING runs KILLED (``killed_reason`` says why), a warning each; returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ended = []
    now = time.time()
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000):
        reason = verdict(run, now)
        if reason is None:
            continue
        try:
            end_dead(client, run, reason)
        except Exception:  # noqa: BLE001 - ended or deleted by someone else meanwhile
            continue
        ended.append(run.info.run_id)
        logger.warning(f"ended run {run.info.run_id} ({run.info.run_name}) KILLED: {reason}")
    return ended

"""A local process pool that outlives its workers: a dead worker's calls are resubmitted to a new pool.

``concurrent.futures.ProcessPoolExecutor`` breaks for good when one worker process dies (killed,
out of memory, a crash in native code) and fails every call it holds with ``BrokenProcessPool``.
``RestartingPool`` wraps it the way Ray treats a lost task: the pool is built anew, the call whose
worker died is rerun up to ``max_retries`` times, the calls that were merely caught in the breakage
are resubmitted without counting an attempt. ``fashion grid --jobs N`` runs its cells on one
(``executors.local_pool``); ``grid.run_cell`` closes a dead attempt's MLflow run KILLED before the rerun.

    PYTHONPATH=. python -c "from fashion_core.grid.worker_pool import RestartingPool; help(RestartingPool)"
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _marked(mark: str, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
    """In a worker: note which process runs this call (a file holding its pid), then run it."""
    Path(mark).write_text(str(os.getpid()))
    return fn(*args, **kwargs)


class _Call:
    """A call submitted to a ``RestartingPool``: what to run, the caller's future, the attempt now running."""

    def __init__(self, token: int, fn: Callable, args: tuple, kwargs: dict):
        self.token, self.fn, self.args, self.kwargs = token, fn, args, kwargs
        self.outer: cf.Future = cf.Future()
        self.inner: cf.Future | None = None
        self.pool: cf.ProcessPoolExecutor | None = None
        self.attempt = 0  # attempts started, the first included
        self.lost = 0  # attempts whose worker process died


class RestartingPool(cf.Executor):
    """A ``ProcessPoolExecutor`` that outlives its workers, as Ray outlives a dead task's worker.

    When a worker process dies (killed, out of memory, a crash in native code), the standard pool
    breaks and fails every call it holds with ``BrokenProcessPool``. Here the pool is built anew and
    the unfinished calls are resubmitted: the call whose worker died counts a lost attempt (failed with
    ``BrokenProcessPool`` after ``max_retries`` reruns), the others (whose workers the broken pool
    stopped, or that had not started) are resubmitted as they were. A worker that died outside any
    call (e.g. at start-up) counts against every call the pool held, so a pool that cannot start
    ends. The caller's futures complete once, with the last attempt's outcome.

    Args:
        make_pool: builds a fresh ``ProcessPoolExecutor`` (at the start and after each breakage).
        max_retries: reruns of a call whose worker died.

    A restart is announced as a warning of this module's logger.
    """

    def __init__(
        self,
        make_pool: Callable[[], cf.ProcessPoolExecutor],
        max_retries: int = 2,
    ):
        self._make = make_pool
        self._pool = make_pool()
        self.max_retries = max_retries
        self._lock = threading.RLock()
        self._calls: dict[int, _Call] = {}
        self._by_future: dict[cf.Future, _Call] = {}  # the caller's future -> its call
        self._dead: dict = {}  # broken pool -> (pids of its dead workers, tokens of the calls they ran)
        self._marks = Path(tempfile.mkdtemp(prefix="fashion-pool-"))
        self._closed = False
        self.restarts = 0

    @property
    def _processes(self) -> dict:
        """The current pool's worker processes (``stop_pool`` stops them)."""
        return getattr(self._pool, "_processes", None) or {}

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            call = _Call(len(self._calls), fn, args, kwargs)
            self._calls[call.token] = call
            self._by_future[call.outer] = call
            self._launch(call)
        return call.outer

    def started(self, futures) -> set:
        """The futures among ``futures`` whose call a worker is running now (or ran): its attempt's start mark exists.

        A call that waits in the queue, or whose worker died and that waits for its rerun, has not started.
        """
        with self._lock:
            calls = [(f, self._by_future.get(f)) for f in futures]
            marks = [(f, self._mark(c)) for f, c in calls if c is not None]
        return {f for f, mark in marks if f.done() or mark.exists()}

    def _mark(self, call: _Call) -> Path:
        return self._marks / f"{call.token}-{call.attempt}"

    def _launch(self, call: _Call) -> None:
        """Submit the call's next attempt to the current pool (rebuilt first when it is broken)."""
        with self._lock:
            call.attempt += 1
            while True:
                pool = self._pool
                try:
                    inner = pool.submit(_marked, str(self._mark(call)), call.fn, *call.args, **call.kwargs)
                    break
                except cf.process.BrokenProcessPool:
                    self._rebuild(pool)
                    if self._pool is pool:  # shut down meanwhile: not rebuilt
                        raise RuntimeError("cannot submit to a pool that was shut down") from None
            call.inner, call.pool = inner, pool
        inner.add_done_callback(lambda f: self._done(call, f))

    def _rebuild(self, broken: cf.ProcessPoolExecutor) -> None:
        """A new pool in place of a broken one (once per broken pool)."""
        with self._lock:
            if self._pool is broken and not self._closed:
                self.restarts += 1
                self._pool = self._make()

    def _blame(self, pool: cf.ProcessPoolExecutor) -> tuple[set[int], set[int]]:
        """A broken pool's dead workers (pids) and the calls that were running on them (tokens).

        Read once, at the pool's first failed call: the pool fails its calls before it stops its
        other workers, so only the workers that died by themselves have ended then. Their sentinels
        say so (an exit code may not be readable yet: a process closes its files a moment before it
        can be reaped). When no call ran on a dead worker (it died at start-up), every call the pool
        held is blamed, so that a pool that cannot start ends.
        """
        from multiprocessing.connection import wait

        if pool not in self._dead:
            procs = list((getattr(pool, "_processes", None) or {}).values())
            ended = set(wait([p.sentinel for p in procs], timeout=0)) if procs else set()
            died = {p.pid for p in procs if p.sentinel in ended or p.exitcode is not None}
            held = [c for c in self._calls.values() if c.pool is pool and not c.outer.done()]
            blamed = {c.token for c in held if self._started_on(c) in died} or {c.token for c in held}
            self._dead[pool] = (died, blamed)
        return self._dead[pool]

    def _started_on(self, call: _Call) -> int | None:
        """The pid of the worker that ran the call's current attempt, None when it never started."""
        try:
            return int(self._mark(call).read_text())
        except (OSError, ValueError):
            return None

    def _done(self, call: _Call, f: cf.Future) -> None:
        """An attempt ended: pass its outcome on, or rerun it when its pool broke."""
        if f is not call.inner or call.outer.done():
            return
        if f.cancelled():
            call.outer.cancel()
            return
        error = f.exception()
        if not isinstance(error, cf.process.BrokenProcessPool) or self._closed:
            self._settle(call, f)
            return
        with self._lock:
            if self._closed:
                self._settle(call, f)
                return
            assert call.pool is not None  # _launch set it before it registered this callback
            died, blamed = self._blame(call.pool)
            if call.token in blamed:
                call.lost += 1
            if call.lost > self.max_retries:
                call.outer.set_exception(
                    cf.process.BrokenProcessPool(
                        f"its worker process died {call.lost} times (max retries {self.max_retries})"
                    )
                )
                return
            if self._pool is call.pool:
                held = sum(c.pool is call.pool and not c.outer.done() for c in self._calls.values())
                logger.warning(
                    f"a worker process died (pid {', '.join(map(str, sorted(died))) or '?'}): the pool is "
                    f"restarted and its {held} unfinished calls resubmitted"
                )
            self._rebuild(call.pool)
            self._launch(call)

    @staticmethod
    def _settle(call: _Call, f: cf.Future) -> None:
        if f.exception() is not None:
            call.outer.set_exception(f.exception())
        else:
            call.outer.set_result(f.result())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the current pool down; no call is resubmitted from now on (``cancel_futures``: queued calls dropped)."""
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            shutil.rmtree(self._marks, ignore_errors=True)

"""A local pool that outlives its workers: a dead worker's call reruns, ``--max-retries`` bounds it, a grid completes.

The pool tests run plain functions in spawned workers (this module is imported there: keep its top
imports light); the grid test kills a
``--jobs 2`` worker in the middle of a smoke cell on generated data.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from fashion_core.grid.worker_pool import RestartingPool
from tests.helpers.grid import run_grid_killing_one_cell
from tests.helpers.store import module_store

EXP = Path(__file__).resolve().parents[1] / "experiments"
TINY = {"data.top_k": 4, "train.epochs": 1}


def _die_once(flag: str, value: int) -> int:
    """In a worker: the first call dies like an out-of-memory kill; a rerun returns ``value``."""
    if not Path(flag).exists():
        Path(flag).write_text("died")
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def _always_die(delay: float) -> None:
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def _slow(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def _pool(workers: int, max_retries: int) -> RestartingPool:
    return RestartingPool(
        lambda: cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")), max_retries=max_retries
    )


def test_a_dead_worker_is_replaced_and_every_call_finishes(tmp_path, caplog):
    with _pool(2, 1) as pool:
        dying = pool.submit(_die_once, str(tmp_path / "flag"), 7)
        others = [pool.submit(_slow, v, 1.0) for v in range(3)]  # one runs beside it, two wait in the queue
        assert dying.result(timeout=120) == 7
        assert [f.result(timeout=120) for f in others] == [0, 1, 2]
        messages = [r.getMessage() for r in caplog.records if r.name == "fashion_core.grid.worker_pool"]
        assert pool.restarts == 1 and len(messages) == 1 and "restarted" in messages[0]


def test_only_the_call_whose_worker_died_counts_its_retries(tmp_path):
    """A call that kills its worker every time fails after max_retries reruns; the calls beside it finish."""
    with _pool(3, 1) as pool:
        doomed = pool.submit(_always_die, 0.5)
        beside = [pool.submit(_slow, v, 2.0) for v in range(2)]  # running when the pool first broke
        with pytest.raises(cf.process.BrokenProcessPool, match="died 2 times"):
            doomed.result(timeout=120)
        assert [f.result(timeout=120) for f in beside] == [0, 1]
        # The first break rebuilds the pool for the reruns; the second rebuilds it only if the calls beside
        # were still running then (on a loaded machine they may have finished before the doomed call's rerun
        # started): a pool is rebuilt for unfinished calls, not for one that is out of retries.
        assert pool.restarts in (1, 2)


def test_no_retry_with_max_retries_0_and_none_after_shutdown(tmp_path):
    pool = _pool(1, 0)
    with pytest.raises(cf.process.BrokenProcessPool, match="died 1 times"):
        pool.submit(_always_die, 0.0).result(timeout=120)
    assert pool.submit(_slow, 5, 0.0).result(timeout=120) == 5  # the rebuilt pool takes new calls
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(_slow, 1, 0.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory, dataset):
    with module_store(tmp_path_factory, "worker-pool") as (root, mpatch):
        mpatch.setattr("fashion_core.grid.scheduler.code_version", lambda: "c0ffee+pool")
        mpatch.setenv("FASHION_PROGRESS", "0")
        yield root


@pytest.mark.integration  # a --jobs 2 pool of worker processes, one killed
def test_jobs_2_grid_survives_a_worker_killed_in_a_cell(store, dataset):
    from fashion_core.grid.plan import plan_grid

    tasks = plan_grid(EXP, ["pretrain/baseline", "finetune/ncm"], seeds=[0, 1], profile="smoke", overrides=TINY)
    _, children = run_grid_killing_one_cell(
        tasks, dataset, experiment="pool", jobs=2, threads_per_cell=1, max_retries=1
    )
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)


def test_a_call_counts_as_started_only_once_a_worker_runs_it():
    with _pool(1, 0) as pool:
        first = pool.submit(_slow, 0, 5.0)
        queued = [pool.submit(_slow, v, 0.0) for v in (1, 2)]
        deadline = time.time() + 120
        while not pool.started([first]) and time.time() < deadline:
            time.sleep(0.05)
        assert pool.started([first, *queued]) == {first}  # the one worker runs the first call; two wait
        assert [f.result(timeout=120) for f in queued] == [1, 2]
        assert pool.started([first, *queued]) == {first, *queued}

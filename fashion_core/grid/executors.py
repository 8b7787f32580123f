"""Where a grid's cells run: in the grid's process, in local worker processes, or as Ray tasks.

Each is a ``concurrent.futures.Executor`` (Ray's object refs become futures with ``ref.future()``),
so ``grid.run_grid`` drives all three the same way; nothing here schedules or queues by
itself:

- ``InlineExecutor``: runs a cell when it is submitted (``--jobs 1``, the default);
- ``local_pool``: a ``ProcessPoolExecutor`` (spawn) of ``--jobs`` workers; each worker owns a
  share of the CPU cores (``torch.set_num_threads``) and, on a GPU machine, a device or a fraction
  of one (``--gpus-per-cell``) through ``CUDA_VISIBLE_DEVICES``; when a worker dies the pool is
  rebuilt and its unfinished cells resubmitted (``RestartingPool``, ``--max-retries`` for the cell
  whose worker died);
- ``RayExecutor``: every cell a Ray task with its resource needs (``num_cpus``, ``num_gpus``) on a
  running cluster (``--ray auto|ADDRESS``); a task whose worker dies is retried by Ray
  (``max_retries``), and ``grid.run_cell`` closes the dead attempt's run first.

Workers open the image cache themselves (``prepare_data`` on the same ``--data``); no image
travels through a pipe or Ray's object store.

    fashion grid --profile quick --jobs 2 --data DATA
    fashion grid --profile default --jobs 8 --gpus-per-cell 1 --data DATA     # one cell per GPU
    fashion grid --profile quick --ray auto --data /shared/DATA                # a Ray cluster
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fashion_core.config.checks import ConfigError
from fashion_core.grid.worker_pool import RestartingPool

if TYPE_CHECKING:
    from ray.actor import ActorHandle

PROJECT_DIR = Path(__file__).resolve().parents[2]


class InlineExecutor(cf.Executor):
    """Runs each call at submit time in this process; returns a finished future."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - a KeyboardInterrupt must still stop the grid
            if not isinstance(e, Exception):
                raise
            f.set_exception(e)
        return f

    def started(self, futures) -> set:
        """Every call has run by the time ``submit`` returns."""
        return set(futures)


def gpu_slots(n_gpus: int, gpus_per_cell: float) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` values, one per concurrent cell: a GPU shared by 1/f cells, or f GPUs per cell.

    >>> gpu_slots(2, 0.5), gpu_slots(4, 2)
    (['0', '0', '1', '1'], ['0,1', '2,3'])
    """
    if n_gpus <= 0 or gpus_per_cell <= 0:
        return []
    if gpus_per_cell < 1:
        per = int(math.floor(1 / gpus_per_cell + 1e-9))
        return [str(g) for g in range(n_gpus) for _ in range(per)]
    k = int(math.ceil(gpus_per_cell))
    return [",".join(str(g) for g in range(s, s + k)) for s in range(0, n_gpus - k + 1, k)]


def _init_worker(slots, threads: int) -> None:
    """A local worker process: claim a GPU slot (when any) before CUDA starts, and its share of the cores."""
    import torch

    if slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get_nowait()
    os.environ["FASHION_PROGRESS"] = "0"  # the grid's status line replaces many interleaved bars
    torch.set_num_threads(threads)


def local_pool(
    jobs: int,
    gpus_per_cell: float = 0.0,
    n_gpus: int | None = None,
    threads_per_cell: int | None = None,
    max_retries: int = 2,
) -> tuple[cf.Executor, dict]:
    """A pool of worker processes for ``--jobs N`` that survives a dead worker; returns it and what it gave each cell.

    Args:
        jobs: cells at once (capped by the GPU slots when cells use GPUs).
        gpus_per_cell: 0 = CPU cells; 0.25 = four cells share a GPU; 1 = a GPU each; 2 = two each.
        n_gpus: GPUs to use (default: all that torch sees).
        threads_per_cell: CPU threads per cell (default: the cores divided by the jobs, at least 1).
        max_retries: reruns of a cell whose worker process died (``RestartingPool``).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA and fork do not mix; a fresh interpreter per worker
    values: list[str] = []
    if gpus_per_cell > 0:
        if n_gpus is None:
            import torch

            n_gpus = torch.cuda.device_count()
        values = gpu_slots(n_gpus, gpus_per_cell)
        if not values:
            raise ConfigError(f"--gpus-per-cell {gpus_per_cell}: no GPU slot on this machine ({n_gpus} GPUs)")
        jobs = min(jobs, len(values))
    threads = threads_per_cell or max(1, (os.cpu_count() or 1) // jobs)

    def make() -> cf.ProcessPoolExecutor:
        """A fresh pool, with a full queue of GPU slots (a rebuilt pool's workers claim them again)."""
        slots = None
        if values:
            slots = ctx.Queue()
            for v in values[:jobs]:
                slots.put(v)
        return cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(slots, threads)
        )

    pool = RestartingPool(make, max_retries)
    return pool, {"jobs": jobs, "threads_per_cell": threads, "gpus_per_cell": gpus_per_cell, "max_retries": max_retries}


def stop_pool(pool: cf.Executor) -> None:
    """End a pool now: queued cells are cancelled and running workers get SIGTERM (their runs end KILLED)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # ProcessPoolExecutor's workers
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()


def absolute_tracking_uri(uri: str) -> str:
    """A ``sqlite:///relative.db`` made absolute, so that workers in other folders write the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _ray_cell(fn: Callable, cell: Any, threads: int, board: Any = None, key: int = -1) -> Any:
    """A cell inside a Ray worker: tell the board it started, its CPU share, no progress bars, then the cell."""
    import torch

    if board is not None:
        board.start.remote(key)  # not waited for: the board only feeds the grid's status line
    os.environ["FASHION_PROGRESS"] = "0"
    torch.set_num_threads(max(1, threads))
    return fn(cell)


class StartBoard:
    """A Ray actor (no CPU of its own) that the cells' tasks tell when they start; the grid polls it.

    Ray's task-state API needs the dashboard, which a cluster may run without; this needs nothing.
    """

    def __init__(self) -> None:
        self._started: set[int] = set()

    def start(self, key: int) -> None:
        self._started.add(key)

    def started(self) -> set[int]:
        return set(self._started)


# A grid cell's line as a worker prints it (grid_cells.run_cell): ``[stage/technique/seedK] ...``.
CELL_LINE = r"^\[[^\]\s]+/seed\d+\] "


def keep_cell_lines() -> bool:
    """Stop the Ray driver from collapsing the grid's cell lines; True when its log deduplicators were told.

    Ray's driver folds lines that differ only in words with digits, from two or more workers within
    five seconds, into the latest one "[repeated Nx across cluster]" (``RAY_DEDUP_LOGS``): the lines of
    cells that differ only in their seed, run id or figures, so a cell's lines would vanish. Cell lines
    (``CELL_LINE``) are let through, as ``RAY_DEDUP_LOGS_ALLOW_REGEX`` does; other lines (a warning
    every worker prints) are still folded. A user's own ``RAY_DEDUP_LOGS_ALLOW_REGEX`` is left alone.
    Uses Ray's driver-side deduplicators (``ray._private.ray_logging``), read when ``ray`` is imported,
    so the environment variable would come too late here.
    """
    import re

    if os.environ.get("RAY_DEDUP_LOGS_ALLOW_REGEX"):
        return False
    try:
        from ray._private import ray_logging
    except ImportError:
        return False
    told = False
    for name in ("stdout_deduplicator", "stderr_deduplicator"):
        dedup = getattr(ray_logging, name, None)
        if dedup is not None and hasattr(dedup, "allow_re"):
            dedup.allow_re = re.compile(CELL_LINE)
            told = True
    return told


class RayExecutor(cf.Executor):
    """Cells as Ray tasks on a running cluster; ``submit(fn, cell)`` returns the task's future.

    Args:
        address: ``auto`` (the cluster this machine joined with ``ray start``) or ``HOST:PORT``.
        cpus_per_cell, gpus_per_cell: each task's resource request.
        max_retries: how often Ray reruns a cell whose worker or node died.
    """

    def __init__(self, address: str = "auto", cpus_per_cell: float = 1, gpus_per_cell: float = 0, max_retries: int = 2):
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs the ray package: pip install 'fashion-grid[ray]'") from None
        import mlflow

        env = {
            "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            "MLFLOW_TRACKING_URI": absolute_tracking_uri(mlflow.get_tracking_uri()),
            "FASHION_PROGRESS": "0",
        }
        for k in (
            "FASHION_CACHE",
            "FASHION_HEARTBEAT_S",
            "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL",
        ):
            if os.environ.get(k):
                env[k] = os.environ[k]
        keep_cell_lines()
        self._own = not ray.is_initialized()
        if self._own:
            try:
                ray.init(
                    address=address,
                    runtime_env={"env_vars": env},
                    log_to_driver=True,
                    # Ray annotates logging_level as int, yet takes a level name too (its own default is one)
                    logging_level="warning",  # type: ignore[arg-type]
                    configure_logging=True,
                )
            except ConnectionError:  # no cluster at that address (a laptop, a first try): say how to get one
                raise ConfigError(
                    f"--ray {address}: no running Ray cluster found; start one with `ray start --head` "
                    "(then --ray auto), give --ray HOST:PORT of a running one, or leave out --ray "
                    "(--jobs N runs cells in local processes)"
                ) from None
        self._ray = ray
        total = ray.cluster_resources()
        fits = [total.get("CPU", 0) / cpus_per_cell] + ([total.get("GPU", 0) / gpus_per_cell] if gpus_per_cell else [])
        self.info = {
            "ray_address": address,
            "cpus_per_cell": cpus_per_cell,
            "gpus_per_cell": gpus_per_cell,
            "max_retries": max_retries,
            "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
            "concurrency": max(1, int(min(fits))),
        }
        self._task = ray.remote(_ray_cell).options(
            num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=max_retries, retry_exceptions=False
        )
        self._threads = max(1, int(cpus_per_cell))
        self._refs: list = []
        self._keys: dict[cf.Future, int] = {}  # a cell's future -> its key on the start board
        self._board = cast("ActorHandle[StartBoard]", ray.remote(num_cpus=0)(StartBoard).remote())
        self._seen: set[int] = set()  # keys the board said started, as of the last answer
        self._asking = None  # the board's answer on its way

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        if kwargs or len(args) != 1:
            raise TypeError("RayExecutor.submit(fn, cell)")
        key = len(self._refs)
        ref = self._task.remote(fn, args[0], self._threads, self._board, key)
        self._refs.append(ref)
        future = ref.future()
        self._keys[future] = key
        return future

    def started(self, futures) -> set:
        """The futures among ``futures`` whose task has started on a worker, as the start board last said (never waits).

        A task that Ray reruns after losing its worker stays started.
        """
        if self._asking is not None and self._ray.wait([self._asking], timeout=0)[0]:
            try:
                self._seen = self._ray.get(self._asking)
            except Exception:  # noqa: BLE001 - the board is only for the status line
                pass
            self._asking = None
        if self._asking is None:
            self._asking = self._board.started.remote()
        return {f for f in futures if f.done() or self._keys.get(f) in self._seen}

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Disconnect; with ``cancel_futures`` (an interrupted grid) the cells still queued or running are cancelled."""
        if cancel_futures:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a finished task cannot be cancelled, nor needs to be
                    pass
        try:  # in a Ray session that outlives this grid (not ours to shut down) the board would linger
            self._ray.kill(self._board)
        except Exception:  # noqa: BLE001 - a board already gone needs no ending
            pass
        if self._own and self._ray.is_initialized():
            self._ray.shutdown()


def worker_place() -> dict[str, str]:
    """Where this process runs a cell: host, worker (Ray node id or process id) and device."""
    import socket

    worker = f"pid {os.getpid()}"
    ray = sys.modules.get("ray")  # imported only in a Ray worker
    if ray is not None and ray.is_initialized():
        worker = f"node {ray.get_runtime_context().get_node_id()[:12]} pid {os.getpid()}"
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"cuda (GPU {gpus})" if gpus else "cuda"
        else:
            device = f"cpu ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return {"host": socket.gethostname(), "worker": worker, "device": device}


@contextlib.contextmanager
def local_cluster(
    nodes: int = 2,
    cpus_per_node: int = 1,
    log_dir: str | Path | None = None,
    timeout: float = 180,
    own_temp_dirs: bool = True,
) -> Iterator[str]:
    """A throwaway Ray cluster on 127.0.0.1 (a head and ``nodes - 1`` workers); yields its address.

    Each node is a ``ray start --block`` process of its own, stopped by its process id at the end
    (never ``ray stop``, which would stop every Ray node of the machine). For tests and benchmarks.
    Each node has its own ``--temp-dir`` (removed at the end): nodes of one machine otherwise share
    the session's log folder, and every node's log monitor sends every worker's lines to the driver,
    which prints each line once per node (``own_temp_dirs=False`` shows it).
    """
    import shutil
    import socket
    import subprocess
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("ray")
    ray_cli = str(exe) if exe.exists() else "ray"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    common = [
        "--num-cpus",
        str(cpus_per_node),
        "--num-gpus",
        "0",
        "--node-ip-address",
        "127.0.0.1",
        "--block",
        "--disable-usage-stats",
    ]
    logs = Path(log_dir or tempfile.mkdtemp(prefix="fashion-ray-"))
    logs.mkdir(parents=True, exist_ok=True)
    temps = Path(tempfile.mkdtemp(prefix="fray-"))  # short: Ray's socket paths live under it (107 bytes at most)
    procs: list[subprocess.Popen] = []

    def node(name: str, args: list[str]) -> None:
        own = ["--temp-dir", str(temps / name)] if own_temp_dirs else []
        with open(logs / f"{name}.log", "w") as out:
            procs.append(
                subprocess.Popen(
                    [ray_cli, "start", *args, *common, *own], env=env, stdout=out, stderr=subprocess.STDOUT
                )
            )

    def wait_for(n: int) -> None:
        """Until ``n`` nodes are alive (asked by a child process: this one never joins the cluster)."""
        code = (
            f"import ray, sys; ray.init(address={address!r}, logging_level='error'); "
            "sys.stdout.write(str(len([x for x in ray.nodes() if x['Alive']])))"
        )
        deadline, out = time.time() + timeout, None
        while time.time() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
            if out.stdout.strip() == str(n):
                return
            time.sleep(1)
        raise RuntimeError(
            f"the local Ray cluster at {address} did not reach {n} nodes (logs in {logs})"
            + (f": {out.stderr[-500:]}" if out is not None else "")
        )

    try:
        node("head", ["--head", "--port", str(port), "--include-dashboard=false"])
        wait_for(1)
        for i in range(1, nodes):
            node(f"worker{i}", ["--address", address])
        wait_for(nodes)
        yield address
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(temps, ignore_errors=True)

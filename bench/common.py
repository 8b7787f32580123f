"""Shared helpers of the bench/ scripts: machine facts, a markdown table, peak memory, measured subprocesses.

Only the standard library and torch: the GPU check runs these on a machine without the
project's tracking dependencies.

    PYTHONPATH=. python -c "from bench.common import machine_line; print(machine_line())"
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "fashion-product-images-small.tar.gz"


def default_data() -> str | None:
    """$FASHION_DATA, else ../shared/data's archive, else None (the scripts then generate images)."""
    env = os.environ.get("FASHION_DATA")
    if env and Path(env).exists():
        return env
    return str(REAL_DATA) if REAL_DATA.exists() else None


def load_average() -> str:
    """The 1/5/15-minute load average, e.g. '2.1 1.8 1.5' ('n/a' where the OS has none)."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line() -> str:
    """One line that says what a table was measured on and how busy the machine was."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}, python {platform.python_version()}, "
        f"load average {load_average()}"
    )


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (floats to 3 significant digits, at least the units)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v) -> str:
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far; 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except OSError:
        return 0.0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (empty where /proc is missing)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    out: set[int] = set()
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += _children(p)
    return out


def busy_others(window: float = 2.0, share: float = 0.1) -> int:
    """Processes outside this one's tree that used at least ``share`` of a core over ``window`` seconds (-1 without /proc).

    The other work a timing shares the cores with (this process, its workers and a Ray cluster it
    started are left out).
    """
    if not Path("/proc/self/stat").exists():
        return -1
    mine = {os.getpid()} | _descendants(os.getpid())
    before = {int(p): cpu_seconds(int(p)) for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine}
    time.sleep(window)
    mine |= _descendants(os.getpid())
    return sum(1 for p, c in before.items() if p not in mine and cpu_seconds(p) - c >= share * window)


def load_now() -> dict:
    """The 1-minute load average (everything, this process's work included) and the other busy processes."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return {"load1": load1, "busy": busy_others()}


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process, KiB: shared pages are split between their users, so sums are honest."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and all its descendants, MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _pss_kb(p)
        todo += _children(p)
    return total / 1024


def run_measured(
    cmd: list[str],
    env: dict | None = None,
    cwd: str | Path | None = None,
    interval: float = 0.25,
    echo: bool = False,
    timeout: float | None = None,
) -> dict:
    """Run a command; measure its wall time and peak memory.

    Args:
        cmd: the argument list.
        env: the full environment (default: this one).
        cwd: working directory.
        interval: seconds between /proc samples of the process tree.
        echo: copy the command's output to stderr as it comes.
        timeout: seconds before the command is killed (rc then -9).
    Returns:
        ``{"rc", "seconds", "cpu_seconds", "peak_rss_mb", "peak_tree_pss_mb", "output"}``: cpu_seconds is
        user + system time of the command and its waited-for descendants (what the load of a shared
        machine changes least), peak_rss_mb the largest single process of the tree (both from wait4),
        peak_tree_pss_mb the largest sampled sum over the tree.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    peak = [0.0]
    done = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stderr.write(line)

    def sample() -> None:
        while not done.wait(interval):
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=sample, daemon=True)]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.start()
    # wait4 on this child gives its own rusage: ru_maxrss is the largest of it and its waited descendants.
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    if timer:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    threads[0].join(timeout=5)
    return {
        "rc": proc.returncode,
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "peak_tree_pss_mb": peak[0],
        "output": "".join(lines),
    }


def child_json(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a bench child that prints one JSON object as its last line; return that object."""
    res = run_measured(cmd, env=env, timeout=timeout)
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {res['rc']}):\n{res['output'][-3000:]}")
    return json.loads(res["output"].strip().splitlines()[-1])


def bench_env(**extra: str) -> dict:
    """This environment with the repository on PYTHONPATH (bench children import ``fashion_core`` and ``bench``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env

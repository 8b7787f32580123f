"""Progress on stderr: the epoch bar's few lines in a log, and the grid's cell status with its ETA."""
from __future__ import annotations

import io

from fashion_core.progress import EpochProgress, GridStatus


def test_epoch_progress_prints_a_few_lines_without_a_terminal(monkeypatch):
    monkeypatch.delenv("FASHION_PROGRESS", raising=False)
    out = io.StringIO()
    bar = EpochProgress(1000, "epoch 1/3", stream=out, quiet_seconds=0.0)
    for _ in range(100):
        bar.update(10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 9 and all(line.startswith("epoch 1/3:") and "img/s" in line for line in lines)
    assert "\r" not in out.getvalue()  # a log file gets plain lines, not a redrawn bar
    quiet = io.StringIO()
    short = EpochProgress(1000, "epoch 1/3", stream=quiet)  # an epoch shorter than quiet_seconds: no line
    short.update(1000)
    assert quiet.getvalue() == ""
    monkeypatch.setenv("FASHION_PROGRESS", "0")
    off = io.StringIO()
    bar = EpochProgress(1000, "x", stream=off, quiet_seconds=0.0)
    bar.update(500)
    assert off.getvalue() == ""


def test_grid_status_counts_cells_and_estimates_the_time_left(monkeypatch):
    monkeypatch.delenv("FASHION_PROGRESS", raising=False)
    clock = iter([0.0, 0.0, 60.0, 120.0, 130.0])
    monkeypatch.setattr("fashion_core.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    status = GridStatus(["a", "b", "c", "d", "e"], concurrency=2, stream=out)
    status.update("a", "running")  # t=0
    status.update("b", "running")  # t=0
    status.update("a", "finished")  # t=60: one cell took 60 s
    assert status.counts() == {"pending": 3, "running": 1, "finished": 1, "reused": 0, "failed": 0}
    assert status.eta_seconds() == 60 * 3.5 / 2  # 3 pending and one half-done, two at a time
    status.update("b", "failed")  # t=120
    status.update("c", "reused")  # no timing of its own
    lines = out.getvalue().splitlines()
    assert lines[0] == "grid: a finished; 1/5 finished (0 reused), 1 running, 0 failed, 3 pending; ETA 2 min"
    assert lines[-1].startswith("grid: c reused; 2/5 finished (1 reused), 0 running, 1 failed, 2 pending; ETA")
    assert len(lines) == 3  # a line per cell that ends, none when one starts

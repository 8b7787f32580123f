"""The grid's status line: queued is not running, a line per cell that ends, the ETA from the cells' own times."""

from __future__ import annotations

import io

from fashion_core.grid.status import GridStatus


def test_grid_status_counts_cells_and_estimates_the_time_left(monkeypatch):
    monkeypatch.delenv("FASHION_PROGRESS", raising=False)
    clock = [0.0]
    monkeypatch.setattr("fashion_core.grid.status.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    status = GridStatus(["a", "b", "c", "d", "e"], concurrency=2, stream=out)
    for name in "abcd":
        status.update(name, "queued")  # submitted to the pool; no worker has started them
    assert status.counts()["queued"] == 4 and status.counts()["running"] == 0
    assert "ETA unknown" in status.line()  # no cell has finished: nothing to go by
    status.update("a", "running")  # t=0: a worker started it
    status.update("b", "running")  # t=0
    clock[0] = 60.0
    status.update("a", "finished", seconds=60.0)  # t=60: the cell's own time
    assert status.counts() == {"pending": 1, "queued": 2, "running": 1, "finished": 1, "reused": 0, "failed": 0}
    # b has 0 s left of its 60 at t=60; c and d on the two slots, then e: 120 s
    assert status.eta_seconds() == 120.0
    clock[0] = 120.0
    status.update("b", "failed")  # t=120
    status.update("c", "reused")  # no timing of its own
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "grid: a finished; 1/5 finished (0 reused), 1 running, 2 queued, 0 failed, 1 pending; ETA 2 min"
    )
    assert lines[-1].startswith(
        "grid: c reused; 2/5 finished (1 reused), 0 running, 1 queued, 1 failed, 1 pending; ETA"
    )
    assert len(lines) == 3  # a line per cell that ends, none when one is queued or starts

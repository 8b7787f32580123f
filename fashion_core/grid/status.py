"""The grid's live status: its cells pending / queued / running / finished / reused / failed, and an ETA.

``grid.run_grid(show_status=True)`` (``fashion grid``) updates it as cells are submitted, started by a
worker and ended; ``grid_eta`` estimates the time left. On a terminal it is a tqdm bar over the cells,
elsewhere a line per cell that ends; ``FASHION_PROGRESS=0`` turns it off (see ``progress``).

    FASHION_PROGRESS=1 fashion grid --profile smoke --jobs 2 --data DATA
"""

from __future__ import annotations

import sys
import time
from typing import IO

from fashion_core.engine.progress import enabled
from fashion_core.grid.eta import CellCost, eta_seconds, eta_text


class GridStatus:
    """The grid's cells at a glance: pending / queued / running / finished / reused / failed, and an ETA.

    A cell is *pending* until it can be submitted (a finetune cell waits for its source), *queued*
    once submitted, *running* only once a worker has started it (``grid.run_grid`` asks the
    executor), then finished, reused or failed. The ETA (``grid_eta.eta_seconds``) places the cells
    left on the ``concurrency`` slots at the seconds the finished cells of their kind took
    ("ETA unknown" before the first has finished). On a terminal a tqdm bar over the cells with the
    counts as its postfix; elsewhere one line per cell that ends.

    Args:
        names: every cell's name, in plan order (all start pending).
        concurrency: how many cells run at once.
        costs: each cell's ``grid_eta.CellCost`` (its cost group, relative weight, source); default:
            every cell alike.
    """

    STATES = ("pending", "queued", "running", "finished", "reused", "failed")

    def __init__(self, names: list[str], concurrency: int = 1, stream: IO | None = None, costs: list | None = None):
        self.state = {n: "pending" for n in names}
        self.costs = list(costs) if costs is not None else [CellCost(n) for n in names]
        self.started: dict[str, float] = {}
        self.measured: dict[str, float] = {}  # name -> seconds of a finished cell
        self.concurrency, self.stream = max(1, concurrency), stream or sys.stderr
        self.bar = None
        if enabled() is False:
            self.stream = None
            return
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if enabled() or tty:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=len(names), desc="grid", unit="cell", file=self.stream, dynamic_ncols=True)
            except ImportError:
                pass

    def counts(self) -> dict[str, int]:
        return {s: sum(v == s for v in self.state.values()) for s in self.STATES}

    def eta_seconds(self) -> float | None:
        """Seconds until every cell has ended (None: unknown, no cell has finished yet)."""
        now = time.perf_counter()
        elapsed = {n: now - t for n, t in self.started.items()}
        return eta_seconds(self.costs, self.state, elapsed, self.measured, self.concurrency)

    def line(self) -> str:
        c = self.counts()
        text = (
            f"{c['finished'] + c['reused']}/{len(self.state)} finished ({c['reused']} reused), "
            f"{c['running']} running, {c['queued']} queued, {c['failed']} failed, {c['pending']} pending"
        )
        return text + (f"; {eta_text(self.eta_seconds())}" if c["pending"] + c["queued"] + c["running"] else "")

    def update(self, name: str, state: str, seconds: float | None = None) -> None:
        """``name`` is now ``state`` (one of ``STATES``); ``seconds``: a finished cell's own time (default: since it ran)."""
        if state not in self.STATES:
            raise ValueError(f"unknown cell state {state!r}; choose from: {', '.join(self.STATES)}")
        now = time.perf_counter()
        began = self.started.pop(name, None)
        if state == "running":
            self.started[name] = began if began is not None else now
        elif state == "finished":
            took = seconds if seconds is not None else (now - began if began is not None else None)
            if took is not None and took > 0:  # 0 s: an earlier attempt had finished it, nothing was timed
                self.measured[name] = took
        self.state[name] = state
        ended = state in ("finished", "reused", "failed")
        if self.bar is not None:
            if ended:
                self.bar.update(1)
            self.bar.set_postfix_str(self.line().split(", ", 1)[1], refresh=True)
        elif self.stream is not None and ended:
            print(f"grid: {name} {state}; {self.line()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Progress on stderr: a bar inside each training epoch (images/s, ETA) that does not flood logs.

On a terminal it is a tqdm bar that disappears at the end of the epoch (the epoch line stays).
Elsewhere (a log file, CI, a grid worker's pipe) it prints one tqdm-formatted line every
``every`` of the epoch (10 %) once the epoch has run ``quiet_seconds`` (10 s): a ten-minute CPU
epoch shows ten lines, not thousands, and a short epoch shows only its epoch line. tqdm
is imported lazily and optional: a machine with only PyTorch trains without the bar.
``FASHION_PROGRESS=0`` turns it off, ``=1`` forces the bar even without a terminal.

    FASHION_PROGRESS=1 fashion pretrain --profile smoke --data DATA
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO


def enabled() -> bool | None:
    """``FASHION_PROGRESS``: False when 0, True (bar) when 1, else None (bar on a terminal, lines elsewhere)."""
    value = os.environ.get("FASHION_PROGRESS", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


class EpochProgress:
    """Counts images through one epoch; ``update(n)`` per step reads nothing from the device.

    Args:
        total: images in the epoch (the bar's 100 %).
        desc: the bar's label, e.g. ``epoch 3/30``.
        stream: where to write (stderr).
        every: on a non-terminal, the fraction of the epoch between two lines.
        quiet_seconds: on a non-terminal, no line before the epoch has run this long.
    """

    def __init__(self, total: int, desc: str = "", stream: IO | None = None, every: float = 0.1,
                 quiet_seconds: float = 10.0):
        self.total, self.desc, self.stream = max(1, int(total)), desc, stream or sys.stderr
        self.n, self.t0 = 0, time.perf_counter()
        self.bar = None
        self._format = None
        self._next = every
        self.every, self.quiet_seconds = every, quiet_seconds
        mode = enabled()
        if mode is False:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # a bare PyTorch machine: train without the bar
            return
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if mode or tty:
            self.bar = tqdm(total=self.total, desc=desc, unit="img", leave=False,
                            file=self.stream, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
        else:
            self._format = tqdm.format_meter

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self._format is not None and self.n >= self._next * self.total and self.n < self.total:
            self._next = (int(self.n / self.total / self.every) + 1) * self.every
            elapsed = time.perf_counter() - self.t0
            if elapsed >= self.quiet_seconds:
                line = self._format(self.n, self.total, elapsed, prefix=self.desc, unit="img", ncols=100)
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "EpochProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GridStatus:
    """The grid's cells at a glance: pending / running / finished / failed, and an ETA.

    On a terminal a tqdm bar over the cells (its postfix counts the states; tqdm's ETA); elsewhere
    one line per cell that ends. The ETA is the mean wall time of the cells run so far times the
    cells left, divided by the cells that run at once.

    Args:
        names: every cell's name (all start pending).
        concurrency: how many cells run at once.
    """

    STATES = ("pending", "running", "finished", "reused", "failed")

    def __init__(self, names: list[str], concurrency: int = 1, stream: IO | None = None):
        self.state = {n: "pending" for n in names}
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
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
        """Seconds until every cell has ended, from the cells run so far (None before the first ends)."""
        if not self.durations:
            return None
        c = self.counts()
        left = c["pending"] + c["running"] * 0.5
        return sum(self.durations) / len(self.durations) * left / self.concurrency

    def line(self) -> str:
        c = self.counts()
        eta = self.eta_seconds()
        text = (f"{c['finished'] + c['reused']}/{len(self.state)} finished ({c['reused']} reused), "
                f"{c['running']} running, {c['failed']} failed, {c['pending']} pending")
        return text + (f"; ETA {eta / 60:.0f} min" if eta is not None and c["pending"] + c["running"] else "")

    def update(self, name: str, state: str) -> None:
        """``name`` is now ``state`` (one of ``STATES``)."""
        now = time.perf_counter()
        if state == "running":
            self.started[name] = now
        elif name in self.started:
            self.durations.append(now - self.started.pop(name))
        self.state[name] = state
        if self.bar is not None:
            if state != "running":
                self.bar.update(1)
            self.bar.set_postfix_str(self.line().split(", ", 1)[1], refresh=True)
        elif self.stream is not None and state != "running":
            print(f"grid: {name} {state}; {self.line()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

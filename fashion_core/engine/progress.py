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

    def __init__(
        self, total: int, desc: str = "", stream: IO | None = None, every: float = 0.1, quiet_seconds: float = 10.0
    ):
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
            self.bar = tqdm(
                total=self.total,
                desc=desc,
                unit="img",
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.5,
                smoothing=0.1,
            )
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

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""The package's messages on a terminal: module loggers in the library, one handler in the application.

Every module logs through its own ``logging.getLogger(__name__)``: INFO for what a run is doing, WARNING for
what to notice although the work goes on (a cell or an ensemble that failed, a dead run ended, a worker process
lost, a leaky technique). The library installs no handler and
configures nothing at import (a warning with no handler anywhere still reaches stderr through ``logging``'s
last resort). An application shows the messages with :func:`console`, which puts a :class:`ConsoleHandler` on
the ``fashion_core`` logger for a block: the bare message on stdout, the text the commands printed before
they logged, written through ``tqdm.write`` once tqdm is in use so that a progress bar on the screen is
cleared and drawn again below the line instead of broken. The ``fashion`` command does this at
start-up (``-q`` keeps the warnings only); a grid worker does it for each cell with the cell's name before
every line (``grid.cells.run_cell``). :func:`silenced` keeps the ranks > 0 of a torchrun job quiet;
:func:`prefixed` puts a word before the messages of one logger for a block (an Optuna trial's epoch lines).

    fashion prepare --data /path/to/fashion-product-images-small.tar.gz      # every line on stdout
    fashion -q prepare --data /path/to/fashion-product-images-small.tar.gz   # the warnings only
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import IO

PACKAGE = "fashion_core"


def write_line(text: str, stream) -> None:
    """``text`` and a newline on ``stream``, flushed; through ``tqdm.write`` once tqdm is imported (a bar may be
    on the screen: it is cleared first and drawn again after the line)."""
    bars = sys.modules.get("tqdm")  # no tqdm imported, no bar on the screen
    if bars is not None and hasattr(bars, "tqdm"):
        bars.tqdm.write(text, file=stream)
    else:
        stream.write(text + "\n")
    stream.flush()


class ConsoleHandler(logging.Handler):
    """The bare message of a record on ``stream`` (default: ``sys.stdout`` as it is when the line is written, so
    that a redirected stdout is followed); ``prefix`` starts each of its lines."""

    def __init__(self, prefix: str = "", stream: IO[str] | None = None, level: int = logging.NOTSET):
        super().__init__(level)
        self.prefix, self.stream = prefix, stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.prefix:
                text = "\n".join(self.prefix + line for line in text.split("\n"))
            write_line(text, self.stream or sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise into the caller
            self.handleError(record)


@contextlib.contextmanager
def console(level: int = logging.INFO, prefix: str = "", stream: IO[str] | None = None) -> Iterator[ConsoleHandler]:
    """Inside the block, the package's messages at ``level`` and above are shown by a :class:`ConsoleHandler` on
    ``stream`` (default stdout; a benchmark that prints its table on stdout shows them on stderr).

    They do not also travel up to the root logger (a root handler that another library installed would print
    them twice); the logger's level and propagation are restored at the end.
    """
    logger = logging.getLogger(PACKAGE)
    handler = ConsoleHandler(prefix, stream)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No message of the package inside the block, whatever handler shows them (the ranks > 0 of a torchrun job)."""
    logger = logging.getLogger(PACKAGE)
    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(old)


class _Prefix(logging.Filter):
    """Puts ``prefix`` before the message of each record logged from the thread that made it."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.thread = prefix, threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread:
            record.msg, record.args = self.prefix + record.getMessage(), None
        return True


@contextlib.contextmanager
def prefixed(prefix: str, logger: logging.Logger) -> Iterator[None]:
    """Inside the block, the messages that ``logger`` itself logs from this thread start with ``prefix`` (for
    every handler, a test's ``caplog`` included)."""
    f = _Prefix(prefix)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)

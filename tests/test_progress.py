"""Progress on stderr: the epoch bar's few lines in a log."""

from __future__ import annotations

import io

from fashion_core.engine.progress import EpochProgress


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

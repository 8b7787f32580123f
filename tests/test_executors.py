"""Where grid cells run: GPU slots per cell, the inline executor, paths that workers elsewhere can use."""

from __future__ import annotations

import pytest

from fashion_core.grid.executors import InlineExecutor, absolute_tracking_uri, gpu_slots


def test_gpu_slots_share_or_group_the_gpus():
    assert gpu_slots(2, 1) == ["0", "1"]
    assert gpu_slots(2, 0.25) == ["0"] * 4 + ["1"] * 4  # four small cells per GPU
    assert gpu_slots(4, 2) == ["0,1", "2,3"] and gpu_slots(3, 2) == ["0,1"]
    assert gpu_slots(0, 1) == [] and gpu_slots(2, 0) == []


def test_inline_executor_runs_at_submit_and_keeps_errors_in_the_future():
    ex = InlineExecutor()
    calls = []
    f = ex.submit(lambda x: calls.append(x) or x * 2, 21)
    assert calls == [21] and f.done() and f.result() == 42
    bad = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bad.result()
    with pytest.raises(KeyboardInterrupt):  # an interrupt stops the grid instead of becoming a failed cell
        ex.submit(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))


def test_a_relative_sqlite_store_becomes_absolute_for_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_tracking_uri("http://host:5000") == "http://host:5000"

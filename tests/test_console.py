"""The package's messages: module loggers, shown by the handler an application installs (``engine.console``)."""

from __future__ import annotations

import io
import logging
import sys

from fashion_core.engine.console import PACKAGE, console, prefixed, silenced

demo = logging.getLogger(f"{PACKAGE}.demo")


def test_console_shows_bare_messages_on_stdout(capsys):
    demo.info("before: no handler, not shown")
    with console():
        demo.info("an info line")
        demo.warning("a warning\nof two lines")
        demo.debug("a debug line")
    demo.info("after: not shown")
    out = capsys.readouterr()
    assert out.out == "an info line\na warning\nof two lines\n" and out.err == ""
    with console(stream=sys.stderr):  # a benchmark whose stdout is its table
        demo.info("on stderr")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "on stderr\n"


def test_console_restores_the_logger_and_quiet_keeps_warnings(capsys):
    logger = logging.getLogger(PACKAGE)
    before = (logger.level, logger.propagate, list(logger.handlers))
    with console(logging.WARNING):
        assert not logger.propagate and len(logger.handlers) == len(before[2]) + 1
        demo.info("quiet: not shown")
        demo.warning("shown")
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    assert capsys.readouterr().out == "shown\n"


def test_a_prefix_starts_every_line(capsys):
    with console(prefix="[pretrain/baseline/seed0] "):
        demo.info("pretrain run abc\n  epoch 1")
    assert (
        capsys.readouterr().out == "[pretrain/baseline/seed0] pretrain run abc\n[pretrain/baseline/seed0]   epoch 1\n"
    )


def test_silenced_hides_everything_then_restores(capsys, caplog):
    caplog.set_level(logging.INFO, logger=PACKAGE)
    with silenced():
        demo.warning("rank 1 says nothing")
    demo.info("rank 0 speaks")
    assert caplog.messages == ["rank 0 speaks"]


def test_prefixed_marks_one_loggers_messages_for_every_handler(caplog):
    caplog.set_level(logging.INFO, logger=PACKAGE)
    other = logging.getLogger(f"{PACKAGE}.other")
    with prefixed("trial 3: ", demo):
        demo.info("epoch %d/%d", 1, 2)
        other.info("not this logger's")
    demo.info("after the block")
    assert caplog.messages == ["trial 3: epoch 1/2", "not this logger's", "after the block"]


def test_a_line_logged_under_a_progress_bar_leaves_the_bar_whole(monkeypatch):
    """With tqdm imported the line goes through ``tqdm.write``: the bar is cleared, the line written, the bar
    drawn again below it (a plain print would leave the line glued to the half-drawn bar)."""
    from tqdm import tqdm

    screen = io.StringIO()
    monkeypatch.setattr("sys.stdout", screen)
    monkeypatch.setattr("sys.stderr", screen)  # one terminal: bar and lines on the same screen
    bar = tqdm(total=10, desc="grid", file=screen, mininterval=0)
    bar.update(3)
    with console():
        demo.info("a cell finished")
    bar.update(1)
    bar.close()
    text = screen.getvalue()
    before, after = text.split("a cell finished\n")
    assert before.endswith(" " * 20 + "\r")  # the bar's line was blanked before the message
    assert after.startswith("\rgrid:  30%")  # and drawn again on the line below it


def test_the_fashion_command_shows_the_library_lines_and_q_keeps_only_the_warnings(dataset):
    """The command installs the console for its run only: the plan's lines on its output, none with -q, and the
    package's logger as it was afterwards."""
    from pathlib import Path

    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    experiments = str(Path(__file__).resolve().parents[1] / "experiments")
    args = ["pretrain", "--dry-run", "--data", str(dataset), "--profile", "smoke", "--experiments-dir", experiments]
    logger = logging.getLogger(PACKAGE)
    before = (logger.level, logger.propagate, list(logger.handlers))
    shown = CliRunner().invoke(main, args)
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("profile smoke\n") and "dry run: the config is valid" in shown.output
    quiet = CliRunner().invoke(main, ["-q", *args])
    assert quiet.exit_code == 0 and quiet.output == ""
    assert (logger.level, logger.propagate, list(logger.handlers)) == before

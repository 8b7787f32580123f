"""Helpers of the command-line tests: the checkout's folders and the one-line error check."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = str(ROOT / "experiments")


def one_line_error(code: int, out: str, match: str) -> None:
    """Exit 2 and one ``Error:`` line, the last one, that matches (the library's log lines may precede it)."""
    errors = [ln for ln in out.splitlines() if ln.startswith("Error")]
    assert code == 2 and len(errors) == 1 and out.strip().splitlines()[-1] == errors[0], out
    assert "Traceback" not in out and re.search(match, errors[0]), out

"""Rows the report marks "test-informed": a figure whose configuration was designed or chosen after test
results of the same classes had been read. Such a figure is shown, labelled, and never read as meeting a
target or as a stage's best (docs/report-statistics.md).

A run says so itself with the tag ``test_informed=true``; techniques whose design is known to have read
test are listed here, by ``stage/technique`` (a technique name alone marks it in every stage).
"""

from __future__ import annotations

from collections.abc import Mapping

TEST_INFORMED: dict[str, str] = {
    # The generalised zero-shot text rules and class text were refined pass after pass on the per-class
    # test errors of the very unseen classes they are scored on (issue 28; docs/selection-ledger.md).
    "finetune/zeroshot": "class text and evidence rules designed over repeated reads of the unseen classes' test "
    "errors",
}


def is_test_informed(
    stage: str, technique: str, tags: Mapping[str, str] | None = None, listed: Mapping[str, str] | None = None
) -> bool:
    """True when the run's tag ``test_informed`` is true or its technique is listed (``stage/technique`` or name)."""
    listed = TEST_INFORMED if listed is None else listed
    if str((tags or {}).get("test_informed", "")).lower() in ("true", "1", "yes"):
        return True
    return f"{stage}/{technique}" in listed or technique in listed

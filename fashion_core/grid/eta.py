"""A grid's ETA: the cells left, each at its expected seconds, scheduled on the grid's slots as the grid runs them.

A cell's expected seconds are its relative cost (``run_costs.task_minutes``: a pretrain cell costs
several times a finetune cell of the same epochs, as it has several times the images; a cell that trains nothing or only the metadata model a
fixed few seconds) times the seconds per unit of cost that the finished cells of its group took;
a group with no finished cell yet borrows the other groups' rate (the training groups' first).
Before any cell has finished nothing is known and the ETA is ``None`` ("ETA unknown"). The cells
left are then placed on ``concurrency`` slots in plan order, a running cell for what remains of it,
a finetune cell only once every pretrain cell of its model kind has ended (as ``grid.run_grid``
releases them), and the ETA is when the last one ends.

    PYTHONPATH=. python -c "from fashion_core.grid.eta import eta_seconds, CellCost; \
print(eta_seconds([CellCost('a', 'pretrain', 1.0)], {'a': 'running'}, {'a': 30.0}, {'b': 60.0}, 1))"
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fashion_core.grid.costs import cost_group, task_minutes
from fashion_core.grid.plan import model_kind, needs_source

DONE = ("finished", "reused", "failed")
TRAINING = ("pretrain", "finetune")  # the groups whose cost is proportional (images x epochs)


@dataclass(frozen=True)
class CellCost:
    """One cell as the ETA sees it.

    Attributes:
        name: the cell's name (``stage/technique/seedK``).
        group: ``run_costs.GROUPS``: cells whose seconds scale alike.
        weight: expected minutes by ``run_costs`` (only the ratios between cells matter).
        provides: a pretrain cell's model kind (``grid_plan.model_kind``), else ''.
        waits_for: the model kind whose pretrain cells must all end before this cell starts (a
            finetune cell that needs a source), else None.
    """

    name: str
    group: str = "pretrain"
    weight: float = 1.0
    provides: str = ""
    waits_for: str | None = None


def cell_costs(tasks: Sequence, profile: str = "", gpu: bool = False, source_given: bool = False) -> list[CellCost]:
    """The ``CellCost`` of every ``GridTask`` of a plan.

    ``source_given``: the grid has ``--from``, so its finetune cells start at once and wait for no
    pretrain cell (as ``grid.run_grid`` releases them).
    """
    out = []
    for t in tasks:
        kind = model_kind(t.cfg)
        out.append(
            CellCost(
                t.name,
                cost_group(t.cfg),
                task_minutes(t.cfg, profile, gpu),
                provides=kind if t.cfg.stage == "pretrain" else "",
                waits_for=kind if needs_source(t.cfg) and not source_given else None,
            )
        )
    return out


def expected_seconds(cells: Sequence[CellCost], measured: Mapping[str, float]) -> dict[str, float] | None:
    """Each cell's expected seconds from the measured ones (name -> seconds of a finished cell); None before any.

    A cell's group rate (measured seconds per unit of weight) when the group has a finished cell,
    else the training groups' rate, else every finished cell's.
    """
    by_name = {c.name: c for c in cells}
    done = [(by_name[n], s) for n, s in measured.items() if n in by_name and by_name[n].weight > 0]
    if not done:
        return None

    def rate(pairs) -> float | None:
        weight = sum(c.weight for c, _ in pairs)
        return sum(s for _, s in pairs) / weight if pairs and weight > 0 else None

    fallback = rate([p for p in done if p[0].group in TRAINING]) or rate(done)
    assert fallback is not None  # done is not empty and its weights are positive, so rate(done) is a number
    rates = {g: rate([p for p in done if p[0].group == g]) for g in {c.group for c in cells}}
    return {c.name: c.weight * (rates.get(c.group) or fallback) for c in cells}


def eta_seconds(
    cells: Sequence[CellCost],
    state: Mapping[str, str],
    elapsed: Mapping[str, float],
    measured: Mapping[str, float],
    concurrency: int = 1,
) -> float | None:
    """Seconds until every cell has ended; None when no cell has finished yet (nothing to go by).

    Args:
        cells: every cell of the grid, in plan order.
        state: name -> pending / queued / running / finished / reused / failed.
        elapsed: name -> seconds a running cell has run so far.
        measured: name -> seconds a finished (not reused, not failed) cell took.
        concurrency: cells that run at once.
    """
    left = [c for c in cells if state.get(c.name, "pending") not in DONE]
    if not left:
        return 0.0
    expected = expected_seconds(cells, measured)
    if expected is None:
        return None
    unfinished: dict[str, int] = {}  # model kind -> its pretrain cells not ended
    for c in left:
        if c.provides:
            unfinished[c.provides] = unfinished.get(c.provides, 0) + 1
    ends: list[tuple[float, int, CellCost]] = []  # (end time, plan position, cell) of the cells on a slot
    waiting = []
    for i, c in enumerate(left):
        if state.get(c.name) == "running":
            heapq.heappush(ends, (max(expected[c.name] - elapsed.get(c.name, 0.0), 0.0), i, c))
        else:
            waiting.append((i, c))
    now, slots = 0.0, max(1, int(concurrency))
    while waiting or ends:
        for i, c in list(waiting):
            if len(ends) >= slots:
                break
            if c.waits_for is None or not unfinished.get(c.waits_for):
                heapq.heappush(ends, (now + expected[c.name], i, c))
                waiting.remove((i, c))
        if not ends:  # cells whose source can never come: they fail at once
            break
        now, _, c = heapq.heappop(ends)
        if c.provides:
            unfinished[c.provides] -= 1
    return now


def eta_text(seconds: float | None) -> str:
    """``ETA 12 min``, ``ETA 1.5 h``, ``ETA <1 min`` or ``ETA unknown``."""
    if seconds is None:
        return "ETA unknown"
    if seconds < 60:
        return "ETA <1 min"
    minutes = seconds / 60
    return f"ETA {minutes / 60:.1f} h" if minutes >= 90 else f"ETA {round(minutes)} min"

"""The grid's ETA on made-up cell durations: per kind of cell, the cells left, the slots, the finetune cells' wait."""

from __future__ import annotations

import pytest

from fashion_core.grid.costs import FINETUNE_SHARE, METADATA_MINUTES, PRETRAIN_MINUTES
from fashion_core.grid.eta import CellCost, cell_costs, eta_seconds, eta_text, expected_seconds

PRE = PRETRAIN_MINUTES[("quick", "cpu")]


def _grid(n_pre: int = 2, n_fine: int = 4, n_meta: int = 1) -> list[CellCost]:
    """Image pretrain cells, metadata-only cells, and finetune cells that wait for the image pretrain cells."""
    cells = [CellCost(f"pre{i}", "pretrain", PRE, provides="image") for i in range(n_pre)]
    cells += [CellCost(f"meta{i}", "metadata", METADATA_MINUTES) for i in range(n_meta)]
    cells += [CellCost(f"fine{i}", "finetune", PRE * FINETUNE_SHARE, waits_for="image") for i in range(n_fine)]
    return cells


def test_the_eta_is_unknown_until_a_cell_has_finished_then_zero_at_the_end():
    cells = _grid()
    state = {"pre0": "running", "pre1": "queued", "meta0": "queued"}
    assert eta_seconds(cells, state, {"pre0": 300.0}, {}, concurrency=2) is None
    assert eta_text(None) == "ETA unknown"
    assert eta_seconds(cells, {c.name: "finished" for c in cells}, {}, {"pre0": 1.0}, 2) == 0.0


def test_each_kind_of_cell_costs_what_its_own_finished_cells_took():
    """A fast metadata cell does not make the pretrain cells look fast (the old mean-of-all ETA did)."""
    cells = _grid()
    state = {"pre0": "finished", "meta0": "finished", "pre1": "running"}
    measured = {"pre0": 600.0, "meta0": 6.0}
    expected = expected_seconds(cells, measured)
    assert expected["pre1"] == pytest.approx(600.0) and expected["meta0"] == pytest.approx(6.0)
    # the finetune cells have no finished cell of their own: the pretrain rate x their weight (3.6x fewer images)
    assert expected["fine0"] == pytest.approx(600.0 * FINETUNE_SHARE)
    # pre1 has 500 s left; then the 4 finetune cells (released when pre1 ends) run two at a time
    eta = eta_seconds(cells, state, {"pre1": 100.0}, measured, concurrency=2)
    assert eta == pytest.approx(500.0 + 2 * 600.0 / 3.6)
    measured["fine0"] = 60.0  # a finetune cell finished: its own rate now
    state.update(pre1="finished", fine0="finished", fine1="running", fine2="queued", fine3="queued")
    measured["pre1"] = 600.0
    assert eta_seconds(cells, state, {"fine1": 20.0}, measured, concurrency=2) == pytest.approx(60.0 + 40.0)


def test_the_cells_left_share_the_slots_and_a_long_running_cell_keeps_one():
    cells = [CellCost(f"c{i}") for i in range(6)]
    state = {"c0": "finished", "c1": "running", **{f"c{i}": "queued" for i in range(2, 6)}}
    measured = {"c0": 100.0}
    assert eta_seconds(cells, state, {"c1": 0.0}, measured, concurrency=1) == pytest.approx(500.0)
    assert eta_seconds(cells, state, {"c1": 0.0}, measured, concurrency=2) == pytest.approx(300.0)
    assert eta_seconds(cells, state, {"c1": 0.0}, measured, concurrency=5) == pytest.approx(100.0)
    # a cell already past its expected time counts as ending now, never as negative time
    assert eta_seconds(cells, state, {"c1": 900.0}, measured, concurrency=4) == pytest.approx(100.0)


def test_a_finetune_cell_waits_for_every_pretrain_cell_of_its_kind_only():
    cells = [
        CellCost("pa", "pretrain", 10.0, provides="image"),
        CellCost("pb", "pretrain", 10.0, provides="fused"),
        CellCost("fa", "finetune", 1.0, waits_for="image"),
        CellCost("fb", "finetune", 1.0, waits_for="fused"),
    ]
    state = {"pa": "running", "pb": "running", "fa": "pending", "fb": "pending"}
    measured = {"x": 0.0}  # nothing of this grid measured: unknown
    assert eta_seconds(cells, state, {}, measured, 2) is None
    cells.append(CellCost("x", "pretrain", 10.0))
    state["x"], measured = "finished", {"x": 100.0}  # 10 s per unit
    # pa ends at 100 s (fa runs 100-110), pb has run 50 s of its 100: it ends at 50 s, fb runs 50-60 s
    assert eta_seconds(cells, state, {"pa": 0.0, "pb": 50.0}, measured, 2) == pytest.approx(110.0)


def test_the_plan_knows_each_cells_kind_and_weight():
    from pathlib import Path

    from fashion_core.grid.plan import plan_grid

    exp = Path(__file__).resolve().parents[1] / "experiments"
    tasks = plan_grid(
        exp,
        ["pretrain/baseline", "pretrain/meta_only", "finetune/ncm", "finetune/finetune"],
        profile="quick",
        overrides={"train.epochs": 2},
    )
    costs = {c.name.split("/seed")[0]: c for c in cell_costs(tasks, "quick")}
    assert [c.group for c in costs.values()] == ["pretrain", "metadata", "no_training", "finetune"]
    assert costs["pretrain/baseline"].provides == "image" and costs["finetune/ncm"].waits_for == "image"
    assert costs["pretrain/meta_only"].waits_for is None
    quick_epochs = plan_grid(exp, ["pretrain/baseline"], profile="quick")[0].cfg.train.epochs
    assert costs["pretrain/baseline"].weight == pytest.approx(PRE * 2 / quick_epochs)
    assert costs["finetune/finetune"].weight == pytest.approx(PRE * 2 / quick_epochs * FINETUNE_SHARE)


def test_eta_text():
    assert [eta_text(s) for s in (30.0, 12 * 60.0, 150 * 60.0)] == ["ETA <1 min", "ETA 12 min", "ETA 2.5 h"]


def test_before_a_training_cell_has_finished_every_group_borrows_the_finished_cells_rate():
    """Only a metadata cell has finished (5 s for 0.5 units: 10 s per unit); the others are priced at that rate."""
    cells = [
        CellCost("pre0", "pretrain", 10.0, provides="image"),
        CellCost("meta0", "metadata", 0.5),
        CellCost("fine0", "finetune", 2.0, waits_for="image"),
        CellCost("ncm0", "no_training", 0.2, waits_for="image"),
    ]
    measured = {"meta0": 5.0}
    assert expected_seconds(cells, measured) == pytest.approx({"pre0": 100.0, "meta0": 5.0, "fine0": 20.0, "ncm0": 2.0})
    state = {"meta0": "finished", "pre0": "running", "fine0": "pending", "ncm0": "pending"}
    # pre0 has 60 s left; fine0 (20 s) and ncm0 (2 s) start when it ends, one on each slot: 60 + 20
    assert eta_seconds(cells, state, {"pre0": 40.0}, measured, concurrency=2) == pytest.approx(80.0)
    # with --from nothing waits: fine0 0-20 s beside pre0, then ncm0 20-22 s; pre0 ends last at 60 s
    free = [CellCost(c.name, c.group, c.weight, c.provides, None) for c in cells]
    assert eta_seconds(free, state, {"pre0": 40.0}, measured, concurrency=2) == pytest.approx(60.0)


def test_with_from_the_plans_finetune_cells_wait_for_nothing():
    from pathlib import Path

    from fashion_core.grid.plan import plan_grid

    exp = Path(__file__).resolve().parents[1] / "experiments"
    tasks = plan_grid(exp, ["pretrain/baseline", "finetune/ncm"], profile="smoke")
    assert [c.waits_for for c in cell_costs(tasks, "smoke")] == [None, "image"]
    assert [c.waits_for for c in cell_costs(tasks, "smoke", source_given=True)] == [None, None]


def test_a_cell_that_took_no_time_is_not_a_measurement(monkeypatch):
    """A cell whose earlier attempt had finished comes back with 0 s: it must not make its kind look free."""
    from fashion_core.grid.status import GridStatus

    monkeypatch.setenv("FASHION_PROGRESS", "0")
    status = GridStatus(["a", "b", "c"], concurrency=1)
    status.update("a", "finished", seconds=0.0)
    assert status.measured == {} and status.eta_seconds() is None
    status.update("b", "finished", seconds=30.0)
    assert status.eta_seconds() == pytest.approx(30.0)

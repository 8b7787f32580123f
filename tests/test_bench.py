"""Pure functions of the bench/ scripts, on small hand-made tables."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.error_budget import class_mean, slice_costs, slice_keys
from fashion_core.fusion.encoders import holds_class_word


def test_slice_costs_are_class_mean_points_regained():
    # Class A: 4 products, 2 wrong (both brand X); class B: 2 products, 1 wrong (brand Y). Class mean 0.5.
    pred = pd.DataFrame({"label": ["A", "A", "A", "A", "B", "B"], "pred1": ["A", "A", "B", "B", "B", "A"]})
    brand = pd.Series(["Z", "Z", "X", "X", "Y", "Y"])
    assert class_mean(pred["label"], pred["label"] == pred["pred1"]) == pytest.approx(0.5)
    t = slice_costs(pred, brand)
    assert list(t.index) == ["X", "Y", "Z"]  # X regains A's half (0.25 of the mean), Y half of B's (0.25)...
    assert t.loc["X", "cost"] == pytest.approx(0.25) and t.loc["X", "class mean if right"] == pytest.approx(0.75)
    assert t.loc["Y", "cost"] == pytest.approx(0.25) and t.loc["Y", "errors"] == 1
    assert t.loc["Z", "cost"] == 0 and t.loc["Z", "errors"] == 0 and t.loc["Z", "error rate"] == 0
    assert t.loc["X", "test"] == 2 and t.loc["X", "error rate"] == 1.0


def test_slice_keys_brand_and_class_word():
    meta = pd.DataFrame(
        {
            "gender": ["Men", "Girls", ""],
            "year": [2012, 2011, 2013],
            "productDisplayName": ["Nike Men Casual Shoes", "Disney Kids Girl's Pink Kidswear", None],
        },
        index=[2, 1, 3],
    )  # catalogue rows in the predictions' order, indexed by id
    pred = pd.DataFrame({"id": [2, 1, 3], "label": ["Casual Shoes", "Tshirts", "Socks"], "pred1": ["x", "y", "z"]})
    k = slice_keys(pred, meta)
    assert list(k["brand"]) == ["Nike", "Disney", "(no name)"]
    assert list(k["name holds its class word"]) == ["yes", "no", "no"]  # "Shoes" -> shoe, stemmed like the label
    assert list(k["year"]) == ["2012", "2011", "2013"] and list(k["gender"]) == ["Men", "Girls", ""]


@pytest.mark.parametrize(
    "label,name,holds",
    [
        ("Tshirts", "Puma Men Red T-shirt", True),
        ("Dresses", "Biba Women Blue Dress", True),
        ("Watches", "Titan Men Silver Watch", True),
        ("Casual Shoes", "Nike Men Shoe", True),
        ("Sunglasses", "Fastrack Unisex Sunglass", True),
        ("Flats", "Catwalk Women Black Heels", False),
        ("Tops", "Disney Kids Girl's Pink Kidswear", False),
    ],
)
def test_holds_class_word(label, name, holds):
    assert holds_class_word(label, name) is holds


def test_year_shift_cross_validation_learns_within_the_rows():
    from bench.year_shift import cross_val_predict, per_class_top1
    from fashion_core.config.schema import FusionConfig

    # Classes 0 and 1 are told apart by a name word only; class 2 has too few rows for 3 folds.
    names = (
        [f"Brand{i % 4} Men Blue Sneaker" for i in range(9)]
        + [f"Brand{i % 4} Men Blue Belt" for i in range(9)]
        + ["Odd Thing", "Odd Thing"]
    )
    rows = pd.DataFrame({"gender": "Men", "baseColour": "Blue", "usage": "Casual", "productDisplayName": names})
    y = np.array([0] * 9 + [1] * 9 + [2, 2])
    fcfg = FusionConfig(mode="metadata_only", fields=("gender", "productDisplayName"), text_buckets=256)
    oof = cross_val_predict(rows, y, fcfg, 10.0, None, folds=3, seed=0, n_classes=3)
    assert list(oof[-2:]) == [-1, -1]  # left out: fewer rows than folds
    assert (oof[:18] == y[:18]).all()  # every held-out row predicted from the other folds' names
    top1 = per_class_top1(y[:18], oof[:18], 3)
    assert list(top1[:2]) == [1.0, 1.0] and np.isnan(top1[2])
    assert per_class_top1(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist() == [0.5, 1.0]


def test_year_shift_bench_on_generated_data(dataset, isolated, capsys):
    from bench import year_shift

    assert year_shift.main(["--data", str(dataset), "--folds", "2", "-o", "data.top_k=4"]) == 0
    out = capsys.readouterr().out
    assert "| class | train | test | train years -> val | train years -> test | test years, cross-validated |" in out
    mean_row = [ln for ln in out.splitlines() if ln.startswith("| **class mean**")]
    assert len(mean_row) == 1
    values = [float(v.strip(" *")) for v in mean_row[0].split("|")[4:7]]
    assert all(0 <= v <= 1 for v in values)


def test_layout_bench_prints_both_layouts_per_backbone(capsys):
    from bench import layout

    layout.main(["--batch", "2", "--rounds", "1", "--steps", "1", "--height", "16", "--width", "12"])
    rows = [
        ln
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| efficientnet") or ln.startswith("| resnet")
    ]
    assert len(rows) == 2
    for row in rows:
        nchw, cl, ratio = (float(v) for v in row.split("|")[2:5])
        assert nchw > 0 and cl > 0 and abs(ratio - cl / nchw) < 0.01 * ratio + 0.01


def test_time_to_accuracy_tabulates_a_logged_run(isolated):
    import mlflow

    from bench.time_to_accuracy import run_rows

    with mlflow.start_run() as run:
        mlflow.set_tags({"technique": "weighted_ce", "seed": "0"})
        mlflow.log_params({"data.height": 80, "data.width": 60, "model.input_scale": 2.0})
        for epoch, (sec, val) in enumerate([(600.0, 0.87), (660.0, 0.90)], start=1):
            mlflow.log_metrics(
                {"epoch_seconds": sec, "val_top1_mean": val, "train_images_per_second": 20.0}, step=epoch
            )
        mlflow.log_metrics(
            {"run_seconds": 1500.0, "best_val_top1_mean": 0.90, "test_top1_mean": 0.91, "test_top5_mean": 0.99}
        )
    rows, summary = run_rows(run.info.run_id, goal=0.90, budget_min=30.0)
    assert [(r["epoch"], r["train min (cumulative)"], r["val class-mean"]) for r in rows] == [
        (1, 10.0, 0.87),
        (2, 21.0, 0.90),
    ]
    assert summary["run min (wall)"] == 25.0 and summary["input"] == "80x60 x2.0"
    assert summary[">= 0.9 within 30 min"] == "yes"
    _, late = run_rows(run.info.run_id, goal=0.90, budget_min=20.0)
    assert late[">= 0.9 within 20 min"] == "no"


def test_grid_scale_keeps_n_cells_with_a_source_for_every_finetune_cell():
    from bench.grid_scale import EXPERIMENTS, pick_cells
    from fashion_core.grid.plan import model_kind, needs_source, plan_grid

    tasks = plan_grid(EXPERIMENTS, seeds=[0], profile="smoke")
    assert pick_cells(tasks, None) == tasks and pick_cells(tasks, len(tasks) + 5) == tasks
    for n in (1, 4, 9):
        kept = pick_cells(tasks, n)
        assert len(kept) == n and kept == [t for t in tasks if t in kept]  # plan order
        kinds = {model_kind(t.cfg) for t in kept if t.cfg.stage == "pretrain"}
        assert all(model_kind(t.cfg) in kinds for t in kept if needs_source(t.cfg))
    assert [t.cfg.stage for t in pick_cells(tasks, 4)] == ["pretrain", "pretrain", "finetune", "finetune"]


def test_grid_scale_arguments(tmp_path, capsys):
    from bench.grid_scale import parse_args

    args = parse_args(
        ["--part", "jobs", "--data", str(tmp_path), "--cells", "3", "--set", "train.epochs=1", "--set", "data.top_k=4"]
    )
    assert args.cells == 3 and args.overrides == {"train.epochs": "1", "data.top_k": "4"}
    assert parse_args(["--part", "ray", "--data", ""]).cells is None  # the ray part's default (50) applies
    for bad, says in (
        (["--set", "epochs"], "key=value"),
        (["--cells", "0"], "--cells 0"),
        (["--jobs", "1"], "--jobs 1"),
        (["--part", "jobs", "--data", ""], "no dataset"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["--data", str(tmp_path), *bad] if "--data" not in bad else bad)
        assert says in capsys.readouterr().err


def test_grid_scale_records_each_arms_load_and_warns_when_the_arms_differ(monkeypatch):
    """Two arms timed back to back: the load before and after each is in the table, a WARNING when they differ."""
    import pandas as pd

    from bench import grid_scale

    class Result:
        runs = pd.DataFrame({"status": ["FINISHED"], "seconds": [1.0]})
        parent_run_id = "0123456789"

    readings = iter(
        [
            {"load1": 1.0, "busy": 0},
            {"load1": 1.2, "busy": 0},  # arm A: before, after
            {"load1": 1.3, "busy": 0},
            {"load1": 2.1, "busy": 0},  # arm B: its own work loads more cores
            {"load1": 1.0, "busy": 0},
            {"load1": 1.2, "busy": 0},
            {"load1": 3.0, "busy": 2},
            {"load1": 3.4, "busy": 2},
        ]
    )  # arm B met two other jobs
    monkeypatch.setattr(grid_scale, "load_now", lambda: next(readings))
    fair = grid_scale.Arms(log=lambda m: None)
    fair.run("A", Result)
    fair.run("B", Result)
    assert fair.warning() == ""
    assert fair.load_columns("A") == {
        "1-min load before -> after": "1.0 -> 1.2",
        "other busy processes before -> after": "0 -> 0",
    }
    unfair = grid_scale.Arms(log=lambda m: None)
    unfair.run("A", Result)
    unfair.run("B", Result)
    warning = unfair.warning()
    assert warning.startswith("WARNING") and "mean other busy processes 0.0 (A) vs 2.0 (B)" in warning
    assert unfair.load_columns("B") == {
        "1-min load before -> after": "3.0 -> 3.4",
        "other busy processes before -> after": "2 -> 2",
    }


def test_grid_scale_interleaves_halves_that_each_hold_their_finetune_cells_sources():
    from bench.grid_scale import EXPERIMENTS, _has_source, halves, pick_cells
    from fashion_core.grid.plan import plan_grid

    tasks = pick_cells(plan_grid(EXPERIMENTS, seeds=[0], profile="smoke"), 8)
    assert halves(tasks, interleave=False) == [tasks]
    first, second = halves(tasks, interleave=True)
    assert sorted(t.name for t in first + second) == sorted(t.name for t in tasks)  # every cell, once
    assert len(first) >= 4 and len(second) > 0
    assert all(_has_source(t, part) for part in (first, second) for t in part)
    # a finetune cell whose source is in the first half runs in the first half
    pre, ncm = plan_grid(EXPERIMENTS, ["pretrain/baseline", "finetune/ncm"], seeds=[0], profile="smoke")
    assert halves([pre, ncm], interleave=True) == [[pre, ncm]]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_busy_others_counts_busy_processes_outside_this_ones_tree_only(monkeypatch):
    """A busy child of this process is its own work; a busy process outside its tree is other work."""
    import os
    import subprocess
    import sys

    from bench import common

    spin = [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"]
    child = subprocess.Popen(spin)
    # an orphan: its parent (a shell) exits at once, so it is no descendant of this process
    out = subprocess.run(
        ["sh", "-c", f"{' '.join(spin[:2])} '{spin[2]}' >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    orphan = int(out.split()[0])
    listdir = os.listdir
    # only these two processes exist as far as busy_others can see (the machine's other work is not this test's)
    monkeypatch.setattr(common.os, "listdir", lambda p: [str(child.pid), str(orphan)] if p == "/proc" else listdir(p))
    try:
        assert child.pid in common._descendants(os.getpid()) and orphan not in common._descendants(os.getpid())
        # a low share: on shared cores a niced spinner may get only a tenth of one
        assert common.busy_others(window=1.0, share=0.02) == 1
    finally:
        child.kill()
        child.wait()
        os.kill(orphan, 9)


@pytest.mark.integration  # --jobs 2 pools of worker processes
def test_grid_scale_jobs_part_on_generated_data_interleaved(dataset, isolated, monkeypatch):
    """The --part jobs table end to end on smoke cells: both arms ran every cell, one thread each: the same metrics."""
    from bench import grid_scale

    monkeypatch.setenv("FASHION_PROGRESS", "0")
    monkeypatch.setattr(grid_scale, "load_now", lambda: {"load1": 1.0, "busy": 0})  # no 2 s samples
    techniques = ["pretrain/baseline", "pretrain/class_balanced", "finetune/ncm", "finetune/imprint"]
    rows, warning = grid_scale.jobs_part(
        str(dataset),
        techniques,
        "smoke",
        2,
        {"data.top_k": 4, "train.epochs": 1},
        None,
        log=lambda m: None,
        threads=1,
        interleave=True,
    )
    assert warning == ""
    seq, par = rows
    assert seq["grid"] == "sequential, 1 threads" and par["grid"] == "--jobs 2, 1 thread per cell"
    assert seq["cells"] == par["cells"] == seq["finished"] == par["finished"] == 4
    assert len(seq["parent runs"].split(", ")) == 2  # two halves, each its own grid
    assert par["same metrics"] == "yes" and par["wall-time ratio"].endswith("x faster")


def test_text_stem_bench_rules_and_its_paired_interval():
    """bench/text_stem.py: Harman's rules alone leave the -es of words ending in s/ch/sh/x; identical hits give a
    zero-width interval; a one-sided difference an interval on its side; the library's rule is put back."""
    import numpy as np

    from bench import text_stem
    from fashion_core.fusion import encoders

    assert [text_stem.harman(w) for w in ("dresses", "watches", "wallets", "accessories", "bus")] == [
        "dresse",
        "watche",
        "wallet",
        "accessory",
        "bus",
    ]
    assert [encoders.s_stem(w) for w in ("dresses", "watches")] == ["dress", "watch"]
    y = np.repeat(np.arange(3), 20)
    a = np.random.default_rng(0).random(60) < 0.7
    assert text_stem.paired_interval(y, a, a, 200, 0) == (0.0, 0.0)
    better = a | (np.arange(60) % 5 == 0)
    lo, hi = text_stem.paired_interval(y, better, a, 500, 0)
    assert 0 <= lo <= hi and hi > 0
    assert text_stem.RULES["plural"] is encoders.s_stem

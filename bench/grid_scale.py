"""How the grid scales: ``--jobs 2`` against the sequential grid here, and many cells on a local Ray cluster.

(a) ``--part jobs``: the quick-profile default grid (every technique of ``experiments/``, seed 0) on
    the real data, run sequentially on one thread, then with ``--jobs 2`` (one thread per cell), each
    in its own experiment of a private MLflow store (nothing is reused): the wall-time ratio, and
    whether every cell's metrics are the same. The full grid takes hours on 2 cores: ``--cells N``
    keeps N cells (pretrain and finetune alternately, each finetune cell of a model kind a kept
    pretrain cell gives) and ``--set train.epochs=1`` shortens every cell.
(b) ``--part ray``: ``--cells`` smoke cells (one technique x that many seeds, default 50) on generated
    data on a local two-node Ray cluster (``executors.local_cluster``, one CPU per node), then the same
    cells in one process on one thread: cells per minute of each, and the scheduler's overhead per
    cell (the wall time x the slots, less the time the cells spent inside ``run_cell``, per cell).

Prints markdown tables. Run it niced on a shared machine (the numbers then include the other load:
the machine line gives the load average).

    PYTHONPATH=. nice -n 19 .venv/bin/python bench/grid_scale.py --part jobs --cells 4 --set train.epochs=1
    PYTHONPATH=. nice -n 19 .venv/bin/python bench/grid_scale.py --part ray --cells 50
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import default_data, machine_line, table

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
RAY_OVERRIDES = {"data.top_k": 4, "train.epochs": 1}  # a smoke cell of the tests: seconds each


def _private_store(folder: Path) -> None:
    """An MLflow store of this benchmark's own (and no system-metrics thread in the timings)."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    os.environ.setdefault("FASHION_PROGRESS", "0")


def _metrics(res) -> dict:
    """Each cell's metrics (timings and system metrics left out), keyed by stage/technique/seed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return {(r.stage, r.technique, r.seed): {k: v for k, v in client.get_run(r.run_id).data.metrics.items()
                                             if "second" not in k and not k.startswith("system/")}
            for r in res.runs.itertuples()}


def pick_cells(tasks: list, n: int | None) -> list:
    """``n`` cells of a grid in plan order: pretrain and finetune alternately, never a finetune cell without a source.

    A finetune cell that starts from a pretrained model is kept only when a kept pretrain cell has
    its model kind (the grid would otherwise fail it).
    """
    from fashion_core.grid import model_kind, needs_source

    if n is None or n >= len(tasks):
        return list(tasks)
    if n < 1:
        raise SystemExit(f"--cells {n}: must be >= 1")
    pre = [t for t in tasks if t.cfg.stage == "pretrain"]
    fine = [t for t in tasks if t.cfg.stage != "pretrain"]
    kept: list = []
    while len(kept) < n:
        took = False
        if pre:
            kept.append(pre.pop(0))
            took = True
        kinds = {model_kind(t.cfg) for t in kept if t.cfg.stage == "pretrain"}
        ok = next((t for t in fine if not needs_source(t.cfg) or model_kind(t.cfg) in kinds), None)
        if ok is not None and len(kept) < n:
            fine.remove(ok)
            kept.append(ok)
            took = True
        if not took:
            break
    return [t for t in tasks if t in kept]


def jobs_part(data: str, techniques: list[str] | None, profile: str, jobs: int, overrides: dict,
              cells: int | None, log) -> list[dict]:
    """The same grid sequentially (1 thread) and with ``jobs`` workers (1 thread each)."""
    import torch

    from fashion_core.data import prepare_data
    from fashion_core.grid import plan_grid, run_grid

    tasks = pick_cells(plan_grid(EXPERIMENTS, techniques, seeds=[0], profile=profile, overrides=overrides), cells)
    log(f"{len(tasks)} cells: {', '.join(t.name for t in tasks)}")
    prepare_data(data, tasks[0].cfg.data, log=log)  # the image cache is built before either timing starts
    torch.set_num_threads(1)
    rows, results = [], {}
    for name, kw in (("sequential, 1 thread", {}), (f"--jobs {jobs}, 1 thread per cell",
                                                   {"jobs": jobs, "threads_per_cell": 1})):
        t0 = time.perf_counter()
        res = run_grid(tasks, data, experiment=f"grid-scale-{kw.get('jobs', 1)}", register=False, profile=profile,
                       log=log, **kw)
        wall = time.perf_counter() - t0
        results[name] = res
        rows.append({"grid": name, "cells": len(tasks), "finished": int((res.runs["status"] == "FINISHED").sum()),
                     "wall s": wall, "sum of cell s": float(res.runs["seconds"].sum()),
                     "parent run": res.parent_run_id[:8]})
    rows[1]["wall-time ratio"] = f"{rows[0]['wall s'] / rows[1]['wall s']:.2f}x faster"
    seq, par = results.values()
    rows[1]["same metrics"] = "yes" if _metrics(seq) == _metrics(par) else "NO"
    return rows


def _ray_row(where: str, res, wall: float, slots: int) -> dict:
    """Cells/minute and the overhead per cell of one way of running the cells."""
    cells = len(res.runs)
    inside = float(res.runs["seconds"].sum())
    return {"where": where, "cells": cells, "finished": int((res.runs["status"] == "FINISHED").sum()),
            "nodes used": res.runs["worker"].map(lambda w: w.split()[1] if w.startswith("node ") else "").nunique(),
            "wall s": wall, "cells/min": cells / wall * 60, "mean s in a cell": inside / cells,
            "overhead s per cell": (wall * slots - inside) / cells, "parent run": res.parent_run_id[:8]}


def ray_part(cells: int, technique: str, overrides: dict, log) -> list[dict]:
    """``cells`` smoke cells on a local two-node Ray cluster (one CPU each), then the same cells in one process."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_dataset

    from fashion_core.data import prepare_data
    from fashion_core.executors import local_cluster
    from fashion_core.grid import plan_grid, run_grid

    scratch = Path(tempfile.mkdtemp(prefix="grid-scale-ray-"))
    data = str(make_dataset(scratch / "data"))
    tasks = plan_grid(EXPERIMENTS, [technique], seeds=list(range(cells)), profile="smoke",
                      overrides={**RAY_OVERRIDES, **overrides})
    prepare_data(data, tasks[0].cfg.data, log=log)  # the image cache is built before either timing starts
    # Ray prints its workers' lines on this process's stdout: they go to stderr, the table stays alone.
    with contextlib.redirect_stdout(sys.stderr), \
            local_cluster(nodes=2, cpus_per_node=1, log_dir=scratch / "ray", timeout=600) as address:
        t0 = time.perf_counter()
        res = run_grid(tasks, data, experiment="grid-scale-ray", register=False, profile="smoke", log=log,
                       ray=address, cpus_per_cell=1)
        ray_row = _ray_row("Ray, 2 nodes x 1 CPU", res, time.perf_counter() - t0, 2)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seq = run_grid(tasks, data, experiment="grid-scale-one", register=False, profile="smoke", log=log)
    return [ray_row, _ray_row("one process, 1 thread", seq, time.perf_counter() - t0, 1)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fashion_core.config import ConfigError, parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["jobs", "ray", "both"], default="both")
    ap.add_argument("--data", default=default_data(), help="the dataset of --part jobs (default: the real one)")
    ap.add_argument("--techniques", default="all", help="the --part jobs grid (default: every technique)")
    ap.add_argument("--profile", default="quick", help="the --part jobs profile")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cells", type=int, default=None,
                    help="--part jobs: keep this many cells (default all); --part ray: smoke cells (default 50)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of every cell, e.g. train.epochs=1 (repeatable)")
    ap.add_argument("--technique", default="pretrain/baseline", help="the --part ray cells' technique (x seeds)")
    ap.add_argument("--quiet", action="store_true", help="no grid log on stderr")
    args = ap.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    if args.jobs < 2:
        ap.error(f"--jobs {args.jobs}: must be >= 2 (it is compared with the sequential grid)")
    if args.cells is not None and args.cells < 1:
        ap.error(f"--cells {args.cells}: must be >= 1")
    if args.part in ("jobs", "both") and not args.data:
        ap.error("no dataset for --part jobs: pass --data or set FASHION_DATA")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    _private_store(Path(tempfile.mkdtemp(prefix="grid-scale-")))
    sets = " ".join(f"--set {k}={v}" for k, v in args.overrides.items())
    print(f"Grid scaling, {machine_line()}\n")
    if args.part in ("jobs", "both"):
        techniques = None if args.techniques == "all" else args.techniques.split(",")
        print(f"(a) techniques {args.techniques}, profile {args.profile}, seed 0, "
              f"{args.cells or 'all'} cells {sets}\n")
        print(table(jobs_part(args.data, techniques, args.profile, args.jobs, args.overrides, args.cells, log)) + "\n")
    if args.part in ("ray", "both"):
        cells = args.cells or 50
        print(f"(b) {cells} smoke cells of {args.technique} (seeds 0..{cells - 1}), generated data {sets}\n")
        print(table(ray_part(cells, args.technique, args.overrides, log)) + "\n")


if __name__ == "__main__":
    main()

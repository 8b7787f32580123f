"""How the grid scales: ``--jobs 2`` against the sequential grid here, and many cells on a local Ray cluster.

(a) ``--part jobs``: a small quick-profile grid on the real data (2 pretrain + 2 finetune cells by
    default), run sequentially on one thread, then with ``--jobs 2`` (one thread per cell), each in
    its own experiment of a private MLflow store (nothing is reused); the wall-time ratio, and
    whether every cell's metrics are the same.
(b) ``--part ray``: ``--cells`` smoke cells (one technique x that many seeds) on generated data on a
    local two-node Ray cluster (``executors.local_cluster``, one CPU per node), then the same cells in
    one process: cells per minute of each, and the scheduler's overhead per cell (Ray's wall time x
    its slots, less the time the cells spent inside their runs, per cell).

Prints a markdown table. The full 26-cell grid takes over an hour on 2 cores: keep (a) small.

    PYTHONPATH=. .venv/bin/python bench/grid_scale.py --part jobs --data ../shared/data/fashion-product-images-small.tar.gz
    PYTHONPATH=. .venv/bin/python bench/grid_scale.py --part ray --cells 50
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import default_data, machine_line, table

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _private_store(folder: Path) -> None:
    """An MLflow store of this benchmark's own (and no system-metrics thread in the timings)."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    os.environ.setdefault("FASHION_PROGRESS", "0")


def _metrics(res) -> dict:
    """Each cell's metrics (timings left out), keyed by stage/technique/seed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return {(r.stage, r.technique, r.seed): {k: v for k, v in client.get_run(r.run_id).data.metrics.items()
                                             if "second" not in k}
            for r in res.runs.itertuples()}


def jobs_part(data: str, techniques: list[str], profile: str, jobs: int, log) -> list[dict]:
    """The same grid sequentially (1 thread) and with ``jobs`` workers (1 thread each)."""
    import torch

    from fashion_core.grid import plan_grid, run_grid

    tasks = plan_grid(EXPERIMENTS, techniques, seeds=[0], profile=profile)
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
                     "wall s": wall, "sum of cell s": float(res.runs["seconds"].sum()), "parent run": res.parent_run_id})
    rows[1]["vs sequential"] = f"{rows[0]['wall s'] / rows[1]['wall s']:.2f}x faster"
    seq, par = results.values()
    rows[1]["same metrics"] = "yes" if _metrics(seq) == _metrics(par) else "NO"
    return rows


def ray_part(cells: int, technique: str, log) -> list[dict]:
    """``cells`` smoke cells on a local two-node Ray cluster, then the same cells in one process."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_dataset

    from fashion_core.executors import local_cluster
    from fashion_core.grid import plan_grid, run_grid

    scratch = Path(tempfile.mkdtemp(prefix="grid-scale-ray-"))
    data = str(make_dataset(scratch / "data"))
    overrides = {"data.top_k": 4, "train.epochs": 1}
    tasks = plan_grid(EXPERIMENTS, [technique], seeds=list(range(cells)), profile="smoke", overrides=overrides)
    rows = []
    with local_cluster(nodes=2, cpus_per_node=1, log_dir=scratch / "ray") as address:
        t0 = time.perf_counter()
        res = run_grid(tasks, data, experiment="grid-scale-ray", register=False, profile="smoke", log=log,
                       ray=address, cpus_per_cell=1)
        wall = time.perf_counter() - t0
    inside = float(res.runs["seconds"].sum())
    slots = 2
    rows.append({"where": "Ray, 2 nodes x 1 CPU", "cells": len(tasks),
                 "finished": int((res.runs["status"] == "FINISHED").sum()),
                 "nodes used": res.runs["worker"].str.split().str[1].nunique(), "wall s": wall,
                 "cells/min": len(tasks) / wall * 60, "mean s in a cell": inside / len(tasks),
                 "overhead s per cell": (wall * slots - inside) / len(tasks)})
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seq = run_grid(tasks, data, experiment="grid-scale-one", register=False, profile="smoke", log=log)
    wall1 = time.perf_counter() - t0
    inside1 = float(seq.runs["seconds"].sum())
    rows.append({"where": "one process, 1 thread", "cells": len(tasks),
                 "finished": int((seq.runs["status"] == "FINISHED").sum()), "nodes used": 1, "wall s": wall1,
                 "cells/min": len(tasks) / wall1 * 60, "mean s in a cell": inside1 / len(tasks),
                 "overhead s per cell": (wall1 - inside1) / len(tasks)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["jobs", "ray", "both"], default="both")
    ap.add_argument("--data", default=default_data(), help="the real dataset for --part jobs")
    ap.add_argument("--techniques", default="pretrain/baseline,pretrain/focal,finetune/ncm,finetune/imprint",
                    help="the --part jobs grid (2 pretrain + 2 finetune: the full grid takes over an hour)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cells", type=int, default=50, help="smoke cells for --part ray")
    ap.add_argument("--technique", default="pretrain/baseline", help="the --part ray cells' technique (x seeds)")
    ap.add_argument("--quiet", action="store_true", help="no grid log on stderr")
    args = ap.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    _private_store(Path(tempfile.mkdtemp(prefix="grid-scale-")))
    print(f"Grid scaling, {machine_line()}\n")
    if args.part in ("jobs", "both"):
        if not args.data:
            sys.exit("no dataset for --part jobs: pass --data or set FASHION_DATA")
        print(f"(a) {args.techniques}, profile {args.profile}, seed 0\n")
        print(table(jobs_part(args.data, args.techniques.split(","), args.profile, args.jobs, log)) + "\n")
    if args.part in ("ray", "both"):
        print(f"(b) {args.cells} smoke cells of {args.technique} (seeds 0..{args.cells - 1}), generated data\n")
        print(table(ray_part(args.cells, args.technique, log)) + "\n")


if __name__ == "__main__":
    main()

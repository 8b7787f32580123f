"""How the grid scales: ``--jobs 2`` against the sequential grid here, and many cells on a local Ray cluster.

Each part times its two arms back to back in this one invocation, and records before and after each
arm the 1-minute load average (all work, the arm's own included) and the number of other busy
processes (outside this benchmark's process tree); the table shows them and a WARNING line follows
when the arms' mean numbers of other busy processes differ by more than 0.5 (the ratio is then
not a fair comparison; the load average counts the arm's own work too, so it is shown, not tested).
``--interleave`` runs the arms in halves, A B A B, so that a change of load meets both.

(a) ``--part jobs``: the quick-profile default grid (every technique of ``experiments/``, seed 0) on
    the real data, run sequentially with every core's thread (``--threads``, 2 here), then with
    ``--jobs 2`` (one thread per cell), each in its own experiment of a private MLflow store (nothing
    is reused): the wall-time ratio, and whether every cell's metrics are the same (they may differ
    in the last digits when the thread counts differ). The full grid takes hours on 2 cores:
    ``--cells N`` keeps N cells (pretrain and finetune alternately, each finetune cell of a model kind
    a kept pretrain cell gives) and ``--set train.epochs=1`` shortens every cell.
(b) ``--part ray``: ``--cells`` smoke cells (one technique x that many seeds, default 50) on generated
    data on a local two-node Ray cluster (``executors.local_cluster``, one CPU per node), then the same
    cells in one process on one thread: cells per minute of each, and the scheduler's overhead per
    cell (the wall time x the slots, less the time the cells spent inside ``run_cell``, per cell).

Prints markdown tables. Run it niced on a shared machine, or better on idle cores.

    PYTHONPATH=. nice -n 19 .venv/bin/python bench/grid_scale.py --part jobs --cells 4 --set train.epochs=1
    PYTHONPATH=. nice -n 19 .venv/bin/python bench/grid_scale.py --part ray --cells 50 --interleave
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

from bench.common import default_data, load_now, machine_line, table

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
    return {
        (r.stage, r.technique, r.seed): {
            k: v
            for k, v in client.get_run(r.run_id).data.metrics.items()
            if "second" not in k and not k.startswith("system/")
        }
        for r in res.runs.itertuples()
    }


def pick_cells(tasks: list, n: int | None) -> list:
    """``n`` cells of a grid in plan order: pretrain and finetune alternately, never a finetune cell without a source.

    A finetune cell that starts from a pretrained model is kept only when a kept pretrain cell has
    its model kind (the grid would otherwise fail it).
    """
    from fashion_core.grid.plan import model_kind, needs_source

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


class Arms:
    """Two ways of running the same cells, timed back to back in this one invocation (or interleaved in halves).

    Before and after each run it records the 1-minute load average (all work, this benchmark's own
    included) and the other busy processes (``common.busy_others``: this process's tree left out),
    so that a table says whether both arms met the same machine.
    """

    def __init__(self, log):
        self.log = log
        self.results: dict[str, list] = {}  # arm -> the GridResult of each part
        self.walls: dict[str, float] = {}
        self.loads: dict[str, list[dict]] = {}  # arm -> load_now() before and after each part

    def run(self, name: str, fn) -> None:
        before = load_now()
        t0 = time.perf_counter()
        res = fn()
        wall = time.perf_counter() - t0
        after = load_now()
        self.results.setdefault(name, []).append(res)
        self.walls[name] = self.walls.get(name, 0.0) + wall
        self.loads.setdefault(name, []).extend([before, after])
        self.log(
            f"{name}: {len(res.runs)} cells in {wall:.0f} s; load {before['load1']:.1f} -> {after['load1']:.1f}, "
            f"other busy processes {before['busy']} -> {after['busy']}"
        )

    def load_columns(self, name: str) -> dict:
        """The arm's load before -> after each of its runs, for the table."""
        pairs = list(zip(self.loads[name][::2], self.loads[name][1::2]))
        return {
            "1-min load before -> after": ", ".join(f"{b['load1']:.1f} -> {a['load1']:.1f}" for b, a in pairs),
            "other busy processes before -> after": ", ".join(f"{b['busy']} -> {a['busy']}" for b, a in pairs),
        }

    def warning(self, limit: float = 0.5) -> str:
        """A line when the arms' mean numbers of other busy processes differ by more than ``limit``, else ''.

        The load average is no such test: it counts the arm's own work too (the Ray arm keeps two
        cores busy, the one-process arm one), so the arms' loads differ on an idle machine.
        """
        means = {name: sum(x["busy"] for x in xs) / len(xs) for name, xs in self.loads.items()}
        (a, ma), (b, mb) = list(means.items())[:2]
        if abs(ma - mb) <= limit:
            return ""
        return (
            f"WARNING: the arms did not meet the same machine: mean other busy processes {ma:.1f} ({a}) vs "
            f"{mb:.1f} ({b}). The wall-time ratio is not a fair comparison: rerun on idle cores."
        )


def halves(tasks: list, interleave: bool) -> list[list]:
    """The parts the arms take turns on: all the cells, or two halves that each hold their finetune cells' sources.

    The first half is ``pick_cells`` of half the cells; a finetune cell of the rest whose model
    kind has no pretrain cell there joins the first half, so that every cell runs (the halves may
    then differ in size).
    """
    if not interleave or len(tasks) < 2:
        return [list(tasks)]
    first = pick_cells(tasks, (len(tasks) + 1) // 2)
    rest = [t for t in tasks if t not in first]
    moved = [t for t in rest if not _has_source(t, rest)]
    first = [t for t in tasks if t in first or t in moved]
    second = [t for t in rest if t not in moved]
    return [first, second] if second else [first]


def _has_source(task, tasks: list) -> bool:
    from fashion_core.grid.plan import model_kind, needs_source

    return not needs_source(task.cfg) or any(
        t.cfg.stage == "pretrain" and model_kind(t.cfg) == model_kind(task.cfg) for t in tasks
    )


def jobs_part(
    data: str,
    techniques: list[str] | None,
    profile: str,
    jobs: int,
    overrides: dict,
    cells: int | None,
    log,
    threads: int | None = None,
    interleave: bool = False,
) -> tuple[list[dict], str]:
    """The same grid sequentially (``threads`` threads, default: every core) and with ``jobs`` workers (1 thread each).

    Returns the table's rows and the fairness warning ('' when the arms met the same load).
    """
    import torch

    from fashion_core.data.prepared import prepare_data
    from fashion_core.grid.plan import plan_grid
    from fashion_core.grid.scheduler import run_grid

    tasks = pick_cells(plan_grid(EXPERIMENTS, techniques, seeds=[0], profile=profile, overrides=overrides), cells)
    log(f"{len(tasks)} cells: {', '.join(t.name for t in tasks)}")
    prepare_data(data, tasks[0].cfg.data)  # the image cache is built before either timing starts
    threads = threads or os.cpu_count() or 1
    seq_name, par_name = f"sequential, {threads} threads", f"--jobs {jobs}, 1 thread per cell"
    arms = Arms(log)
    for k, part in enumerate(halves(tasks, interleave)):
        torch.set_num_threads(threads)
        arms.run(
            seq_name,
            lambda: run_grid(part, data, experiment=f"grid-scale-seq-{k}", register=False, profile=profile),
        )
        arms.run(
            par_name,
            lambda: run_grid(
                part,
                data,
                experiment=f"grid-scale-jobs-{k}",
                register=False,
                profile=profile,
                jobs=jobs,
                threads_per_cell=1,
            ),
        )
    rows = []
    for name in (seq_name, par_name):
        runs = [r.runs for r in arms.results[name]]
        rows.append(
            {
                "grid": name,
                "cells": sum(len(r) for r in runs),
                "finished": sum(int((r["status"] == "FINISHED").sum()) for r in runs),
                "wall s": arms.walls[name],
                "sum of cell s": sum(float(r["seconds"].sum()) for r in runs),
                **arms.load_columns(name),
                "parent runs": ", ".join(r.parent_run_id[:8] for r in arms.results[name]),
            }
        )
    rows[1]["wall-time ratio"] = f"{rows[0]['wall s'] / rows[1]['wall s']:.2f}x faster"
    same = all(_metrics(a) == _metrics(b) for a, b in zip(arms.results[seq_name], arms.results[par_name]))
    # Equal only at equal threads (torch's CPU kernels sum in a thread-dependent order).
    rows[1]["same metrics"] = "yes" if same else ("NO" if threads == 1 else f"differ ({threads} vs 1 threads)")
    return rows, arms.warning()


def _ray_row(where: str, results: list, wall: float, slots: int, loads: dict) -> dict:
    """Cells/minute and the overhead per cell of one way of running the cells."""
    import pandas as pd

    runs = pd.concat([r.runs for r in results], ignore_index=True)
    cells = len(runs)
    inside = float(runs["seconds"].sum())
    return {
        "where": where,
        "cells": cells,
        "finished": int((runs["status"] == "FINISHED").sum()),
        "nodes used": runs["worker"].map(lambda w: w.split()[1] if w.startswith("node ") else "").nunique(),
        "wall s": wall,
        "cells/min": cells / wall * 60,
        "mean s in a cell": inside / cells,
        "overhead s per cell": (wall * slots - inside) / cells,
        **loads,
        "parent runs": ", ".join(r.parent_run_id[:8] for r in results),
    }


def ray_part(cells: int, technique: str, overrides: dict, log, interleave: bool = False) -> tuple[list[dict], str]:
    """``cells`` smoke cells on a local two-node Ray cluster (one CPU each), then the same cells in one process.

    With ``interleave`` the cluster stays up (idle) while the one-process arm runs its halves.
    """
    import torch

    from fashion_core.data.prepared import prepare_data
    from fashion_core.grid.executors import local_cluster
    from fashion_core.grid.plan import plan_grid
    from fashion_core.grid.scheduler import run_grid
    from tests.helpers.data import make_dataset

    scratch = Path(tempfile.mkdtemp(prefix="grid-scale-ray-"))
    data = str(make_dataset(scratch / "data"))
    tasks = plan_grid(
        EXPERIMENTS, [technique], seeds=list(range(cells)), profile="smoke", overrides={**RAY_OVERRIDES, **overrides}
    )
    prepare_data(data, tasks[0].cfg.data)  # the image cache is built before either timing starts
    ray_name, one_name = "Ray, 2 nodes x 1 CPU", "one process, 1 thread"
    parts = (
        [tasks[: (len(tasks) + 1) // 2], tasks[(len(tasks) + 1) // 2 :]] if interleave and len(tasks) > 1 else [tasks]
    )
    arms = Arms(log)

    def one(part: list, k: int):
        torch.set_num_threads(1)
        return run_grid(part, data, experiment=f"grid-scale-one-{k}", register=False, profile="smoke")

    # Ray prints its workers' lines on this process's stdout: they go to stderr, the table stays alone.
    with (
        contextlib.redirect_stdout(sys.stderr),
        local_cluster(nodes=2, cpus_per_node=1, log_dir=scratch / "ray", timeout=600) as address,
    ):
        for k, part in enumerate(parts):
            arms.run(
                ray_name,
                lambda: run_grid(
                    part,
                    data,
                    experiment=f"grid-scale-ray-{k}",
                    register=False,
                    profile="smoke",
                    ray=address,
                    cpus_per_cell=1,
                ),
            )
            if interleave:
                arms.run(one_name, lambda: one(part, k))
    if not interleave:
        arms.run(one_name, lambda: one(tasks, 0))
    rows = [
        _ray_row(name, arms.results[name], arms.walls[name], slots, arms.load_columns(name))
        for name, slots in ((ray_name, 2), (one_name, 1))
    ]
    return rows, arms.warning()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fashion_core.config.checks import ConfigError
    from fashion_core.config.schema import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["jobs", "ray", "both"], default="both")
    ap.add_argument("--data", default=default_data(), help="the dataset of --part jobs (default: the real one)")
    ap.add_argument("--techniques", default="all", help="the --part jobs grid (default: every technique)")
    ap.add_argument("--profile", default="quick", help="the --part jobs profile")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--cells",
        type=int,
        default=None,
        help="--part jobs: keep this many cells (default all); --part ray: smoke cells (default 50)",
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override of every cell, e.g. train.epochs=1 (repeatable)",
    )
    ap.add_argument("--technique", default="pretrain/baseline", help="the --part ray cells' technique (x seeds)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="--part jobs: the sequential grid's torch threads (default: every core)",
    )
    ap.add_argument(
        "--interleave", action="store_true", help="run the arms in halves, A B A B, so that a change of load meets both"
    )
    ap.add_argument("--quiet", action="store_true", help="no grid log on stderr")
    args = ap.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.overrides)
    except ConfigError as e:
        ap.error(str(e))
    if args.jobs < 2:
        ap.error(f"--jobs {args.jobs}: must be >= 2 (it is compared with the sequential grid)")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads {args.threads}: must be >= 1")
    if args.cells is not None and args.cells < 1:
        ap.error(f"--cells {args.cells}: must be >= 1")
    if args.part in ("jobs", "both") and not args.data:
        ap.error("no dataset for --part jobs: pass --data or set FASHION_DATA")
    return args


def main(argv: list[str] | None = None) -> None:
    from fashion_core.engine.console import console

    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.quiet:  # the library's lines (the data, the grids' cells) on stderr, as the bench's own
            stack.enter_context(console(stream=sys.stderr))
        log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
        _private_store(Path(tempfile.mkdtemp(prefix="grid-scale-")))
        sets = " ".join(f"--set {k}={v}" for k, v in args.overrides.items())
        print(f"Grid scaling, {machine_line()}\n")
        if args.part in ("jobs", "both"):
            techniques = None if args.techniques == "all" else args.techniques.split(",")
            print(
                f"(a) techniques {args.techniques}, profile {args.profile}, seed 0, {args.cells or 'all'} cells {sets}\n"
            )
            rows, warning = jobs_part(
                args.data,
                techniques,
                args.profile,
                args.jobs,
                args.overrides,
                args.cells,
                log,
                threads=args.threads,
                interleave=args.interleave,
            )
            print(table(rows) + "\n" + (f"\n{warning}\n" if warning else ""))
        if args.part in ("ray", "both"):
            cells = args.cells or 50
            print(f"(b) {cells} smoke cells of {args.technique} (seeds 0..{cells - 1}), generated data {sets}\n")
            rows, warning = ray_part(cells, args.technique, args.overrides, log, interleave=args.interleave)
            print(table(rows) + "\n" + (f"\n{warning}\n" if warning else ""))


if __name__ == "__main__":
    main()

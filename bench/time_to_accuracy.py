"""Time to accuracy: how long a profile's pretrain takes on this machine to reach its figure.

Issue #17 asks for the wall time of the `cpu` profile's pretrain on 2 cores (goal: pretrain test
class-mean >= 0.90 within 30 minutes). This script trains one pretrain run per profile (or reads
runs already logged) and prints, per run, the validation class-mean after every epoch against the
cumulative training time, then the run's whole wall time and its test figure (read once, at the end
of the run, as every run does). Validation picks nothing here: each run keeps its last epoch or its
best validation epoch as its profile says.

    # train (one run per profile; the threads are torch's intra-op threads of this process)
    python bench/time_to_accuracy.py --data ../shared/data/fashion-product-images-small.tar.gz \
        --profiles cpu,quick --technique weighted_ce --threads 2
    # or tabulate runs that are already logged (e.g. by `fashion pretrain --profile cpu`)
    python bench/time_to_accuracy.py --runs 692a376a0c544fd59e2d751d1c790c79
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import default_data, machine_line, table  # noqa: E402


def run_rows(run_id: str, goal: float, budget_min: float) -> tuple[list[dict], dict]:
    """Per-epoch rows and a summary row of one logged pretrain run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    epoch_s = {x.step: x.value for x in client.get_metric_history(run_id, "epoch_seconds")}
    val = {x.step: x.value for x in client.get_metric_history(run_id, "val_top1_mean")}
    ips = {x.step: x.value for x in client.get_metric_history(run_id, "train_images_per_second")}
    name = f"{tags.get('technique', '?')}/seed{tags.get('seed', '?')}"
    profile = tags.get("profile", p.get("profile", ""))
    cumulative, rows = 0.0, []
    for epoch in sorted(epoch_s):
        cumulative += epoch_s[epoch]
        rows.append(
            {
                "run": run_id[:8],
                "technique": name,
                "epoch": epoch,
                "train min (cumulative)": cumulative / 60,
                "images/s": ips.get(epoch, float("nan")),
                "val class-mean": val.get(epoch, float("nan")),
            }
        )
    minutes = m.get("run_seconds", float("nan")) / 60
    test = m.get("test_top1_mean", float("nan"))
    met = test >= goal and minutes <= budget_min
    summary = {
        "run": run_id[:8],
        "technique": name,
        "profile": profile or "-",
        "input": f"{p.get('data.height')}x{p.get('data.width')} x{p.get('model.input_scale', '1.0')}",
        "epochs": len(epoch_s),
        "run min (wall)": minutes,
        "val class-mean (selected)": m.get("best_val_top1_mean", m.get("val_top1_mean", float("nan"))),
        "test top-1 class-mean": test,
        "test top-5 class-mean": m.get("test_top5_mean", float("nan")),
        f">= {goal:g} within {budget_min:g} min": "yes" if met else "no",
    }
    return rows, summary


def train(args: argparse.Namespace) -> list[str]:
    """One pretrain run per profile; returns their run ids."""
    import torch

    from fashion_core.config.schema import find_technique, load_experiment
    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.stage import run_stage

    torch.set_num_threads(args.threads)
    data = args.data or default_data()
    if not data:
        sys.exit("no data: pass --data (the real archive) or set FASHION_DATA")
    run_ids = []
    for profile in args.profiles.split(","):
        cfg = load_experiment(
            find_technique(args.technique, "pretrain", ROOT / "experiments"),
            profile=profile,
            stage="pretrain",
            overrides={"train.seed": args.seed},
        )
        prepared = prepare_data(data, cfg.data)
        t0 = time.perf_counter()
        run_id = run_stage(
            cfg,
            data,
            experiment=args.experiment,
            prepared=prepared,
            tags={"bench": "time_to_accuracy", "profile": profile, "torch_threads": str(args.threads)},
        )
        print(f"{profile}: run {run_id} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        run_ids.append(run_id)
    return run_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--profiles", default="cpu", help="comma-separated profiles to train")
    ap.add_argument("--technique", default="weighted_ce")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--runs", default="", help="comma-separated run ids to tabulate instead of training")
    ap.add_argument("--goal", type=float, default=0.90, help="pretrain test class-mean top-1 goal")
    ap.add_argument("--budget", type=float, default=30.0, help="minutes")
    args = ap.parse_args()

    run_ids = [r for r in args.runs.split(",") if r] or train(args)
    print(f"\n{machine_line()}")
    epochs, summaries = [], []
    for run_id in run_ids:
        rows, summary = run_rows(run_id, args.goal, args.budget)
        epochs += rows
        summaries.append(summary)
    print("\nValidation after each epoch (cumulative training time, without evaluation):\n")
    print(table(epochs))
    print("\nWhole run (prepare from the cache, training, validation and the test evaluation):\n")
    print(table(summaries))


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        main()

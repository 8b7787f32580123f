"""Same numbers before and after a refactor: the runs of two stores compared metric by metric.

Run the same commands in two checkouts, each into a store of its own (one thread, same seeds), e.g.
``fashion grid --profile smoke --techniques all --seeds 0 --data D --experiment same-numbers``, then

    python bench/same_numbers.py sqlite:////tmp/before/mlflow.db sqlite:////tmp/after/mlflow.db

prints one row per (experiment, stage, technique) with both run ids and how many of its ``test_*`` / ``val_*``
metrics (and ``best_epoch``, ``ensemble_weight``) differ; exits 1 when any differ.
"""

from __future__ import annotations

import argparse
import sys

from mlflow.tracking import MlflowClient

EXPERIMENTS = ("same-numbers", "same-numbers-quick")


def _compared(name: str) -> bool:
    return name.startswith(("test_", "val_")) or name in ("best_epoch", "ensemble_weight")


def load(uri: str, experiments=EXPERIMENTS) -> dict[tuple[str, str, str], tuple[str, str, dict[str, float]]]:
    """(experiment, stage, technique) -> (run id, status, compared metrics) of the pretrain / finetune runs."""
    client = MlflowClient(tracking_uri=uri)
    out = {}
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        for r in client.search_runs([exp.experiment_id], max_results=5000):
            tags = r.data.tags
            if tags.get("stage") in ("pretrain", "finetune"):
                metrics = {k: v for k, v in r.data.metrics.items() if _compared(k)}
                out[(name, tags["stage"], tags["technique"])] = (r.info.run_id, r.info.status, metrics)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="tracking URI of the store run before the change")
    ap.add_argument("after", help="tracking URI of the store run after it")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS), help="experiment names, comma-separated")
    args = ap.parse_args(argv)
    names = tuple(args.experiments.split(","))
    a, b = load(args.before, names), load(args.after, names)
    differ = 0
    print(
        f"{'experiment':22} {'stage':9} {'technique':18} {'before':9} {'after':9} {'test_top1_mean':>14} {'metrics':>7} {'differ':>6}"
    )
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"{key[0]:22} {key[1]:9} {key[2]:18} only in the {'before' if key in a else 'after'} store")
            differ += 1
            continue
        (ra, _, ma), (rb, _, mb) = a[key], b[key]
        n = sum(ma[k] != mb[k] for k in set(ma) & set(mb)) + len(set(ma) ^ set(mb))
        differ += n
        top1 = ma.get("test_top1_mean", float("nan"))
        print(
            f"{key[0]:22} {key[1]:9} {key[2]:18} {ra[:8]:9} {rb[:8]:9} {top1:14.4f} {len(set(ma) & set(mb)):7d} {n:6d}"
        )
    print(f"metrics that differ: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy benchmark: pretrain techniques, then finetune techniques from the best pretrain run, on the real data.

Every number comes from a logged MLflow run (config, data digest, commit); the table
printed at the end lists the run ids. Validation picks the source model, never test.

    python bench/accuracy.py --data ../shared/data/fashion-product-images-small.tar.gz --profile quick \
        --pretrain baseline --finetune finetune,linear_probe,imprint,ncm,scratch
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fashion_core.config.schema import find_technique, load_experiment, parse_overrides
from fashion_core.data.prepared import prepare_data
from fashion_core.runners.stage import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--pretrain", default="baseline", help="comma-separated pretrain techniques")
    ap.add_argument("--finetune", default="finetune,linear_probe,partial,imprint,imprint_finetune,ncm,scratch")
    ap.add_argument("--from", dest="source", default=None, help="skip pretraining: finetune from this run")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("-o", "--override", action="append", default=[], help="applied to every technique")
    ap.add_argument("--experiment", default=None)
    args = ap.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    seeds = [int(s) for s in args.seeds.split(",")]
    over = parse_overrides(args.override)
    base = load_experiment(profile=args.profile, overrides=over)
    prepared = prepare_data(args.data, base.data)
    rows = []

    def record(stage: str, technique: str, seed: int, run_id: str, seconds: float) -> None:
        r = MlflowClient().get_run(run_id)
        m = r.data.metrics
        # best_val_top1_mean: the selected epoch's; runs that do not train (imprint, ncm) log val_top1_mean only
        # a selection run (-o data.val_by=year) logs no test figure: its test columns read nan
        nan = float("nan")
        rows.append(
            (
                stage,
                technique,
                seed,
                m.get("best_val_top1_mean", m.get("val_top1_mean", nan)),
                m.get("test_top1_mean", nan),
                m.get("test_top1_mean_lo", nan),
                m.get("test_top1_mean_hi", nan),
                m.get("test_top5_mean", nan),
                m.get("test_top1_micro", nan),
                int(m.get("test_n_classes_evaluated", 0)),
                seconds,
                run_id,
            )
        )

    best_src, best_val = args.source, -1.0
    if not args.source:
        for technique in args.pretrain.split(","):
            for seed in seeds:
                cfg = load_experiment(
                    find_technique(technique, "pretrain", ROOT / "experiments"),
                    profile=args.profile,
                    stage="pretrain",
                    overrides={**over, "train.seed": seed},
                )
                t0 = time.perf_counter()
                run_id = run_stage(
                    cfg, args.data, experiment=args.experiment, prepared=prepared, tags={"bench": "accuracy"}
                )
                record("pretrain", technique, seed, run_id, time.perf_counter() - t0)
                val = MlflowClient().get_run(run_id).data.metrics.get("best_val_top1_mean", -1.0)
                if val > best_val:
                    best_src, best_val = run_id, val
    for technique in [t for t in args.finetune.split(",") if t]:
        for seed in seeds:
            cfg = load_experiment(
                find_technique(technique, "finetune", ROOT / "experiments"),
                profile=args.profile,
                stage="finetune",
                overrides={**over, "train.seed": seed},
            )
            t0 = time.perf_counter()
            run_id = run_stage(
                cfg,
                args.data,
                source=best_src,
                experiment=args.experiment,
                prepared=prepared,
                tags={"bench": "accuracy"},
            )
            record("finetune", technique, seed, run_id, time.perf_counter() - t0)

    print(f"\nprofile {args.profile}, overrides {over or '-'}, tracking {mlflow.get_tracking_uri()}")
    print(
        "| stage | technique | seed | val top-1 (mean) | test top-1 (mean) [95% CI] | test top-5 (mean) "
        "| test top-1 (micro) | classes | minutes | run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for st, t, s, v, t1, lo, hi, t5, mi, n, sec, rid in rows:
        print(
            f"| {st} | {t} | {s} | {v:.3f} | {t1:.3f} [{lo:.3f}, {hi:.3f}] | {t5:.3f} | {mi:.3f} | {n} "
            f"| {sec / 60:.1f} | `{rid[:8]}` |"
        )
    if len(seeds) > 1:
        print(seed_summary(rows))


def seed_summary(rows: list[tuple]) -> str:
    """Per stage and technique: the seed mean and sample standard deviation of each figure (the headline)."""
    import numpy as np

    groups: dict[tuple[str, str], list[tuple]] = {}
    for r in rows:
        groups.setdefault((r[0], r[1]), []).append(r)
    out = [
        "",
        "| stage | technique | seeds | val top-1 mean ± s.d. | test top-1 mean ± s.d. | test top-5 mean ± s.d. "
        "| minutes per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (st, t), rs in groups.items():

        def ms(i: int) -> str:
            x = np.array([r[i] for r in rs], dtype=float)
            return f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.3f}"

        out.append(
            f"| {st} | {t} | {','.join(str(r[2]) for r in rs)} | {ms(3)} | {ms(4)} | {ms(7)} "
            f"| {np.mean([r[10] for r in rs]) / 60:.1f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        main()

"""What the image gives, what the metadata gives, and what both give: the fusion table, both stages.

Runs every variant as an MLflow run of its stage on one prepared dataset: the pretrain techniques first,
then each finetune technique from ITS OWN pretrain run (a fused finetune needs the encoders of the
matching fused pretrain; the metadata-only baseline trains on the finetune rows alone). Prints test
class-mean Top-1 / Top-5 per stage as a Markdown table (a ``leaky`` column flags variants that feed
masterCategory / subCategory in), and writes it with the run ids to ``--out`` (CSV).

    nice -n 15 .venv/bin/python bench/fusion_table.py --profile quick --data ../shared/data/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# key -> (row label, pretrain technique, finetune technique); the first five are the table
VARIANTS = {
    # the image network with the same class-mean loss as the fused techniques (logit-adjusted), and its best
    # transfer (imprinting + logit-adjusted fine-tuning): the fused rows are compared with image at its best
    "image": ("image only", "logit_adjusted", "imprint_balanced"),
    "meta": ("metadata only (logistic regression)", "meta_only", "meta_only"),
    "fused": ("fused, without the name text", "fused", "fused"),
    "text": ("fused, with the name text", "fused_text", "fused_text"),
    "aux": ("fused + name text + auxiliary heads", "fused_text_aux", "fused_text_aux"),
    "meta_cat": ("metadata only, without the name text", "meta_only_cat", "meta_only_cat"),
    "film": ("FiLM, with the name text", "fused_text_film", "fused_text_film"),
}
DEFAULT_VARIANTS = "image,meta,fused,text,aux"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="The dataset (folder, archive), as for `fashion prepare`.")
    ap.add_argument("--profile", default="quick", help="Config profile (quick: minutes per run on 2 CPU cores).")
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"Comma-separated keys of {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS}).",
    )
    ap.add_argument(
        "--stages", default="pretrain,finetune", help="pretrain, finetune or both (finetune needs pretrain)."
    )
    ap.add_argument("--experiment", default="fusion-table", help="MLflow experiment for the runs.")
    ap.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override applied to every variant, e.g. -o train.epochs=2 (repeatable).",
    )
    ap.add_argument("--out", default="fusion_table.csv", help="CSV of the table with run ids and seconds.")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0: torch's default). 1 on a machine shared with other jobs: "
        "oversubscribed OpenMP threads stall each other (measured 5-8x slower steps).",
    )
    args = ap.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {', '.join(bad)}; choose from: {', '.join(VARIANTS)}")
    stages = args.stages.split(",")
    if not set(stages) <= {"pretrain", "finetune"} or stages == ["finetune"]:
        ap.error("--stages: pretrain or pretrain,finetune (each finetune variant starts from its pretrain run)")
    return args


def fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(rows: list[dict], stages: list[str]) -> str:
    """The table: one row per variant, class-mean Top-1 / Top-5 per stage, and the leaky flag."""
    head = ["variant"] + [f"{s} {m}" for s in stages for m in ("Top-1", "Top-5")] + ["leaky"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]] + [fmt(r.get(f"{s}_{m}")) for s in stages for m in ("top1", "top5")]
        lines.append("| " + " | ".join(cells + ["LEAKY" if r["leaky"] else "no"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from fashion_core.config.schema import find_technique, load_experiment, parse_overrides
    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.stage import run_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = args.stages.split(",")
    keys = args.variants.split(",")
    overrides = parse_overrides(args.override)
    command = "nice -n 15 .venv/bin/python bench/fusion_table.py " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )
    configs = {
        (k, s): load_experiment(
            find_technique(VARIANTS[k][1 if s == "pretrain" else 2], s, ROOT / "experiments"),
            overrides=overrides,
            profile=args.profile,
            stage=s,
        )
        for k in keys
        for s in stages
    }  # every config validated before the first run
    prepared = prepare_data(args.data, configs[(keys[0], "pretrain")].data)
    rows = {k: {"variant": VARIANTS[k][0], "leaky": any(configs[(k, s)].fusion.leaky for s in stages)} for k in keys}
    client = MlflowClient()
    t0 = time.perf_counter()
    for stage in stages:
        for k in keys:
            cfg = configs[(k, stage)]
            source = rows[k].get("pretrain_run") if stage == "finetune" else None
            print(f"\n=== {stage} / {cfg.technique} ({VARIANTS[k][0]}) ===", flush=True)
            t1 = time.perf_counter()
            run_id = run_stage(
                cfg,
                args.data,
                source=source,
                experiment=args.experiment,
                register=False,
                prepared=prepared,
                tags={"bench": "fusion_table"},
            )
            m = client.get_run(run_id).data.metrics
            # a selection run (-o data.val_by=year) logs no test figure: its columns read nan
            m = {"test_top1_mean": float("nan"), "test_top5_mean": float("nan"), **m}
            rows[k].update(
                {
                    f"{stage}_top1": m["test_top1_mean"],
                    f"{stage}_top5": m["test_top5_mean"],
                    f"{stage}_run": run_id,
                    f"{stage}_seconds": round(time.perf_counter() - t1, 1),
                    f"{stage}_classes": int(m.get("test_n_classes_evaluated", 0)),
                }
            )
            pd.DataFrame(list(rows.values())).to_csv(args.out, index=False)  # partial results survive a stop
            print(
                f"--- {stage} {cfg.technique}: class-mean top-1 {fmt(m['test_top1_mean'])}, "
                f"top-5 {fmt(m['test_top5_mean'])} ({rows[k][stage + '_seconds']:.0f} s)",
                flush=True,
            )
    table = markdown(list(rows.values()), stages)
    frame = pd.DataFrame(list(rows.values()))
    frame.to_csv(args.out, index=False)
    evaluated = ", ".join(f"{s}: {frame[s + '_classes'].iloc[0]} classes evaluated" for s in stages)
    print(f"\nTest class-mean accuracy ({args.profile} profile, {time.perf_counter() - t0:.0f} s; {evaluated}):\n")
    print(table)
    print(f"\n{command}\n\nruns: {args.out} (MLflow experiment {args.experiment!r})")
    return 0


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console():  # the library's lines (data, runs, epochs) on stdout
        sys.exit(main())

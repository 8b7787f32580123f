"""End-to-end time and peak memory of prepare -> pretrain -> finetune with the quick profile.

Runs the three ``fashion`` commands one after another as a user would, in a scratch folder
with its own MLflow store (``sqlite:///<scratch>/mlflow.db``) and, unless ``--cache`` names
one, its own ``FASHION_CACHE`` (so ``prepare`` extracts the archive and builds the image cache
from nothing). Each stage's wall time, the peak RSS of its largest process (wait4) and the peak
PSS summed over its process tree (sampled from /proc) go into the table, with its CPU time
(user + system, which the load of a shared machine changes far less than wall time) and the
test class-mean top-1 the stage printed.

    nice -n 5 env PYTHONPATH=. .venv/bin/python bench/e2e.py
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, bench_env, default_data, machine_line, run_measured, table

TOP1 = re.compile(r"test class-mean top-1 ([0-9.]+)")


def stages(data: str, profile: str, top_k: int | None = None) -> list[tuple[str, list[str]]]:
    """(name, arguments of ``fashion``) for the three stages."""
    extra = ["--top-k", str(top_k)] if top_k else []
    # The stages run in a scratch folder: point them at the repository's technique files.
    train = ["--profile", profile, "--experiments-dir", str(REPO / "experiments")]
    return [
        ("prepare", ["prepare", "--data", data, *extra]),
        ("pretrain", ["pretrain", *train, "--data", data, *extra]),
        ("finetune", ["finetune", *train, "--data", data, *extra]),
    ]


def run(
    data: str,
    profile: str = "quick",
    cache: str | None = None,
    threads: int | None = None,
    keep: str | None = None,
    top_k: int | None = None,
    log=print,
) -> list[dict]:
    """Run the stages; return one row per stage and a total row.

    Args:
        data: the ``--data`` value (folder or archive).
        profile: the training profile of pretrain and finetune.
        cache: an existing FASHION_CACHE to reuse (default: a fresh one, so prepare starts cold).
        threads: OMP_NUM_THREADS for the stages (default: unset, torch uses all cores).
        keep: a folder to keep the MLflow store and logs in (default: a temporary one, removed).
        top_k: ``--top-k`` of every stage (default: the command's own, 20).
    Raises:
        RuntimeError: a stage failed (its output's tail is in the message).
    """
    work = Path(keep or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", FASHION_CACHE=cache or str(work / "cache"))
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    rows = []
    try:
        for name, args in stages(data, profile, top_k):
            cmd = [sys.executable, "-m", "fashion_core.cli.commands", *args]
            log(f"== fashion {' '.join(args)}")
            res = run_measured(cmd, env=env, cwd=work, echo=True)
            (work / f"{name}.log").write_text(res["output"])
            if res["rc"] != 0:
                raise RuntimeError(f"fashion {name} failed (exit {res['rc']}):\n{res['output'][-3000:]}")
            top1 = TOP1.findall(res["output"])
            rows.append(
                {
                    "stage": name,
                    "command": "fashion "
                    + " ".join(
                        "$DATA" if a == data else "experiments" if a == str(REPO / "experiments") else a for a in args
                    ),
                    "seconds": res["seconds"],
                    "CPU s (user+sys)": res["cpu_seconds"],
                    "peak RSS MB (largest process)": res["peak_rss_mb"],
                    "peak PSS MB (process tree)": res["peak_tree_pss_mb"],
                    "test top-1 (class mean)": float(top1[-1]) if top1 else None,
                }
            )
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    rows.append(
        {
            "stage": "total",
            "seconds": sum(r["seconds"] for r in rows),
            "CPU s (user+sys)": sum(r["CPU s (user+sys)"] for r in rows),
            "peak RSS MB (largest process)": max(r["peak RSS MB (largest process)"] for r in rows),
            "peak PSS MB (process tree)": max(r["peak PSS MB (process tree)"] for r in rows),
        }
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default=default_data(), help="dataset folder or archive (default: $FASHION_DATA or ../shared/data)"
    )
    ap.add_argument("--profile", default="quick")
    ap.add_argument(
        "--cache", default=None, help="reuse this FASHION_CACHE (default: a fresh one: prepare starts cold)"
    )
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the stages (default: all cores)")
    ap.add_argument("--keep", default=None, help="keep the MLflow store and stage logs in this folder")
    ap.add_argument("--top-k", type=int, default=None, help="--top-k of every stage (default: the commands' own)")
    args = ap.parse_args(argv)
    if not args.data:
        sys.exit("no dataset: pass --data (a folder or archive) or set FASHION_DATA")
    rows = run(
        args.data,
        args.profile,
        args.cache,
        args.threads,
        args.keep,
        args.top_k,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(
        f"\nprepare -> pretrain -> finetune, profile {args.profile}, "
        f"{'cache reused' if args.cache else 'cold cache'}, {machine_line()}"
        + (f", OMP_NUM_THREADS={args.threads}" if args.threads else "")
        + "\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()

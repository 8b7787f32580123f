"""Wall time and peak memory of building the image cache for a dataset (default: the real small one).

The dataset is extracted first (not timed: ``prepare`` does it once per archive); then a child
process reads the catalogue, decodes every image into a fresh cache folder, opens it again (the
reuse path every later stage takes) and gathers all rows into memory (what a stage does
before training). The parent measures the child's wall time, the peak RSS of its largest
process (the builder or one decoding worker) and the peak PSS summed over the process tree.

    FASHION_CACHE=/tmp/fcache PYTHONPATH=. .venv/bin/python bench/cache_build.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_env, default_data, machine_line, peak_rss_mb, run_measured, table


def _cpu_with_children() -> float:
    """User + system seconds of this process and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child(root: str, cache_root: str, height: int, width: int, workers: int) -> dict:
    """Catalogue -> build -> reuse -> gather in this process; seconds of each step."""
    from fashion_core.data.cache import build_cache
    from fashion_core.data.catalog import build_catalog

    t0 = time.perf_counter()
    catalog = build_catalog(root)
    t1 = time.perf_counter()
    c1 = _cpu_with_children()
    cache = build_cache(catalog, height, width, workers=workers, root=cache_root)
    t2 = time.perf_counter()
    build_cpu = _cpu_with_children() - c1  # the decoding workers are reaped when the pool closes
    cache = build_cache(catalog, height, width, workers=workers, root=cache_root)
    t3 = time.perf_counter()
    arr = cache.take(cache.ids)
    t4 = time.perf_counter()
    return {
        "n": int(len(cache.ids)),
        "failures": len(cache.failures),
        "MB on disk": cache.nbytes_on_disk / 2**20,
        "catalog s": t1 - t0,
        "build s": t2 - t1,
        "build CPU s": build_cpu,
        "reuse s": t3 - t2,
        "take s": t4 - t3,
        "take MB": arr.nbytes / 2**20,
        "builder peak RSS MB": peak_rss_mb(),
    }


def run(data: str, workers: list[int], height: int = 80, width: int = 60, log=print) -> list[dict]:
    """Build a fresh cache once per worker count; return one row per step and worker count."""
    from fashion_core.data.sources import resolve_dataset

    t0 = time.perf_counter()
    root = resolve_dataset(data)
    log(f"dataset at {root} ({time.perf_counter() - t0:.1f}s to resolve/extract, not counted)")
    rows = []
    for w in workers:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                json.dumps({"root": str(root), "cache_root": tmp, "height": height, "width": width, "workers": w}),
            ]
            res = run_measured(cmd, env=bench_env())
            if res["rc"] != 0:
                raise RuntimeError(f"cache build failed:\n{res['output'][-3000:]}")
            c = json.loads(res["output"].strip().splitlines()[-1])
        log(f"  {w} workers: {c['n']} images built in {c['build s']:.1f}s")
        common = {"workers": w, "images": c["n"]}
        rows += [
            {"step": "read catalogue (styles.csv + image sizes)", **common, "seconds": c["catalog s"]},
            {
                "step": f"decode + write cache ({height}x{width} uint8, {c['MB on disk']:.0f} MB)",
                **common,
                "seconds": c["build s"],
                "CPU s (user+sys)": c["build CPU s"],
                "images/s": c["n"] / c["build s"],
            },
            {"step": "open an existing cache (every later stage)", **common, "seconds": c["reuse s"]},
            {"step": f"gather all rows into memory ({c['take MB']:.0f} MB)", **common, "seconds": c["take s"]},
            {
                "step": "whole child process",
                **common,
                "seconds": res["seconds"],
                "CPU s (user+sys)": res["cpu_seconds"],
                "peak RSS MB (largest process)": res["peak_rss_mb"],
                "peak PSS MB (process tree)": res["peak_tree_pss_mb"],
                "undecodable": c["failures"],
            },
        ]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default=default_data(), help="dataset folder or archive (default: $FASHION_DATA or ../shared/data)"
    )
    ap.add_argument("--workers", default=str(os.cpu_count() or 1), help="comma-separated decoding process counts")
    ap.add_argument("--height", type=int, default=80)
    ap.add_argument("--width", type=int, default=60)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return
    if not args.data:
        sys.exit("no dataset: pass --data (a folder or archive) or set FASHION_DATA")
    rows = run(
        args.data,
        [int(w) for w in args.workers.split(",")],
        args.height,
        args.width,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"\nImage cache build, {machine_line()}\n")
    print(table(rows))


if __name__ == "__main__":
    from fashion_core.engine.console import console

    with console(stream=sys.stderr):  # the library's lines (an archive extracted) on stderr, beside the bench's own
        main()

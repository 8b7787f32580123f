"""Ingest speed on full-resolution photos: JPEG draft-mode decoding against full decoding.

Generates N (default 200) 1800x2400 product-like JPEGs at quality 90 (~570 KB each, like the
public full-resolution dataset; see tests/helpers/fullres.py), then measures images/s of
decode + resize to each target size:

- single process: ``decode_image(draft=True)`` (the cache's path: DCT-domain downscaling to the
  smallest scale >= the target, then a small resize), ``decode_image(draft=False)`` (the same code
  decoding every pixel), and a plain per-item PIL baseline (``open().convert("RGB").resize()``);
- the parallel cache builder (``build_cache``, all cores) with and without draft mode, each in a
  fresh subprocess so its peak resident memory (builder and largest worker) is measured alone;
- the draft-mode speed-up against file size (the noise level of the generator sets the bytes per
  photo): draft mode skips the inverse DCT, colour conversion and resizing of 63/64 of the pixels,
  not the Huffman decoding, which grows with the file size.

Files are read from the page cache (just written), so this measures decoding, not the disk.
Single-process rates are per CPU-second (``time.process_time``), so other load on the machine
does not skew the ratios; the builder's are wall-clock, with its CPU time per image beside them.

    .venv/bin/python bench/ingest_fullres.py --n 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from fashion_core.data.cache import decode_image
from tests.helpers.fullres import FULL_SIZE, make_fullres_dataset, synthetic_photo  # noqa: E402

# Runs one cache build in a fresh process and prints its timing and peak memory as JSON.
BUILD_SCRIPT = """
import json, resource, sys, time
from fashion_core.data.cache import build_cache
from fashion_core.data.catalog import build_catalog
data, root, h, w, workers, draft = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
cat = build_catalog(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
cache = build_cache(cat, h, w, workers=workers, root=root, draft=draft)
seconds = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime - c0.ru_utime - c0.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"n": len(cache.ids), "seconds": seconds, "cpu_seconds": cpu, "rss_before_mb": before / 1024,
                  "rss_builder_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def plain_pil(path: str, height: int, width: int):
    """The naive per-item pipeline: decode every pixel, convert, resize (aspect ignored)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").resize((width, height), Image.BILINEAR)


def rates(fns: list, paths: list[str], rounds: int) -> list[float]:
    """Images per CPU-second of each function, best of ``rounds`` passes.

    The functions take turns on every image, so a change of machine load during the
    measurement slows them alike and the ratios stay fair.
    """
    for f in fns:  # warm-up: first big allocations, code paths
        f(paths[0])
    best = [0.0] * len(fns)
    for _ in range(rounds):
        spent = [0.0] * len(fns)
        for p in paths:
            for i, f in enumerate(fns):
                t0 = time.process_time()
                f(p)
                spent[i] += time.process_time() - t0
        best = [max(b, len(paths) / max(t, 1e-9)) for b, t in zip(best, spent)]
    return best


def size_sweep(folder: Path, h: int, w: int, rounds: int, per_level: int = 12) -> list[tuple[int, float, float, float]]:
    """(noise, mean KB, draft ms, full ms) per CPU-second for photos of growing entropy."""
    out = []
    for noise in (0, 1, 2, 4, 8):
        paths = []
        for k in range(per_level):
            p = folder / f"noise{noise}_{k}.jpg"
            synthetic_photo(10_000 + k, noise=noise).save(p, "JPEG", quality=90)
            paths.append(str(p))
        kb = sum(Path(p).stat().st_size for p in paths) / len(paths) / 1024
        draft, full = rates(
            [lambda p: decode_image(p, h, w, draft=True), lambda p: decode_image(p, h, w, draft=False)], paths, rounds
        )
        out.append((noise, kb, 1000 / draft, 1000 / full))
    return out


def build_in_subprocess(data: Path, root: Path, h: int, w: int, workers: int, draft: bool) -> dict:
    """One ``build_cache`` in a fresh Python: images/s and peak RSS of the builder and its largest worker."""
    env = {**os.environ, "CI": "1"}  # no progress bar
    out = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(data), str(root), str(h), str(w), str(workers), "1" if draft else "0"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=PROJECT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="generated full-size images")
    ap.add_argument("--sizes", default="299x224,80x60", help="target sizes HxW, comma-separated")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cache builder processes")
    ap.add_argument("--rounds", type=int, default=2, help="passes per single-process measurement (best kept)")
    ap.add_argument("--noise", type=int, default=4, help="generator noise: 4 gives ~570 KB files, 2 ~360 KB")
    ap.add_argument("--dir", type=Path, default=None, help="keep the generated dataset here (reused if present)")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    tmp = tempfile.TemporaryDirectory(prefix="ingest-fullres-")
    data = args.dir or Path(tmp.name) / "data"
    images = sorted((data / "images").glob("*.jpg")) if (data / "images").is_dir() else []
    if len(images) != args.n:
        t0 = time.perf_counter()
        make_fullres_dataset(data, n=args.n, noise=args.noise, odd_json=False)
        images = sorted((data / "images").glob("*.jpg"))
        print(
            f"generated {args.n} {FULL_SIZE[0]}x{FULL_SIZE[1]} JPEGs in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
    paths = [str(p) for p in images]
    mb = sum(p.stat().st_size for p in images) / len(images) / 1e6
    print(
        f"{len(paths)} images, {FULL_SIZE[0]}x{FULL_SIZE[1]} (W x H), JPEG q90, mean {mb:.2f} MB; "
        f"{os.cpu_count()} CPU cores; builder workers {args.workers}\n"
    )

    rows = []
    for h, w in sizes:
        draft, full, plain = rates(
            [
                lambda p: decode_image(p, h, w, draft=True),
                lambda p: decode_image(p, h, w, draft=False),
                lambda p: plain_pil(p, h, w),
            ],
            paths,
            args.rounds,
        )
        with tempfile.TemporaryDirectory(prefix="cache-", dir=tmp.name) as d:
            pd_ = build_in_subprocess(data, Path(d) / "draft", h, w, args.workers, True)
            pf = build_in_subprocess(data, Path(d) / "full", h, w, args.workers, False)
        rows.append((f"{h}x{w}", draft, full, plain, pd_, pf))

    print("Single process, decode + resize (images per CPU-second):\n")
    print(
        "| target HxW | draft mode | full decode (same code) | plain PIL open/convert/resize | draft vs full | draft vs plain |"
    )
    print("|---|---|---|---|---|---|")
    for size, draft, full, plain, _, _ in rows:
        print(f"| {size} | {draft:.0f} | {full:.0f} | {plain:.0f} | {draft / full:.1f}x | {draft / plain:.1f}x |")
    print(f"\nParallel cache builder (build_cache, {args.workers} workers; wall-clock):\n")
    print(
        "| target HxW | draft img/s | full decode img/s | draft vs full | CPU ms/img draft / full "
        "| peak RSS builder (growth) draft / full, MB | peak RSS worker draft / full, MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, _, _, _, pd_, pf in rows:
        bd, bf = pd_["n"] / pd_["seconds"], pf["n"] / pf["seconds"]
        grow = [b["rss_builder_mb"] - b["rss_before_mb"] for b in (pd_, pf)]
        print(
            f"| {size} | {bd:.0f} | {bf:.0f} | {bd / bf:.1f}x "
            f"| {1000 * pd_['cpu_seconds'] / pd_['n']:.1f} / {1000 * pf['cpu_seconds'] / pf['n']:.1f} "
            f"| {pd_['rss_builder_mb']:.0f} (+{grow[0]:.0f}) / {pf['rss_builder_mb']:.0f} (+{grow[1]:.0f}) "
            f"| {pd_['rss_worker_mb']:.0f} / {pf['rss_worker_mb']:.0f} |"
        )
    h, w = sizes[0]
    sweep_dir = Path(tmp.name) / "sweep"
    sweep_dir.mkdir()
    print(f"\nDraft-mode speed-up against file size ({h}x{w}, single process, CPU ms per image):\n")
    print("| generator noise | mean file size (KB) | draft mode (ms) | full decode (ms) | draft vs full |")
    print("|---|---|---|---|---|")
    for noise, kb, draft, full in size_sweep(sweep_dir, h, w, args.rounds):
        print(f"| {noise} | {kb:.0f} | {draft:.1f} | {full:.1f} | {full / draft:.1f}x |")
    tmp.cleanup()


if __name__ == "__main__":
    main()

"""Input pipeline images/s: the cached-tensor loader against a plain per-item PIL + DataLoader pipeline.

Both sides produce the same thing from the same images: normalised float batches after a
random resized crop (scale [0.5, 1], aspect 3/4..4/3), a horizontal flip and colour jitter.

- per-item: ``Dataset.__getitem__`` opens the JPEG with PIL and applies torchvision's
  ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``, ``ToTensor``, ``Normalize``;
  a ``DataLoader`` with as many worker processes as cores batches them (and once with 0 workers).
- cached: the images decoded once into an N x H x W x 3 uint8 tensor (what the image cache
  holds), then ``loader.batches`` + ``loader.augment`` (and ``to_float``, the evaluation path).

After one warm-up pass each (worker start-up, first touch), rounds alternate between the
pipelines, in reverse order every other round, and the table shows medians: a load change on
a shared machine hits every side alike. Whole passes are timed, prefetch included. Besides
images/s, the CPU time per image (this process plus DataLoader workers) compares the cost in
core-time, which the load of a shared machine disturbs far less.

    FASHION_CACHE=/tmp/fcache PYTHONPATH=. .venv/bin/python bench/pipeline.py --n 4096
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import cpu_seconds, default_data, machine_line, table


def synthetic_jpegs(folder: Path, n: int, height: int = 80, width: int = 60, seed: int = 0) -> list[str]:
    """Write ``n`` product-like JPEGs (white background, a coloured block, noise); return their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.full((height, width, 3), 255, np.uint8)
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 3)
        arr[top : top + height // 2, left : left + width // 2] = rng.integers(0, 256, 3)
        arr = np.clip(arr.astype(np.int16) + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i}.jpg"
        Image.fromarray(arr).save(p, quality=75)
        paths.append(str(p))
    return paths


def image_files(data: str | None, n: int, scratch: Path) -> tuple[list[str], str]:
    """Up to ``n`` image paths of the dataset (``--data``), else generated JPEGs; and a word on which."""
    if data:
        from fashion_core.data.catalog import build_catalog
        from fashion_core.data.sources import resolve_dataset

        cat = build_catalog(resolve_dataset(data))
        cat = cat[(cat["image"] != "") & (cat["image_bytes"] > 0)]
        paths = cat["image"].head(n).tolist()
        return paths, f"{len(paths)} images of {Path(data).name}"
    return synthetic_jpegs(scratch / "jpegs", n), f"{n} generated 60x80 JPEGs"


def decode_all(paths: list[str], height: int, width: int) -> torch.Tensor:
    """What the image cache holds: every image decoded once, N x H x W x 3 uint8."""
    from fashion_core.data.cache import decode_image

    return torch.from_numpy(np.stack([decode_image(p, height, width) for p in paths]))


class PerItem(torch.utils.data.Dataset):
    """The plain pipeline: one PIL decode and one torchvision transform chain per item."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), i


def per_item_transform(height: int, width: int, scale_min: float, jitter: float):
    """torchvision's per-item equivalent of ``loader.augment``."""
    from torchvision import transforms as T

    from fashion_core.data.loader import MEAN, STD

    return T.Compose(
        [
            T.RandomResizedCrop((height, width), scale=(scale_min, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(jitter, jitter, jitter),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_passes(make_iter, min_seconds: float, device: torch.device) -> tuple[float, float]:
    """(images/s, CPU ms per image) of whole passes over ``make_iter()`` (batches of (x, ...)), repeated for ``min_seconds``.

    A pass is timed from asking for the iterator to the last batch, so a DataLoader's prefetch
    is not free. CPU time counts this process and a DataLoader's worker processes: the cost in
    core-time, which a shared machine's load changes much less than wall time.
    """
    images, seconds, cpu = 0, 0.0, 0.0
    while not images or seconds < min_seconds:  # at least one pass
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        it = iter(make_iter())
        workers = [w.pid for w in getattr(it, "_workers", [])]  # a DataLoader's (persistent) worker processes
        w0 = sum(cpu_seconds(p) for p in workers)
        for x, *_ in it:
            images += x.shape[0]
        _sync(device)
        seconds += time.perf_counter() - t0
        cpu += time.process_time() - c0 + sum(cpu_seconds(p) for p in workers) - w0
    return images / seconds, 1000 * cpu / images


def run(
    data: str | None,
    n: int = 4096,
    batch_size: int = 128,
    workers: int | None = None,
    rounds: int = 3,
    device: str = "cpu",
    threads: list[int] | None = None,
    min_seconds: float = 1.0,
    height: int = 80,
    width: int = 60,
    serial: bool = True,
    log=print,
) -> list[dict]:
    """Measure the pipelines; return one row per pipeline.

    Args:
        data: a dataset (folder/archive) to read images from, or None for generated JPEGs.
        n: images per pass; batch_size: as in training.
        workers: DataLoader workers of the per-item pipeline (default: all cores).
        rounds: alternating rounds; the table shows the median of each pipeline.
        device: where the cached loader keeps its tensor and augments ("cpu" or "cuda").
        threads: torch CPU thread counts to time the cached loader with (default: 1 and all cores).
        serial: also time the per-item pipeline with 0 workers.
    Returns:
        Rows with pipeline, where, images/s, ms/batch, CPU ms/image and the ratios to the
        per-item pipeline with ``workers`` workers, in images/s and in CPU time per image.
    """
    from fashion_core.config.schema import AugmentConfig
    from fashion_core.data.loader import TensorData, augment, batches, to_float

    cores = os.cpu_count() or 1
    workers = workers if workers is not None else cores
    dev = torch.device(device)
    threads = [1] if dev.type == "cuda" else sorted(set(threads or [1, cores]))
    cfg = AugmentConfig()
    cl = dev.type == "cuda"  # what fit asks for on each device
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        paths, source = image_files(data, n, Path(tmp))
        log(f"pipeline: {source}, batch {batch_size}, {rounds} rounds")
        cached = TensorData(decode_all(paths, height, width), torch.arange(len(paths)), {}).to(dev)
        ds = PerItem(paths, per_item_transform(height, width, cfg.crop_scale_min, cfg.jitter))
        gen = torch.Generator().manual_seed(0)

        def cached_aug():
            for b in batches(cached, batch_size, shuffle=True, generator=gen, drop_last=True):
                yield augment(b["image"], cfg, gen, channels_last=cl), b["label"]

        def cached_eval():
            for b in batches(cached, batch_size, shuffle=False, drop_last=True):
                yield to_float(b["image"], channels_last=cl), b["label"]

        # (short name, label, where, make_iter, torch threads or None)
        pipelines, loaders = [], []
        for w in [workers, 0] if serial and workers else [workers]:
            loaders.append(
                torch.utils.data.DataLoader(
                    ds, batch_size=batch_size, shuffle=True, num_workers=w, persistent_workers=w > 0, drop_last=True
                )
            )
            pipelines.append(
                (
                    f"per-item w{w}",
                    "per-item PIL + torchvision + DataLoader",
                    f"{w} worker processes" if w else "main process",
                    lambda l=loaders[-1]: l,
                    None,
                )
            )
        for t in threads:
            where = f"{dev.type}, {t} thread{'s' if t > 1 else ''}" if dev.type == "cpu" else str(dev)
            pipelines.append((f"augment t{t}", "cached tensor: batches + augment (training)", where, cached_aug, t))
            pipelines.append(
                (f"to_float t{t}", "cached tensor: batches + to_float (evaluation)", where, cached_eval, t)
            )
        for _, _, _, make, t in pipelines:  # warm-up pass: starts the workers, touches the memory
            torch.set_num_threads(t or default_threads)
            time_passes(make, 0.0, dev)
        rates: list[list[float]] = [[] for _ in pipelines]
        cpu: list[list[float]] = [[] for _ in pipelines]
        for r in range(rounds):
            order = list(enumerate(pipelines))
            # Every other round in reverse: a load that rises or falls during the run favours no pipeline.
            for i, (_, _, _, make, t) in order if r % 2 == 0 else order[::-1]:
                torch.set_num_threads(t or default_threads)
                rate, ms = time_passes(make, min_seconds, dev)
                rates[i].append(rate)
                cpu[i].append(ms)
            torch.set_num_threads(default_threads)
            log(f"  round {r + 1}: " + ", ".join(f"{p[0]} {v[-1]:,.0f}/s" for p, v in zip(pipelines, rates)))
        names = [(label, where) for _, label, where, _, _ in pipelines]
        del pipelines, loaders  # stops the DataLoader workers before the scratch folder goes
    base, base_cpu = statistics.median(rates[0]), statistics.median(cpu[0])
    rows = []
    for (label, where), v, c in zip(names, rates, cpu):
        med, med_cpu = statistics.median(v), statistics.median(c)
        rows.append(
            {
                "pipeline": label,
                "where": where,
                "images/s": med,
                "ms/batch": 1000 * batch_size / med,
                "x per-item (images/s)": med / base,
                "CPU ms/image": med_cpu,
                "x per-item (CPU time)": base_cpu / med_cpu if med_cpu else float("nan"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        default=default_data(),
        help="dataset folder or archive (default: $FASHION_DATA or ../shared/data; 'none' = generated JPEGs)",
    )
    ap.add_argument("--n", type=int, default=4096, help="images per pass")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="per-item DataLoader workers (default: all cores)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the cached loader works")
    ap.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts for the cached loader on CPU (default: 1 and all cores)",
    )
    args = ap.parse_args(argv)
    data = None if args.data in (None, "", "none") else args.data
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    rows = run(
        data,
        args.n,
        args.batch_size,
        args.workers,
        args.rounds,
        args.device,
        threads,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"\nInput pipeline, {machine_line()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()

"""The image cache: every image decoded ONCE into one memory-mapped uint8 array on disk.

Layout of a cache folder ``<cache_root>/images/<key>/``::

    images.u8     N x H x W x 3 uint8, row i = product ids[i]
    index.parquet id, row
    status.u8     N uint8: 0 pending, 1 decoded, 2 failed (lets an interrupted build resume)
    errors.json   {id: reason} for images that could not be decoded
    meta.json     height, width, n, key, seconds, complete

The key hashes the product ids, their image file sizes and the target size, so a
changed dataset or size gets a new cache and an unchanged one is reused.

Size policy: each image is scaled to FIT inside H x W (aspect ratio kept, bilinear,
JPEG draft mode first so big photos are downscaled in the DCT domain) and centred
on a white canvas, the catalogue's own background. The 60x80 (W x H) photos at the
default 80x60 (H x W) pass through unchanged; odd sizes (53x80, 60x60, ...) are padded.
For the 1800x2400 full-resolution photos, ``size_for_short_side(224)`` gives 299x224.

Memory stays bounded however big the dataset: workers decode one image at a time (draft
mode never materialises the full-size photo), at most INFLIGHT_BYTES of decoded chunks are
in flight, and rows are written with pwrite (page cache, not the builder's resident memory).
A killed build resumes from ``status.u8``.
Grayscale, CMYK, palette and RGBA images are converted to RGB (alpha over white).

    python -m fashion_core.data.cache /path/to/dataset
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd

from fashion_core.data.sources import cache_root

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PENDING, DECODED, FAILED = 0, 1, 2
# Decoded pixels in flight (worker results not yet written) stay under this, whatever the
# image size and worker count: chunks shrink for big targets (e.g. 299x224 on 16 workers).
INFLIGHT_BYTES = 256 << 20


def decode_image(path: str | Path | IO[bytes], height: int, width: int, draft: bool = True) -> np.ndarray:
    """One image file -> H x W x 3 uint8 (fit inside, centred on white). Raises on undecodable files.

    ``path`` is a file path or an open binary file (serving decodes request bytes through a BytesIO).
    """
    from PIL import Image

    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            # DCT-domain downscale to the smallest scale still >= the target: far faster on big photos
            # (docs/full-resolution.md).
            im.draft("RGB", (width, height))
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ValueError("image has no pixels")
        scale = min(width / w, height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
        if (nw, nh) == (width, height):
            return np.asarray(im, dtype=np.uint8)
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        top, left = (height - nh) // 2, (width - nw) // 2
        canvas[top : top + nh, left : left + nw] = np.asarray(im, dtype=np.uint8)
        return canvas


def _decode_chunk(args: tuple[list[str], int, int, bool]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker: decode a list of paths; failures come back as (position, reason) instead of raising."""
    paths, height, width, draft = args
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    failed = []
    for i, p in enumerate(paths):
        try:
            out[i] = decode_image(p, height, width, draft)
        except Exception as e:  # any decoder error marks the image invalid; it never stops the build
            out[i] = 255
            failed.append((i, f"{type(e).__name__}: {e}"[:200]))
    return out, failed


def cache_key(ids: np.ndarray, sizes: np.ndarray, height: int, width: int, draft: bool = True) -> str:
    """Hash of the product ids, image file sizes and the target size (and of ``draft=False``, whose pixels differ)."""
    h = hashlib.sha256()
    h.update(np.asarray(ids, dtype=np.int64).tobytes())
    h.update(np.asarray(sizes, dtype=np.int64).tobytes())
    h.update(f"{height}x{width}|v{FORMAT_VERSION}".encode())
    if not draft:
        h.update(b"|full-decode")
    return f"{h.hexdigest()[:16]}_{height}x{width}"


def cached_rows(catalog: pd.DataFrame) -> pd.DataFrame:
    """The catalogue rows the cache holds: those with an image file of some bytes, each id once."""
    todo = catalog[(catalog["image"] != "") & (catalog["image_bytes"] > 0) & (catalog["id"] >= 0)]
    return todo.drop_duplicates("id")


def catalog_cache_key(catalog: pd.DataFrame, height: int, width: int, draft: bool = True) -> str:
    """The :func:`cache_key` of a catalogue's images at a size (what ``build_cache`` names its folder by)."""
    todo = cached_rows(catalog)
    return cache_key(todo["id"].to_numpy(np.int64), todo["image_bytes"].to_numpy(), height, width, draft)


def size_for_short_side(short: int, aspect: float = 4 / 3) -> tuple[int, int]:
    """(height, width) for portrait 3:4 catalogue photos with ``short`` pixels across: 224 -> (299, 224).

    The height is rounded to the nearest pixel, so the default 60 gives the small dataset's 80x60.
    """
    if short < 8:
        raise ValueError(f"short side must be >= 8 pixels, got {short}")
    return int(short * aspect + 0.5), short


def _write_json_atomic(path: Path, obj) -> None:
    """Write JSON via a temporary file and rename, so a kill never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _read_errors(path: Path) -> dict[int, str]:
    """The partial ``{id: reason}`` file of an interrupted build; {} when absent or unreadable."""
    try:
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


@dataclass
class ImageCache:
    """A built cache: ``images`` (N,H,W,3 uint8 memmap), ``ids``, ``failures`` {id: reason}."""

    folder: Path
    images: np.ndarray
    ids: np.ndarray
    failures: dict[int, str]
    meta: dict

    @classmethod
    def open(cls, folder: str | Path) -> ImageCache:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if not meta.get("complete"):
            raise RuntimeError(f"image cache {folder} is incomplete; rebuild it with `fashion prepare`")
        n, h, w = meta["n"], meta["height"], meta["width"]
        images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(n, h, w, 3))
        ids = pd.read_parquet(folder / "index.parquet")["id"].to_numpy()
        failures = {int(k): v for k, v in json.loads((folder / "errors.json").read_text()).items()}
        return cls(folder, images, ids, failures, meta)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of product ids (KeyError naming the first missing id)."""
        pos = pd.Index(self.ids).get_indexer(np.asarray(ids))
        if (pos < 0).any():
            raise KeyError(f"product id {np.asarray(ids)[pos < 0][0]} is not in the image cache {self.folder}")
        return pos

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The images of these ids as an in-memory N x H x W x 3 uint8 array."""
        rows = self.rows_of(ids)
        order = np.argsort(rows)  # sequential reads from the memmap, then back to the asked order
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[rows[order]]
        return out

    @property
    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=desc,
            unit="img",
            file=sys.stderr,
            mininterval=1.0,
            disable=None if not os.environ.get("CI") else True,
        )
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


def build_cache(
    catalog: pd.DataFrame,
    height: int = 80,
    width: int = 60,
    workers: int | None = None,
    root: str | Path | None = None,
    chunk: int = 256,
    draft: bool = True,
) -> ImageCache:
    """Decode every catalogue row that has an image file into the cache (or reuse / resume it).

    Args:
        catalog: from ``build_catalog``; rows with ``image`` != '' and bytes > 0 are cached.
        height, width: target size.
        workers: decoding processes (default: all cores).
        root: cache root (default ``cache_root()``).
        chunk: images per worker task (lowered for big targets so INFLIGHT_BYTES bounds memory).
        draft: JPEG draft mode (DCT-domain downscaling); False decodes at full size (benchmarks).
    Returns:
        The opened ImageCache; its ``failures`` are the undecodable images.
    """
    todo = cached_rows(catalog)
    ids = todo["id"].to_numpy(np.int64)
    paths = todo["image"].tolist()
    key = catalog_cache_key(catalog, height, width, draft)
    folder = Path(root or cache_root()) / "images" / key
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("complete"):
        logger.info(f"image cache: reusing {folder}")
        return ImageCache.open(folder)

    n = len(ids)
    folder.mkdir(parents=True, exist_ok=True)
    resuming = (
        (folder / "status.u8").is_file()
        and (folder / "images.u8").is_file()
        and (folder / "images.u8").stat().st_size == n * height * width * 3
    )
    mode: Literal["r+", "w+"] = "r+" if resuming else "w+"
    row_bytes = height * width * 3
    # Pixels are written with pwrite, not through a memmap: written pages then stay in the page
    # cache only, so the builder's resident memory does not grow with the dataset (gigabytes at full
    # resolution: docs/full-resolution.md).
    fd = os.open(folder / "images.u8", os.O_RDWR | os.O_CREAT | (0 if resuming else os.O_TRUNC), 0o644)
    os.ftruncate(fd, max(n, 1) * row_bytes)
    status = np.memmap(folder / "status.u8", dtype=np.uint8, mode=mode, shape=(max(n, 1),))
    errors_path = folder / "errors.partial.json"
    errors: dict[int, str] = _read_errors(errors_path) if resuming else {}
    if resuming:
        # A kill can land after a failure's status byte but before its reason was saved: redo those.
        lost = np.flatnonzero((status[:n] == FAILED) & ~np.isin(ids, np.fromiter(errors, np.int64, len(errors))))
        status[lost] = PENDING
    pd.DataFrame({"id": ids, "row": np.arange(n)}).to_parquet(folder / "index.parquet", index=False)
    pending = np.flatnonzero(status[:n] == PENDING)
    if resuming:
        logger.info(f"image cache: resuming {folder} ({n - len(pending)}/{n} done)")
    else:
        logger.info(f"image cache: building {folder} ({n} images, {height}x{width})")

    t0 = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    # Smaller chunks for big targets (bounded memory) and for few images (every worker gets work).
    chunk = max(1, min(chunk, INFLIGHT_BYTES // (2 * workers * row_bytes), -(-len(pending) // (4 * workers))))
    chunks = [pending[i : i + chunk] for i in range(0, len(pending), chunk)]
    bar = _progress(len(pending), "decoding images")
    last_flush = time.perf_counter()

    def consume(rows: np.ndarray, result) -> None:
        nonlocal last_flush
        arr, failed = result
        _write_rows(fd, rows, arr, row_bytes)
        st = np.full(len(rows), DECODED, dtype=np.uint8)
        for pos, reason in failed:
            st[pos] = FAILED
            errors[int(ids[rows[pos]])] = reason
        status[rows] = st  # status after pixels: a crash between the two only redoes this chunk
        if bar is not None:
            bar.update(len(rows))
        if time.perf_counter() - last_flush > 5:
            status.flush()
            _write_json_atomic(errors_path, errors)
            last_flush = time.perf_counter()

    try:
        if workers <= 1 or len(chunks) <= 1:
            for rows in chunks:
                consume(rows, _decode_chunk(([paths[i] for i in rows], height, width, draft)))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # A bounded window of chunks in flight keeps memory flat whatever the dataset size.
                window = 2 * workers
                futures: list = []
                it = iter(chunks)
                for rows in it:
                    futures.append((rows, pool.submit(_decode_chunk, ([paths[i] for i in rows], height, width, draft))))
                    if len(futures) >= window:
                        r, f = futures.pop(0)
                        consume(r, f.result())
                for r, f in futures:
                    consume(r, f.result())
        os.fsync(fd)  # pixels on disk before meta.json says complete
    finally:
        # Also on Ctrl-C: what was decoded, and why what failed failed, survives for the resume.
        os.close(fd)
        status.flush()
        _write_json_atomic(errors_path, errors)
        if bar is not None:
            bar.close()
    # Release the memory map (the chunk callback is done with it); nothing reads the name after this.
    status = None  # type: ignore[assignment]
    seconds = time.perf_counter() - t0
    (folder / "errors.json").write_text(json.dumps({str(k): v for k, v in errors.items()}))
    errors_path.unlink(missing_ok=True)
    meta = {
        "height": height,
        "width": width,
        "n": n,
        "key": key,
        "seconds": round(seconds, 2),
        "workers": workers,
        "format": FORMAT_VERSION,
        "complete": True,
    }
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)
    logger.info(f"image cache: {n} images in {seconds:.1f}s, {len(errors)} undecodable")
    return ImageCache.open(folder)


def _write_rows(fd: int, rows: np.ndarray, arr: np.ndarray, row_bytes: int) -> None:
    """Write decoded images to their rows of ``images.u8``: one pwrite per run of consecutive rows."""
    start = 0
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for end in [*breaks.tolist(), len(rows)]:
        block = np.ascontiguousarray(arr[start:end])
        # numpy's stubs give ndarray the buffer protocol (__buffer__) only for Python 3.12+.
        view, offset = memoryview(block).cast("B"), int(rows[start]) * row_bytes  # type: ignore[arg-type]
        while len(view):  # pwrite may write less than asked
            done = os.pwrite(fd, view, offset)
            view, offset = view[done:], offset + done
        start = end


if __name__ == "__main__":
    from fashion_core.data.catalog import build_catalog

    cache = build_cache(build_catalog(sys.argv[1]))
    print(cache.folder, cache.images.shape, f"{cache.nbytes_on_disk / 1e6:.0f} MB", len(cache.failures), "failures")

"""Example images for the report's confusions: small JPEG thumbnails from the runs' image cache, embedded.

The cache is found from the runs themselves, never built: a ``prepare`` run of the same dataset digest
names its folder (tag ``cache_folder``); otherwise a run's dataset input names the dataset folder, whose
catalogue and the run's ``data.height`` / ``data.width`` give the cache key (``data.cache``).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fashion_core.data.cache import ImageCache, catalog_cache_key
from fashion_core.data.catalog import build_catalog
from fashion_core.data.sources import cache_root
from fashion_core.tracking import runs as tracking

THUMB_HEIGHT = 48  # pixels: enough to recognise a product, light enough for dozens in one file
JPEG_QUALITY = 80


def _open(folder) -> ImageCache | None:
    try:
        return ImageCache.open(folder)
    except Exception:  # absent, incomplete or unreadable: the report says there are no images
        return None


def _dataset_root(run) -> Path | None:
    for d in getattr(run.inputs, "dataset_inputs", None) or []:
        try:
            uri = json.loads(d.dataset.source).get("uri", "")
        except (ValueError, AttributeError):
            continue
        if uri and Path(uri).is_dir():
            return Path(uri)
    return None


def find_image_cache(runs: Sequence, digest: str) -> tuple[ImageCache | None, str]:
    """The image cache the runs were trained from, and a sentence saying where it is or why there is none."""
    if digest:
        for r in tracking.find_runs(f"tags.stage = 'prepare' and tags.dataset_digest = '{digest}'", max_results=5):
            folder = r.data.tags.get("cache_folder")
            cache = _open(folder) if folder else None
            if cache is not None:
                return cache, f"Images from the image cache {folder}."
    for run in runs:
        root = _dataset_root(run)
        if root is None:
            continue
        try:
            h, w = int(run.data.params["data.height"]), int(run.data.params["data.width"])
            key = catalog_cache_key(build_catalog(root), h, w)
        except Exception:
            continue
        # The cache root now, and the one the dataset was extracted under (<cache root>/extracted/<hash>/...).
        roots = [cache_root()] + [p.parent for p in root.parents if p.name == "extracted"]
        for base in dict.fromkeys(roots):
            cache = _open(Path(base) / "images" / key)
            if cache is not None:
                return cache, f"Images from the image cache {cache.folder}."
        return None, (
            f"No example images: the image cache of {root} at {h}x{w} ({key}) is not on this machine "
            "(`fashion prepare` builds it)."
        )
    return None, "No example images: no run names a dataset folder or image cache present on this machine."


def thumbnail(image: np.ndarray, height: int = THUMB_HEIGHT) -> str:
    """An H x W x 3 uint8 image as a ``data:image/jpeg;base64`` URI, ``height`` pixels high."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    w = max(1, round(im.width * height / im.height))
    buf = io.BytesIO()
    im.resize((w, height), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(cache: ImageCache, ids: Iterable) -> dict:
    """Thumbnails of the product ids the cache holds (others are skipped)."""
    wanted = list(dict.fromkeys(ids))
    known = set(cache.ids.tolist())
    have = [i for i in wanted if i in known]
    if not have:
        return {}
    images = cache.take(np.asarray(have))
    return {i: thumbnail(img) for i, img in zip(have, images)}

"""Data: sources -> catalog -> splits -> image cache -> loader. ``prepare_data`` runs the chain."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fashion_core.config.schema import DataConfig
from fashion_core.data.cache import ImageCache, build_cache
from fashion_core.data.catalog import CatalogError, build_catalog, mark_undecodable, reason_counts
from fashion_core.data.richmeta import DatasetLayout, detect_layout
from fashion_core.data.sources import resolve_dataset
from fashion_core.data.splits import SplitSummary, dataset_digest, make_splits, summarize_splits, top_classes

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Everything a stage needs about the data, computed the same way by every stage."""

    root: Path
    catalog: pd.DataFrame
    splits: pd.DataFrame
    cache: ImageCache
    digest: str
    summary: SplitSummary
    cfg: DataConfig
    layout: DatasetLayout | None = None

    @property
    def top(self) -> list[str]:
        return self.summary.top


def prepare_data(data: str | None, cfg: DataConfig, workers: int | None = None) -> Prepared:
    """Resolve the dataset, read the catalogue, build or reuse the image cache, make the splits.

    Undecodable images found while caching are marked invalid before splitting,
    so the split and the digest only ever see images that decode.
    """
    root = resolve_dataset(data)
    catalog = build_catalog(root)
    layout = detect_layout(root, catalog)
    logger.info(layout.describe())
    if "richmeta" in catalog.attrs:
        logger.info("rich metadata: " + ", ".join(f"{k} {v:,}" for k, v in catalog.attrs["richmeta"].items()))
    if layout.kind == "full" and max(cfg.height, cfg.width) <= 80:
        logger.info(
            f"note: full-resolution photos cached at {cfg.height}x{cfg.width}; "
            "use --short-side 224 (299x224) or 160 (213x160) to keep more detail"
        )
    cache = build_cache(catalog, cfg.height, cfg.width, workers=workers)
    if cache.failures:
        catalog = mark_undecodable(catalog, cache.failures)
    if not catalog["valid"].any():
        raise CatalogError(f"no valid product in {root}: excluded {reason_counts(catalog)}")
    top = top_classes(catalog, cfg.top_k, cfg.rank_on)
    splits = make_splits(catalog, cfg)
    return Prepared(
        root=root,
        catalog=catalog,
        splits=splits,
        cache=cache,
        digest=dataset_digest(catalog, cfg),
        summary=summarize_splits(splits, top),
        cfg=cfg,
        layout=layout,
    )


__all__ = [
    "Prepared",
    "prepare_data",
    "build_catalog",
    "build_cache",
    "make_splits",
    "resolve_dataset",
    "reason_counts",
    "ImageCache",
]


def without_test(p):
    """The prepared data without the test split's rows: nothing downstream can gather a test image or label."""
    import dataclasses

    return dataclasses.replace(p, splits=p.splits[p.splits["split"] != "test"].reset_index(drop=True))

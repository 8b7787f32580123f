"""Rich product metadata from ``styles/<id>.json`` (full-resolution dataset), and dataset layout detection.

The full-resolution public dataset ships one JSON document per product beside
``styles.csv``: ``{"meta": {...}, "data": {"brandName": ..., "price": ..., "productDescriptors":
{"description": {"value": "<p>html</p>"}}, ...}}``. ``add_rich_metadata`` reads them (robustly:
a missing, corrupt or data-less file leaves that product's fields empty and is counted) into
extra catalogue columns that the fusion encoders can use:

    brandName, ageGroup, colour1, fashionType   categorical ('' when absent)
    price, discountedPrice                      float (NaN when absent)
    description                                 plain text, HTML stripped ('' when absent)

Reading 44k files takes seconds, so the parsed table is cached under
``<cache>/richmeta/<hash of the file listing>.parquet`` and reused while the files are unchanged.

    python -m fashion_core.data.catalog /path/to/fashion-dataset   # the layout and rich fields of a folder
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from fashion_core.data.sources import cache_root

RICH_CATEGORICAL = ("brandName", "ageGroup", "colour1", "fashionType")
RICH_NUMERIC = ("price", "discountedPrice")
RICH_TEXT = ("description",)
RICH_FIELDS = RICH_CATEGORICAL + RICH_NUMERIC + RICH_TEXT
STYLES_DIR = "styles"
FORMAT_VERSION = 1

_TAG = re.compile(r"<[^>]*>")
_BREAK = re.compile(r"<\s*(br|/p|/li|/div|/h\d)\s*/?\s*>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def html_to_text(value: object) -> str:
    """HTML fragment -> one line of plain text (tags dropped, entities decoded, spaces collapsed)."""
    if not isinstance(value, str) or not value:
        return ""
    text = _BREAK.sub(" ", value)
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", html.unescape(text)).strip()


def _number(value: object) -> float:
    """A price as float; NaN for anything that is not a finite number or numeric string."""
    if isinstance(value, bool):
        return float("nan")
    try:
        # The public files hold ints; some mirrors write strings. Any value is tried: one float()
        # rejects raises TypeError or ValueError, caught below.
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
    return x if np.isfinite(x) else float("nan")


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_style_json(text: str) -> dict[str, object]:
    """One ``styles/<id>.json`` document -> the RICH_FIELDS values.

    Raises:
        ValueError: not JSON, or no ``data`` object.
    """
    doc = json.loads(text)
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise ValueError("no 'data' object")
    desc = data.get("productDescriptors")
    desc = desc.get("description") if isinstance(desc, dict) else None
    desc = desc.get("value") if isinstance(desc, dict) else None
    out: dict[str, object] = {f: _text(data.get(f)) for f in RICH_CATEGORICAL}
    out.update({f: _number(data.get(f)) for f in RICH_NUMERIC})
    out["description"] = html_to_text(desc)
    return out


def _listing(styles: Path) -> dict[str, os.stat_result]:
    """``{stem: stat}`` of the ``*.json`` files (one directory scan instead of per-id stats)."""
    out: dict[str, os.stat_result] = {}
    with os.scandir(styles) as it:
        for e in it:
            if e.name.endswith(".json") and e.is_file():
                out[e.name[:-5]] = e.stat()
    return out


def read_rich_metadata(
    root: str | Path, ids: np.ndarray, use_cache: bool = True
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Parse ``root/styles/<id>.json`` for each product id.

    Args:
        root: the dataset folder (holding ``styles.csv`` and ``styles/``).
        ids: product ids (int).
        use_cache: read/write the parsed table under ``<cache>/richmeta/``.
    Returns:
        (table indexed by ``id`` with the RICH_FIELDS columns, counts ``json_found``,
        ``json_missing``, ``json_corrupt``).
    """
    styles = Path(root) / STYLES_DIR
    ids = np.asarray(ids, dtype=np.int64)
    listing = _listing(styles) if styles.is_dir() else {}
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{styles.resolve()}".encode())
    h.update(ids.tobytes())
    for k in sorted(listing):
        st = listing[k]
        h.update(f"{k}:{st.st_size}:{st.st_mtime_ns};".encode())
    memo = cache_root() / "richmeta" / f"{h.hexdigest()[:16]}.parquet"
    if use_cache and memo.is_file():
        try:
            table = pd.read_parquet(memo)
            return table[list(RICH_FIELDS)], _status_counts(table["json_status"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable memo: parse again
    empty = {**{f: "" for f in RICH_CATEGORICAL}, **{f: float("nan") for f in RICH_NUMERIC}, "description": ""}
    rows: list[dict[str, object]] = []
    status: list[str] = []
    for pid in ids:
        key = str(int(pid))
        if key not in listing:
            rows.append(empty)
            status.append("missing")
            continue
        try:
            rows.append(parse_style_json((styles / f"{key}.json").read_text(encoding="utf-8", errors="replace")))
            status.append("found")
        except (OSError, ValueError, AttributeError):  # json.JSONDecodeError is a ValueError
            rows.append(empty)
            status.append("corrupt")
    table = pd.DataFrame(rows, columns=list(RICH_FIELDS), index=pd.Index(ids, name="id"))
    for f in RICH_NUMERIC:
        table[f] = table[f].astype("float64")
    table["json_status"] = status
    if use_cache:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_suffix(f".{os.getpid()}.tmp")
            table.to_parquet(tmp)
            tmp.replace(memo)
        except OSError:
            pass  # the memo is an optimisation only
    return table[list(RICH_FIELDS)], _status_counts(table["json_status"])


def _status_counts(status: pd.Series) -> dict[str, int]:
    """``json_found`` / ``json_missing`` / ``json_corrupt`` counts of a status column."""
    c = status.value_counts()
    return {f"json_{k}": int(c.get(k, 0)) for k in ("found", "missing", "corrupt")}


def has_rich_metadata(root: str | Path) -> bool:
    """True when the dataset folder has a ``styles/`` folder of per-product JSON."""
    return (Path(root) / STYLES_DIR).is_dir()


def add_rich_metadata(catalog: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """The catalog with the RICH_FIELDS columns added when ``root/styles/`` exists (else unchanged).

    The JSON counts go to ``catalog.attrs["richmeta"]`` (``json_found``, ``json_missing``, ``json_corrupt``).
    """
    if not has_rich_metadata(root):
        return catalog
    table, counts = read_rich_metadata(root, catalog["id"].to_numpy())
    out = catalog.copy()
    for f in RICH_FIELDS:
        out[f] = table[f].to_numpy()
    out.attrs["richmeta"] = counts
    return out


@dataclass(frozen=True)
class DatasetLayout:
    """What kind of dataset a folder holds: ``small`` (60x80 photos) or ``full`` (big photos and/or JSON)."""

    kind: str
    n_json: int
    image_size: tuple[int, int] | None  # median (W, H) of a sample of image headers
    n_sampled: int

    def describe(self) -> str:
        size = (
            f"{self.image_size[0]}x{self.image_size[1]} (W x H, median of {self.n_sampled})"
            if self.image_size
            else "unknown"
        )
        return f"dataset layout: {self.kind} (images {size}; {self.n_json:,} {STYLES_DIR}/*.json files)"


def detect_layout(root: str | Path, catalog: pd.DataFrame, sample: int = 16) -> DatasetLayout:
    """Detect small vs full: rich JSON present, or photos bigger than 200 px on the short side.

    Only image headers are read (a handful of files), so this costs milliseconds.
    """
    from PIL import Image

    styles = Path(root) / STYLES_DIR
    n_json = len(_listing(styles)) if styles.is_dir() else 0
    paths = [p for p in catalog.loc[catalog["image_bytes"] > 0, "image"].tolist() if p]
    if len(paths) > sample:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, sample).astype(int)]
    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except Exception:  # an undecodable file says nothing about the layout
            continue
    # The median of (width, height) pairs along axis 0: two values.
    size = cast("tuple[int, int]", tuple(int(v) for v in np.median(np.asarray(sizes), axis=0))) if sizes else None
    big = size is not None and min(size) > 200
    return DatasetLayout(
        kind="full" if (n_json or big) else "small", n_json=n_json, image_size=size, n_sampled=len(sizes)
    )

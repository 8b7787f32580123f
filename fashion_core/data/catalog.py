"""Read ``styles.csv`` robustly into the Catalog: one row per product, with a ``valid`` flag and a ``reason``.

The real file has 22 rows whose ``productDisplayName`` holds unquoted commas, so a
plain CSV parser misreads them. ``productDisplayName`` is the last column: every line
is split on its first nine commas, which parses all 44,446 rows. The literal value
``NA`` (e.g. in ``usage``) is a value, not a missing one.

    python -m fashion_core.data.catalog /path/to/fashion-product-images-small
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_core.data.richmeta import RICH_FIELDS, add_rich_metadata, detect_layout

COLUMNS = (
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
)
LABEL = "articleType"

# Exclusion reasons, in the order they are checked; a row gets the first that applies.
REASONS = ("bad_id", "duplicate_id", "no_label", "no_year", "bad_year", "no_image", "empty_image", "undecodable_image")


class CatalogError(ValueError):
    """styles.csv cannot be used at all (absent, empty, wrong columns)."""


def read_styles(path: str | Path) -> pd.DataFrame:
    """Parse styles.csv into string columns, splitting each line on its first nine commas.

    Returns a DataFrame with the columns of COLUMNS as strings ('' where empty).
    Raises CatalogError when the file is absent, empty or lacks columns.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"styles.csv not found at {path}")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise CatalogError(f"{path} is empty")
    header = [h.strip() for h in lines[0].split(",")]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise CatalogError(f"{path} lacks the columns {', '.join(missing)} (found: {', '.join(header)})")
    n = len(header)
    # Only the LAST column may contain commas; if it is not last, fall back to the csv module.
    if header[-1] == "productDisplayName":
        rows = [ln.split(",", n - 1) for ln in lines[1:]]
    else:
        import csv

        rows = list(csv.reader(lines[1:]))
    rows = [r + [""] * (n - len(r)) for r in rows]
    df = pd.DataFrame(rows, columns=header, dtype=str)
    return df[list(COLUMNS)].apply(lambda s: s.str.strip())


def build_catalog(root: str | Path) -> pd.DataFrame:
    """The Catalog of a dataset folder: every row of styles.csv, typed, with image path and validity.

    Columns: COLUMNS (``id`` int64, ``year`` Int64 nullable), ``image`` (path or ''),
    ``image_bytes`` (file size, 0 when absent), ``valid`` (bool), ``reason`` (one of REASONS or ''),
    and, when ``styles/<id>.json`` files exist (full-resolution dataset), ``richmeta.RICH_FIELDS``.
    Decoding is checked later by the image cache (``mark_undecodable``).
    """
    root = Path(root)
    raw = read_styles(root / "styles.csv")
    images_dir = root / "images"
    df = raw.copy()
    ids = pd.to_numeric(df["id"], errors="coerce")
    reason = np.full(len(df), "", dtype=object)
    bad_id = ids.isna() | (ids != ids.round())
    reason[bad_id.to_numpy()] = "bad_id"
    df["id"] = ids.fillna(-1).astype("int64")
    dup = df["id"].duplicated(keep="first").to_numpy() & (reason == "")
    reason[dup] = "duplicate_id"
    no_label = (df[LABEL] == "").to_numpy() & (reason == "")
    reason[no_label] = "no_label"
    year_num = pd.to_numeric(df["year"], errors="coerce")
    no_year = (df["year"] == "").to_numpy() & (reason == "")
    reason[no_year] = "no_year"
    bad_year = (year_num.isna() | (year_num != year_num.round())).to_numpy() & (reason == "")
    reason[bad_year] = "bad_year"
    df["year"] = year_num.where(year_num == year_num.round()).astype("Int64")

    # One directory listing instead of 44k stat calls.
    files: dict[str, Path] = {}
    if images_dir.is_dir():
        for p in images_dir.iterdir():
            stem, suf = p.stem, p.suffix.lower()
            if suf in (".jpg", ".jpeg", ".png") and stem not in files:
                files[stem] = p
    paths, sizes = [], []
    for pid in raw["id"]:
        found = files.get(pid)
        paths.append(str(found) if found is not None else "")
        try:
            sizes.append(found.stat().st_size if found is not None else 0)
        except OSError:
            sizes.append(0)
    df["image"] = paths
    df["image_bytes"] = np.asarray(sizes, dtype=np.int64)
    no_image = (df["image"] == "").to_numpy() & (reason == "")
    reason[no_image] = "no_image"
    empty = (df["image_bytes"] == 0).to_numpy() & (reason == "")
    reason[empty] = "empty_image"
    df["reason"] = reason.astype(str)
    df["valid"] = df["reason"] == ""
    # Full-resolution dataset: styles/<id>.json adds brandName, price, description, ... columns.
    return add_rich_metadata(df, root)


def mark_undecodable(catalog: pd.DataFrame, failures: dict[int, str]) -> pd.DataFrame:
    """A copy of the catalog where the ids in ``failures`` are invalid (reason 'undecodable_image')."""
    out = catalog.copy()
    hit = out["id"].isin(list(failures)) & out["valid"]
    out.loc[hit, "reason"] = "undecodable_image"
    out.loc[hit, "valid"] = False
    return out


def reason_counts(catalog: pd.DataFrame) -> dict[str, int]:
    """Number of excluded rows per reason (every reason listed, zeros included)."""
    counts = catalog.loc[~catalog["valid"], "reason"].value_counts()
    return {r: int(counts.get(r, 0)) for r in REASONS}


if __name__ == "__main__":
    cat = build_catalog(sys.argv[1])
    print(f"{len(cat)} rows, {int(cat['valid'].sum())} valid; excluded: {reason_counts(cat)}")
    print(detect_layout(sys.argv[1], cat).describe())
    print(cat.attrs.get("richmeta", "no styles/ folder"))
    print(cat[[c for c in ("id", *RICH_FIELDS) if c in cat.columns]].head())

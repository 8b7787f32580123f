"""Generated catalogues for the tests: styles.csv plus synthetic product photos, and hand-made archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-product-images-small.tar.gz"


def real_data_path() -> str | None:
    """FASHION_DATA, else ../shared/data's archive, else None."""
    env = os.environ.get("FASHION_DATA")
    if env and Path(env).exists():
        return env
    return str(REAL_DATA) if REAL_DATA.exists() else None


def write_image(path: Path, cls: int, rng: np.random.Generator, size=(60, 80), mode="RGB") -> None:
    """A synthetic product photo: white background, a class-dependent coloured band, some noise."""
    from PIL import Image

    w, h = size
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    top = 5 + (cls * 9) % max(1, h - 20)
    colour = np.array([(cls * 67) % 256, (cls * 131) % 256, (cls * 29) % 256], dtype=np.uint8)
    arr[top : top + 12, 4 : w - 4] = colour
    arr = np.clip(arr.astype(int) + rng.integers(-8, 9, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).convert(mode).save(path, format="PNG" if mode in ("RGBA", "P", "LA") else "JPEG")


def make_dataset(
    root: Path, n_classes: int = 8, per_class=(40, 40, 30, 30, 10, 8, 6, 4), seed: int = 0, odd_rows: bool = True
) -> Path:
    """Write a generated dataset folder; returns it.

    Classes C0..C{n-1}; class i has per_class[i] products, alternating even (2012) and odd (2013) years.
    With ``odd_rows``: a comma inside a name, an NA usage, a row without year, a non-numeric year,
    a row without image, an empty image, a truncated image, a non-image file, a grayscale, a CMYK,
    an RGBA PNG and an odd-size image.
    """
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    pid = 1000
    for c in range(n_classes):
        for j in range(per_class[c % len(per_class)]):
            year = 2012 if j % 2 == 0 else 2013
            usage = "NA" if j % 7 == 3 else "Casual"
            lines.append(f"{pid},Men,Apparel,Topwear,C{c},Blue,Summer,{year},{usage},Brand Men C{c} shirt {j}")
            write_image(images / f"{pid}.jpg", c, rng)
            pid += 1
    if odd_rows:
        odd = [
            (1, "Women,Apparel,Topwear,C0,Red,Fall,2012,Casual,Acme Women's Yes, its me Red Top", "rgb"),
            (2, "Men,Apparel,Topwear,C0,Red,Fall,,Casual,No Year Shirt", "rgb"),
            (3, "Men,Apparel,Topwear,C0,Red,Fall,20x2,Casual,Bad Year Shirt", "rgb"),
            (4, "Men,Apparel,Topwear,C0,Red,Fall,2012,Casual,No Image Shirt", None),
            (5, "Men,Apparel,Topwear,C0,Red,Fall,2012,Casual,Empty Image Shirt", "empty"),
            (6, "Men,Apparel,Topwear,C1,Red,Fall,2012,Casual,Truncated Image Shirt", "truncated"),
            (7, "Men,Apparel,Topwear,C1,Red,Fall,2012,Casual,Not An Image", "text"),
            (8, "Men,Apparel,Topwear,C1,Grey,Fall,2012,Casual,Gray Shirt", "L"),
            (9, "Men,Apparel,Topwear,C1,Cyan,Fall,2012,Casual,Cmyk Shirt", "CMYK"),
            (10, "Men,Apparel,Topwear,C2,Pink,Fall,2012,Casual,Rgba Shirt", "RGBA"),
            (11, "Men,Apparel,Topwear,C2,Pink,Fall,2012,Casual,Odd Size Shirt", "odd"),
            (12, "Men,Apparel,Topwear,,Pink,Fall,2012,Casual,No Label Shirt", "rgb"),
        ]
        for k, rest, kind in odd:
            oid = 90000 + k
            lines.append(f"{oid},{rest}")
            p = images / f"{oid}.jpg"
            if kind == "rgb":
                write_image(p, 0, rng)
            elif kind == "empty":
                p.write_bytes(b"")
            elif kind == "truncated":
                write_image(p, 1, rng)
                p.write_bytes(p.read_bytes()[:60])
            elif kind == "text":
                p.write_text("this is not an image")
            elif kind in ("L", "CMYK"):
                write_image(p, 1, rng, mode=kind)
            elif kind == "RGBA":
                write_image(p, 2, rng, mode="RGBA")
            elif kind == "odd":
                write_image(p, 2, rng, size=(53, 77))
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of hand-made members (payload None: no data, e.g. links and folders) - hostile archives too."""
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return path

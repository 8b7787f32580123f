"""Generated stand-in for the full-resolution catalogue: same layout, sizes and JSON shape as the public one.

The public "Fashion Product Images Dataset" (~25 GB) holds ``styles.csv``, ``images/<id>.jpg``
(1800x2400 W x H product photos, ~550 KB each) and ``styles/<id>.json`` (one rich-metadata
document per product). ``make_fullres_dataset`` writes that layout with synthetic photos whose
JPEG size is realistic (smooth backdrop + shaded product + sharp shapes + luminance noise at
quality 90 gives ~570 KB), so decode timings mean something.

    .venv/bin/python -m tests.helpers.fullres /tmp/fullres-demo 20
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
FULL_SIZE = (1800, 2400)  # W x H, as in the public full-resolution dataset
BRANDS = ("Turtle", "Puma", "Nike", "Fabindia", "Jealous 21", "Titan", "Wrangler", "Lakme")
AGE_GROUPS = ("Adults-Men", "Adults-Women", "Adults-Unisex", "Kids-Boys", "Kids-Girls")
_NOISE: dict[tuple[int, int, int], np.ndarray] = {}


def synthetic_photo(seed: int, size: tuple[int, int] = FULL_SIZE, noise: int = 4):
    """A product-photo-like RGB PIL image of ``size`` (W, H): light backdrop, shaded striped body, patches, noise."""
    from PIL import Image, ImageDraw

    W, H = size
    rng = np.random.default_rng(seed)
    # Smooth parts are computed at 1/4 size and upsampled: fast, and smooth anyway.
    h, w = max(1, H // 4), max(1, W // 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (245 - 20 * rng.uniform(0.3, 1.0) * yy / h)[..., None]
    colour = rng.uniform(30, 220, 3).astype(np.float32)
    d = ((yy - h * rng.uniform(0.45, 0.55)) / (h * rng.uniform(0.25, 0.4))) ** 2 + (
        (xx - w * rng.uniform(0.45, 0.55)) / (w * rng.uniform(0.25, 0.4))
    ) ** 2
    body = d < 1
    stripes = 25 * np.sin(xx / rng.uniform(4, 15))
    img[body] = colour[None, :] * (1 - 0.35 * d[body])[:, None] + stripes[body][:, None]
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((W, H), Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 10))):  # sharp edges: the high frequencies real photos have
        x0, y0 = int(rng.integers(0, max(1, W - W // 9))), int(rng.integers(0, max(1, H - H // 12)))
        draw.rectangle(
            [x0, y0, x0 + int(rng.integers(W // 45 + 1, W // 4 + 2)), y0 + int(rng.integers(H // 60 + 1, H // 6 + 2))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    if noise <= 0:
        return im
    key = (W, H, noise)
    if key not in _NOISE:  # one noise field, shifted per image: realistic entropy without per-image cost
        _NOISE[key] = np.random.default_rng(12345).integers(-noise, noise + 1, (H + 64, W + 64, 1), dtype=np.int16)
    oy, ox = (int(v) for v in rng.integers(0, 64, 2))
    arr = np.asarray(im).astype(np.int16) + _NOISE[key][oy : oy + H, ox : ox + W]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def style_json(pid: int, label: str, gender: str, colour: str, year: int, name: str, rng: np.random.Generator) -> dict:
    """One ``styles/<id>.json`` document shaped like the public dataset's (``meta`` + ``data``)."""
    price = int(rng.integers(3, 60)) * 100 - 5
    brand = BRANDS[int(rng.integers(len(BRANDS)))]
    return {
        "notification": {},
        "meta": {"code": 200, "requestId": f"req-{pid}", "errorDetail": None, "errorMessage": None},
        "data": {
            "id": pid,
            "price": price,
            "discountedPrice": price - int(rng.integers(0, 3)) * 100,
            "styleType": "P",
            "productTypeId": 1,
            "articleNumber": f"A{pid:07d}",
            "visualTag": "",
            "productDisplayName": name,
            "variantName": name.split(" ", 1)[-1],
            "myntraRating": 0,
            "catalogAddDate": 1320656400 + pid,
            "brandName": brand,
            "ageGroup": AGE_GROUPS[int(rng.integers(5))],
            "gender": gender,
            "baseColour": colour,
            "colour1": "" if pid % 3 else "White",
            "colour2": "",
            "fashionType": "Fashion" if pid % 4 else "Core",
            "season": "Fall",
            "year": str(year),
            "usage": "Casual",
            "vat": 5.5,
            "displayCategories": "Casual Wear",
            "weight": "0",
            "navigationId": 0,
            "landingPageUrl": f"{label.lower()}/{brand.lower()}/{pid}/buy",
            "articleAttributes": {"Fit": "Regular Fit", "Pattern": "Solid", "Sleeve Length": "Short Sleeves"},
            "crossLinks": [{"key": f"More {label} by {brand}", "value": f"{label.lower()}?f=brand:{brand}"}],
            "codEnabled": True,
            "styleImages": {
                "default": {
                    "imageURL": f"http://assets.example/images/style/{pid}.jpg",
                    "resolutions": {"1080X1440": f"http://assets.example/{pid}_1080.jpg"},
                }
            },
            "masterCategory": {
                "id": 9,
                "typeName": "Apparel",
                "active": True,
                "socialSharingEnabled": True,
                "isReturnable": True,
                "isExchangeable": True,
                "pickupEnabled": True,
                "isTryAndBuyEnabled": True,
            },
            "subCategory": {"id": 31, "typeName": "Topwear", "active": True},
            "articleType": {"id": 90, "typeName": label, "active": True},
            "isEMIEnabled": False,
            "otherFlags": [],
            "productDescriptors": {
                "description": {
                    "descriptorType": "description",
                    "value": f"<p><strong>{brand}</strong> {name.lower()} &amp; more.<br />"
                    f"Made of <em>100% cotton</em>, &quot;{colour}&quot; colour.</p>",
                },
                "materials_care_desc": {"descriptorType": "materials_care_desc", "value": "<p>Machine wash</p>"},
            },
            "styleOptions": [{"id": pid * 10, "name": "Size", "value": "M", "available": True}],
        },
    }


def make_fullres_dataset(
    root: Path,
    n: int = 24,
    n_classes: int = 3,
    size: tuple[int, int] = FULL_SIZE,
    quality: int = 90,
    noise: int = 4,
    seed: int = 0,
    odd_json: bool = True,
    corrupt_image: bool = False,
) -> Path:
    """Write ``styles.csv``, ``images/<id>.jpg`` and ``styles/<id>.json`` for ``n`` products; returns ``root``.

    Args:
        root: the dataset folder (created).
        n: products, classes C0..C{n_classes-1} in turn, years alternating 2012 / 2013.
        size: image (W, H); the public dataset's is 1800x2400.
        odd_json: the first three products get a missing, a corrupt and a data-less JSON file.
        corrupt_image: the first product's image is truncated (undecodable).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "styles").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [HEADER]
    for k in range(n):
        pid = 10000 + k
        c = k % n_classes
        year = 2012 if (k // n_classes) % 2 == 0 else 2013
        gender = ("Men", "Women")[k % 2]
        colour = ("Navy Blue", "Red", "White", "Black")[k % 4]
        name = f"{BRANDS[k % len(BRANDS)]} {gender} {colour} C{c} item {k}"
        lines.append(f"{pid},{gender},Apparel,Topwear,C{c},{colour},Fall,{year},Casual,{name}")
        path = root / "images" / f"{pid}.jpg"
        synthetic_photo(seed * 100003 + k, size, noise).save(path, "JPEG", quality=quality)
        if corrupt_image and k == 0:
            path.write_bytes(path.read_bytes()[:2000])
        doc = style_json(pid, f"C{c}", gender, colour, year, name, rng)
        jpath = root / "styles" / f"{pid}.json"
        if odd_json and k == 0:
            continue  # missing JSON
        if odd_json and k == 1:
            jpath.write_text(json.dumps(doc)[:150])  # truncated: not valid JSON
        elif odd_json and k == 2:
            jpath.write_text(json.dumps({"meta": {"code": 404}, "data": None}))
        else:
            jpath.write_text(json.dumps(doc))
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


if __name__ == "__main__":
    out = make_fullres_dataset(Path(sys.argv[1]), n=int(sys.argv[2]) if len(sys.argv) > 2 else 24)
    print(out, sum(p.stat().st_size for p in (out / "images").iterdir()) / 1e6, "MB of images")

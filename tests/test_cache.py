"""Image cache: decode once, fixed size with a white-padding policy, reuse, resume, failures as exclusions."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from fashion_core.data.cache import build_cache, decode_image
from fashion_core.data.catalog import build_catalog


def test_decode_fits_and_pads_white(tmp_path):
    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((30, 60, 3), np.uint8)).save(p)  # 60 wide, 30 high: black
    out = decode_image(str(p), 80, 60)
    assert out.shape == (80, 60, 3) and out.dtype == np.uint8
    assert (out[:20] == 255).all() and (out[-20:] == 255).all()  # padded top and bottom
    assert (out[30:50] == 0).all()


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_decode_any_mode_to_rgb(tmp_path, mode):
    p = tmp_path / f"img_{mode.replace(';', '')}.png" if mode not in ("CMYK",) else tmp_path / "img.jpg"
    base = Image.fromarray((np.random.default_rng(0).integers(0, 255, (80, 60, 3))).astype(np.uint8))
    base.convert(mode).save(p)
    out = decode_image(str(p), 80, 60)
    assert out.shape == (80, 60, 3)


def test_build_reuse_and_failures(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fashion_core")
    cat = build_catalog(dataset)
    cache = build_cache(cat, 40, 30, workers=2, root=tmp_path, chunk=16)
    assert cache.images.shape[1:] == (40, 30, 3)
    assert set(cache.failures) == {90006, 90007}
    row = cache.rows_of(np.array([1000]))[0]
    assert np.array_equal(cache.images[row], decode_image(str(dataset / "images" / "1000.jpg"), 40, 30))
    again = build_cache(cat, 40, 30, root=tmp_path)
    assert "reusing" in caplog.messages[-1] and again.folder == cache.folder
    assert np.array_equal(np.asarray(again.images), np.asarray(cache.images))
    other = build_cache(cat, 32, 24, root=tmp_path)
    assert other.folder != cache.folder


def test_interrupted_build_resumes(dataset, tmp_path, caplog):
    cat = build_catalog(dataset)
    clean = build_cache(cat, 40, 30, workers=1, root=tmp_path / "a")
    # simulate a build killed half-way: mark the second half pending and garble it
    partial = build_cache(cat, 40, 30, workers=1, root=tmp_path / "b")
    folder = partial.folder
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    n = meta["n"]
    status = np.memmap(folder / "status.u8", dtype=np.uint8, mode="r+", shape=(n,))
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r+", shape=(n, 40, 30, 3))
    status[n // 2 :] = 0
    images[n // 2 :] = 7
    status.flush()
    images.flush()
    del status, images
    caplog.set_level(logging.INFO, logger="fashion_core")
    resumed = build_cache(cat, 40, 30, workers=1, root=tmp_path / "b")
    assert any("resuming" in m for m in caplog.messages)
    assert np.array_equal(np.asarray(resumed.images), np.asarray(clean.images))


def test_take_keeps_the_requested_order(dataset, tmp_path):
    cache = build_cache(build_catalog(dataset), 40, 30, workers=1, root=tmp_path)
    ids = np.array([1005, 1000, 1003])
    got = cache.take(ids)
    for i, pid in enumerate(ids):
        assert np.array_equal(got[i], cache.images[cache.rows_of(np.array([pid]))[0]])
    with pytest.raises(KeyError, match="not in the image cache"):
        cache.rows_of(np.array([123456789]))

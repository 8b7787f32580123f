"""The full-resolution layout: rich JSON metadata, layout detection, short-side sizes, and a cache build
on 1800x2400 JPEGs that keeps memory bounded and resumes after SIGKILL to the same result as a clean build."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_core.config.schema import DataConfig
from fashion_core.data.cache import build_cache, decode_image, size_for_short_side
from fashion_core.data.catalog import build_catalog
from fashion_core.data.prepared import prepare_data
from fashion_core.data.richmeta import RICH_FIELDS, detect_layout, html_to_text, parse_style_json, read_rich_metadata
from tests.helpers.fullres import FULL_SIZE, make_fullres_dataset, style_json

PROJECT = Path(__file__).resolve().parents[1]
N_FULL = 36
# A cache build in its own process, so its memory can be measured and it can be killed.
BUILD = """
import json, resource, sys
from fashion_core.data.cache import build_cache
from fashion_core.data.catalog import build_catalog
data, root, workers, draft = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
cat = build_catalog(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
build_cache(cat, 299, 224, workers=workers, root=root, chunk=2, draft=draft)
print(json.dumps({"before": before, "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.fixture(scope="module")
def fullres(tmp_path_factory) -> Path:
    """N_FULL real-size products (1800x2400 JPEG q90, ~570 KB), the first image truncated, odd JSON files."""
    return make_fullres_dataset(tmp_path_factory.mktemp("full") / "fashion-dataset", n=N_FULL, corrupt_image=True)


@pytest.fixture()
def cache_env(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _build_env(tmp_path: Path) -> dict:
    return {**os.environ, "FASHION_CACHE": str(tmp_path / "cache"), "CI": "1", "OMP_NUM_THREADS": "1"}


def test_generator_writes_the_public_layout(fullres):
    assert (fullres / "styles.csv").read_text().startswith("id,gender,masterCategory")
    jpgs = sorted((fullres / "images").glob("*.jpg"))
    assert len(jpgs) == N_FULL
    with Image.open(jpgs[1]) as im:
        assert im.size == FULL_SIZE and im.format == "JPEG"
    mean_kb = np.mean([p.stat().st_size for p in jpgs[1:]]) / 1024
    assert 300 < mean_kb < 900, f"{mean_kb:.0f} KB: the public full-size photos average ~550 KB"
    doc = json.loads((fullres / "styles" / "10005.json").read_text())
    assert set(doc) >= {"meta", "data"}
    assert (
        doc["data"]["articleType"]["typeName"] == "C2"
        and "<p>" in doc["data"]["productDescriptors"]["description"]["value"]
    )


def test_html_to_text_and_parse():
    assert (
        html_to_text("<p><b>Soft</b> cotton&nbsp;&amp; linen<br/>blend</p><ul><li>Wash</li></ul>")
        == "Soft cotton & linen blend Wash"
    )
    assert html_to_text(None) == ""
    doc = style_json(7, "Tshirts", "Men", "Red", 2012, "Puma Men Red Tshirt", np.random.default_rng(0))
    out = parse_style_json(json.dumps(doc))
    assert set(out) == set(RICH_FIELDS)
    assert out["brandName"] and isinstance(out["price"], float) and out["price"] >= out["discountedPrice"]
    assert "<" not in out["description"] and "100% cotton" in out["description"]
    doc["data"]["price"] = "1,2"  # not a number: NaN, never an exception
    doc["data"]["productDescriptors"] = None
    out = parse_style_json(json.dumps(doc))
    assert np.isnan(out["price"]) and out["description"] == ""
    for bad in ("{", "[]", '{"meta": {}}', '{"data": null}'):
        with pytest.raises(ValueError):
            parse_style_json(bad)


def test_catalog_gets_rich_columns_and_counts(fullres, cache_env):
    cat = build_catalog(fullres)
    assert cat.attrs["richmeta"] == {"json_found": N_FULL - 3, "json_missing": 1, "json_corrupt": 2}
    assert set(RICH_FIELDS) <= set(cat.columns)
    bad = cat["id"].isin([10000, 10001, 10002])
    assert (cat.loc[bad, "brandName"] == "").all() and cat.loc[bad, "price"].isna().all()
    good = cat[~bad]
    assert (good["brandName"] != "").all() and good["price"].gt(0).all()
    assert good["description"].str.contains("cotton").all() and not good["description"].str.contains("<").any()
    assert cat["valid"].sum() == N_FULL  # rich metadata never changes validity (the truncated image is found later)
    memo = list((cache_env / "cache" / "richmeta").glob("*.parquet"))
    assert len(memo) == 1
    again, counts = read_rich_metadata(fullres, cat["id"].to_numpy())  # served from the memo
    assert counts == cat.attrs["richmeta"]
    assert again["brandName"].tolist() == cat["brandName"].tolist()


def test_small_layout_has_no_rich_columns(dataset, cache_env):
    cat = build_catalog(dataset)
    assert not set(RICH_FIELDS) & set(cat.columns) and "richmeta" not in cat.attrs
    layout = detect_layout(dataset, cat)
    assert layout.kind == "small" and layout.image_size == (60, 80) and layout.n_json == 0


def test_layout_detected_from_json_or_image_size(fullres, tmp_path, cache_env):
    layout = detect_layout(fullres, build_catalog(fullres))
    assert layout.kind == "full" and layout.image_size == FULL_SIZE and layout.n_json == N_FULL - 1
    # big photos without any JSON are the full layout too
    bare = make_fullres_dataset(tmp_path / "bare", n=3, size=(360, 480), odd_json=False)
    for p in (bare / "styles").iterdir():
        p.unlink()
    (bare / "styles").rmdir()
    assert detect_layout(bare, build_catalog(bare)).kind == "full"


def test_short_side_sizes():
    assert size_for_short_side(60) == (80, 60)  # the small dataset's default
    assert size_for_short_side(160) == (213, 160)
    assert size_for_short_side(224) == (299, 224)
    with pytest.raises(ValueError):
        size_for_short_side(4)


def test_cli_short_side_sets_height_and_width():
    from click.testing import CliRunner

    from fashion_core.cli import commands as cli
    from fashion_core.cli.options import data_options

    seen = {}

    @cli.main.command("probe-size")
    @data_options
    def probe(data, top_k, rank_on, val_fraction, split_seed, val_by, val_years, height, width, experiment):
        seen["hw"] = (height, width)

    try:
        for args, hw in [
            ([], (80, 60)),
            (["--short-side", "224"], (299, 224)),
            (["--short-side", "160", "--width", "150"], (213, 150)),
        ]:
            res = CliRunner().invoke(cli.main, ["probe-size", *args])
            assert res.exit_code == 0, res.output
            assert seen["hw"] == hw
    finally:
        cli.main.commands.pop("probe-size", None)


def test_prepare_reports_the_layout(cache_env, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fashion_core")
    data = make_fullres_dataset(tmp_path / "fashion-dataset", n=24, size=(240, 320))
    p = prepare_data(str(data), DataConfig(height=40, width=30, top_k=2), workers=1)
    assert p.layout.kind == "full" and "brandName" in p.catalog.columns
    text = "\n".join(caplog.messages)
    assert "dataset layout: full" in text and "json_corrupt 2" in text and "--short-side 224" in text


def test_draft_decode_matches_full_decode(fullres):
    path = str(fullres / "images" / "10003.jpg")
    for h, w in [(299, 224), (80, 60)]:
        a = decode_image(path, h, w, draft=True).astype(int)
        b = decode_image(path, h, w, draft=False).astype(int)
        assert a.shape == b.shape == (h, w, 3)
        assert np.abs(a - b).mean() < 4, "DCT-domain downscaling must give nearly the same pixels"


@pytest.mark.integration  # a cache build in a child process
def test_full_size_build_keeps_memory_bounded(fullres, tmp_path):
    """2 workers on 1800x2400 photos: neither the builder nor a worker holds more than a few full-size images."""
    out = subprocess.run(
        [sys.executable, "-c", BUILD, str(fullres), str(tmp_path / "c"), "2", "1"],
        capture_output=True,
        text=True,
        env=_build_env(tmp_path),
        cwd=PROJECT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rss = {k: v / 1024 for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}  # MB
    full_image_mb = FULL_SIZE[0] * FULL_SIZE[1] * 3 / 2**20  # 12.4 MB decoded
    all_images_mb = N_FULL * full_image_mb
    assert rss["self"] - rss["before"] < 64, rss  # the builder never holds decoded full-size photos
    assert rss["children"] < 250 and rss["children"] < all_images_mb / 2, rss


@pytest.mark.integration  # a cache build in a child process, killed
def test_killed_build_resumes_to_the_clean_result(fullres, tmp_path, caplog):
    """SIGKILL a build mid-way (after the undecodable first image), resume, compare with a clean build."""
    root = tmp_path / "killed"
    # draft=False and 2-image chunks keep the build slow enough to be caught mid-way
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(fullres), str(root), "1", "0"],
        env=_build_env(tmp_path),
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    done = 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            status = list(root.glob("images/*/status.u8"))
            if status:
                done = int((np.fromfile(status[0], dtype=np.uint8)[:N_FULL] != 0).sum())
                if done >= 4:
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the build's own process group (start_new_session)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    folder = next(root.glob("images/*"))
    assert not (folder / "meta.json").exists()
    status = np.fromfile(folder / "status.u8", dtype=np.uint8)[:N_FULL]
    assert 0 < (status != 0).sum() < N_FULL and status[0] == 2  # the truncated first image failed before the kill

    cat = build_catalog(fullres)
    caplog.set_level(logging.INFO, logger="fashion_core")
    resumed = build_cache(cat, 299, 224, workers=1, root=root, draft=False)
    assert any("resuming" in m for m in caplog.messages), caplog.messages
    clean = build_cache(cat, 299, 224, workers=2, root=tmp_path / "clean", draft=False)
    assert resumed.folder.name == clean.folder.name
    assert np.array_equal(resumed.ids, clean.ids)
    assert np.array_equal(np.asarray(resumed.images), np.asarray(clean.images))
    assert set(resumed.failures) == set(clean.failures) == {10000}


def test_rich_fields_are_fusion_inputs(fullres, cache_env):
    """brandName / ageGroup / colour1 / fashionType are valid fusion fields and encode like the CSV's categoricals."""
    from fashion_core.config.schema import load_experiment
    from fashion_core.fusion.encoders import MISSING, MetaVocab

    cfg = load_experiment(None, stage="pretrain").replace(
        **{"fusion.mode": "late", "fusion.fields": "gender,brandName,ageGroup,colour1,fashionType"}
    )
    cat = build_catalog(fullres)
    vocab = MetaVocab.fit(cat.iloc[3:], cfg.fusion)
    assert vocab.fields == ["gender", "brandName", "ageGroup", "colour1", "fashionType"]
    codes = vocab.encode(cat)["meta_cat"].numpy()
    assert (codes[:3, 1:] == MISSING).all()  # no usable JSON: every rich field is "missing"
    assert (codes[3:, 1] > MISSING).all()  # every product with JSON has a known brand


@pytest.mark.slow
def test_rich_fields_feed_the_fusion_encoders(isolated):
    """A fused pretrain run on the full layout: brandName / ageGroup from the JSON become encoder vocabularies."""
    import json as _json

    from fashion_core.config.schema import load_experiment
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.references import MODEL_JSON

    data = make_fullres_dataset(isolated / "fashion-dataset", n=24, size=(120, 160))
    cfg = load_experiment(None, profile="smoke", stage="pretrain").replace(
        **{
            "data.top_k": 2,
            "train.device": "cpu",
            "train.epochs": 1,
            "fusion.mode": "late",
            "fusion.fields": "gender,brandName,ageGroup",
        }
    )
    run_id = run_stage(cfg, str(data), register=False)
    meta = _json.loads(tracking.download_artifact(run_id, MODEL_JSON, isolated / "dl").read_text())
    vocab = meta["fused"]["vocab"]["categorical"]
    assert set(vocab) == {"gender", "brandName", "ageGroup"}
    assert set(vocab["brandName"]) <= {"Turtle", "Puma", "Nike", "Fabindia", "Jealous 21", "Titan", "Wrangler", "Lakme"}
    assert len(vocab["brandName"]) >= 2 and vocab["ageGroup"]

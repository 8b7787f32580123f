"""Dataset sources: folders at any of three depths, archives extracted once and safely, kaggle via a fake downloader."""

import logging
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from fashion_core.data.sources import DataSourceError, resolve_dataset
from tests.helpers.data import write_tar


def _tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    return write_tar(path, [(info, (data or {}).get(info.name)) for info in entries])


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_folder_at_depth_zero_one_two(tmp_path, dataset):
    assert resolve_dataset(dataset) == dataset
    assert resolve_dataset(dataset.parent) == dataset
    outer = tmp_path / "outer"
    (outer / "mid").mkdir(parents=True)
    os.symlink(dataset, outer / "mid" / "inner")
    assert resolve_dataset(outer) == outer / "mid" / "inner"


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FASHION_DATA", raising=False)
    with pytest.raises(DataSourceError, match="kaggle.com/datasets/paramaggarwal/fashion-product-images-small"):
        resolve_dataset(None)
    with pytest.raises(DataSourceError, match="does not exist"):
        resolve_dataset(tmp_path / "nope")
    with pytest.raises(DataSourceError, match="no styles.csv"):
        resolve_dataset(tmp_path)


def test_env_variable_is_the_default(monkeypatch, dataset):
    monkeypatch.setenv("FASHION_DATA", str(dataset))
    assert resolve_dataset(None) == dataset


def test_tar_and_zip_are_extracted_once(tmp_path, monkeypatch, dataset, caplog):
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    tgz = tmp_path / "ds.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(dataset, arcname="fashion-mini")
    root = resolve_dataset(tgz)
    assert (root / "styles.csv").read_bytes() == (dataset / "styles.csv").read_bytes()
    assert len(list((root / "images").iterdir())) == len(list((dataset / "images").iterdir()))
    caplog.set_level(logging.INFO, logger="fashion_core")
    assert resolve_dataset(tgz) == root
    assert caplog.messages == []  # reused, not extracted again
    zp = tmp_path / "ds.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for p in dataset.rglob("*"):
            zf.write(p, Path("top") / "fashion-mini" / p.relative_to(dataset))
    zroot = resolve_dataset(zp)
    assert zroot.name == "fashion-mini" and (zroot / "styles.csv").is_file()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: [_file("/etc/evil")], "absolute path"),
        (lambda: [_file("ds/../../evil")], r"'\.\.'"),
    ],
)
def test_tar_traversal_is_refused(tmp_path, monkeypatch, make, match):
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    tgz = _tar(tmp_path / "bad.tar.gz", make(), {e.name: b"x" for e in make()})
    with pytest.raises(DataSourceError, match=match):
        resolve_dataset(tgz)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert list((tmp_path / "cache" / "extracted").iterdir()) == []  # the partial extraction is removed


def test_links_pointing_outside_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    link = tarfile.TarInfo("ds/images/1.jpg")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../../etc/passwd"
    tgz = _tar(tmp_path / "link.tar.gz", [_file("ds/styles.csv"), link], {"ds/styles.csv": b"id\n"})
    with pytest.raises(DataSourceError, match="points outside"):
        resolve_dataset(tgz)
    abs_link = tarfile.TarInfo("ds/x")
    abs_link.type = tarfile.SYMTYPE
    abs_link.linkname = "/etc/passwd"
    tgz2 = _tar(tmp_path / "abs.tar.gz", [abs_link])
    with pytest.raises(DataSourceError, match="absolute target"):
        resolve_dataset(tgz2)
    # nothing was written outside the cache folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abs.tar.gz", "cache", "link.tar.gz"]


def test_zip_traversal_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    zp = tmp_path / "bad.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        zf.writestr("ds/styles.csv", "id\n")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataSourceError, match=r"'\.\.'"):
        resolve_dataset(zp)
    assert not (tmp_path / "evil.txt").exists()


def test_a_file_that_is_not_an_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "data.tar.gz"
    f.write_text("not an archive")
    with pytest.raises(DataSourceError, match="neither a folder nor"):
        resolve_dataset(f)


def test_kaggle_spec_uses_the_downloader(dataset):
    seen = []

    def fake(handle):
        seen.append(handle)
        return dataset.parent

    assert resolve_dataset("kaggle:someone/fashion", downloader=fake) == dataset
    assert seen == ["someone/fashion"]

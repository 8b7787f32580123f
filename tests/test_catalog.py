"""Catalogue reading: commas in names, NA values, every exclusion reason, odd image modes."""

import pytest

from fashion_core.config.schema import DataConfig
from fashion_core.data.catalog import CatalogError, build_catalog, read_styles, reason_counts
from fashion_core.data.prepared import prepare_data


def test_commas_in_names_parse_into_the_right_columns(dataset):
    df = read_styles(dataset / "styles.csv")
    row = df[df["id"] == "90001"].iloc[0]
    assert row["productDisplayName"] == "Acme Women's Yes, its me Red Top"
    assert row["year"] == "2012" and row["usage"] == "Casual"


def test_na_stays_a_value(dataset):
    df = read_styles(dataset / "styles.csv")
    assert (df["usage"] == "NA").sum() > 0
    assert df["usage"].isna().sum() == 0


def test_exclusion_reasons(dataset):
    cat = build_catalog(dataset)
    reason = dict(zip(cat["id"], cat["reason"]))
    assert reason[90002] == "no_year"
    assert reason[90003] == "bad_year"
    assert reason[90004] == "no_image"
    assert reason[90005] == "empty_image"
    assert reason[90012] == "no_label"
    # decoding is checked by the cache: these are still valid here
    assert reason[90006] == "" and reason[90007] == ""


def test_undecodable_images_are_excluded_and_odd_modes_kept(dataset, isolated):
    p = prepare_data(str(dataset), DataConfig(top_k=4))
    reason = dict(zip(p.catalog["id"], p.catalog["reason"]))
    assert reason[90006] == "undecodable_image"  # truncated
    assert reason[90007] == "undecodable_image"  # not an image
    for ok in (90008, 90009, 90010, 90011):  # grayscale, CMYK, RGBA, odd size
        assert reason[ok] == "", ok
    counts = reason_counts(p.catalog)
    assert counts["undecodable_image"] == 2 and counts["no_image"] == 1


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "is empty"),
        ("id,gender,articleType\n1,Men,Shirts\n", "lacks the columns"),
    ],
)
def test_bad_styles_csv(tmp_path, content, match):
    (tmp_path / "styles.csv").write_text(content)
    with pytest.raises(CatalogError, match=match):
        build_catalog(tmp_path)


def test_missing_styles_csv(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        build_catalog(tmp_path)


def test_duplicate_ids_keep_the_first(tmp_path, dataset):
    text = (dataset / "styles.csv").read_text().splitlines()
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "styles.csv").write_text("\n".join(text + [text[1]]) + "\n")
    cat = build_catalog(tmp_path)
    assert (cat["reason"] == "duplicate_id").sum() == 1
    assert cat.loc[cat["reason"] == "duplicate_id"].index[0] == len(cat) - 1

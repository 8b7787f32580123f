"""Split invariants: parity, no id in two splits, top-k by training frequency, stratified seeded validation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import DataConfig, load_experiment
from fashion_core.data.catalog import build_catalog
from fashion_core.data.splits import (
    SplitError,
    carve_validation,
    dataset_digest,
    make_splits,
    rank_classes,
    stage_classes,
    summarize_splits,
    top_classes,
)

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def catalog(dataset):
    return build_catalog(dataset)


def test_parity_and_exclusion(catalog):
    sp = make_splits(catalog, DataConfig(top_k=3))
    valid = sp[sp["split"] != "excluded"]
    assert (valid.loc[valid["split"] == "test", "year"] % 2 == 1).all()
    assert (valid.loc[valid["split"].isin(["train", "val"]), "year"] % 2 == 0).all()
    assert set(sp.loc[~catalog["valid"].to_numpy(), "split"]) == {"excluded"}


def test_no_id_in_two_splits(catalog):
    sp = make_splits(catalog, DataConfig(top_k=3))
    assert sp["id"].is_unique
    assert sp.groupby("id")["split"].nunique().max() == 1


def test_top_k_ranked_on_training_half():
    cat = pd.DataFrame(
        {
            "id": range(12),
            "valid": True,
            "articleType": ["A"] * 5 + ["B"] * 3 + ["C"] * 4,
            # A: 1 even / 4 odd; B: 3 even; C: 2 even / 2 odd
            "year": pd.array([2012, 2013, 2013, 2013, 2013, 2012, 2014, 2016, 2012, 2014, 2013, 2015], dtype="Int64"),
        }
    )
    assert top_classes(cat, 2, "train") == ["B", "C"]
    assert top_classes(cat, 2, "all") == ["A", "C"]
    assert list(rank_classes(cat, "train").index) == ["B", "C", "A"]
    with pytest.raises(SplitError, match="larger than the number of classes"):
        top_classes(cat, 4, "train")


def test_subsets(catalog):
    cfg = DataConfig(top_k=3)
    sp = make_splits(catalog, cfg)
    top = set(top_classes(catalog, 3))
    labelled = sp[sp["label"] != ""]
    assert (labelled["subset"] == np.where(labelled["label"].isin(top), "pretrain", "finetune")).all()


def test_validation_is_stratified_and_keeps_singletons():
    ids = np.arange(100)
    labels = np.array(["a"] * 60 + ["b"] * 20 + ["c"] * 2 + ["d"] * 1 + ["e"] * 17)
    mask = carve_validation(ids, labels, 0.15, seed=0)
    per = pd.Series(mask).groupby(labels).sum()
    assert per["a"] == 9 and per["b"] == 3 and per["c"] == 1 and per["d"] == 0 and per["e"] == 3
    for lab in "abce":  # every class keeps at least one training example
        assert (~mask[labels == lab]).sum() >= 1


def test_same_seed_same_split_other_seed_other_split(catalog):
    a = make_splits(catalog, DataConfig(top_k=3, split_seed=1))
    b = make_splits(catalog.sample(frac=1.0, random_state=3), DataConfig(top_k=3, split_seed=1))
    c = make_splits(catalog, DataConfig(top_k=3, split_seed=2))

    def key(s):
        return s.set_index("id")["split"].sort_index()

    assert key(a).equals(key(b))  # row order does not matter
    assert not key(a).equals(key(c))


def test_digest_depends_on_settings_not_row_order(catalog):
    d = dataset_digest(catalog, DataConfig())
    assert d == dataset_digest(catalog.sample(frac=1.0, random_state=0), DataConfig())
    assert d != dataset_digest(catalog, DataConfig(top_k=3))


def test_digest_covers_images_size_and_every_metadata_column_a_model_reads(catalog):
    base = dataset_digest(catalog, DataConfig())
    renamed = catalog.copy()
    first = renamed.index[renamed["valid"]][0]
    renamed.loc[first, "productDisplayName"] = renamed.loc[first, "productDisplayName"] + " Edited"
    assert dataset_digest(renamed, DataConfig()) != base
    for col in ("gender", "baseColour", "season", "usage", "masterCategory", "subCategory"):
        edited = catalog.copy()
        edited.loc[first, col] = "Other"
        assert dataset_digest(edited, DataConfig()) != base, col
    # other photos of the same products (the full-resolution files are bigger): another cache key
    bigger = catalog.assign(image_bytes=catalog["image_bytes"] * 30)
    assert dataset_digest(bigger, DataConfig()) != base
    assert dataset_digest(catalog, DataConfig(height=40, width=30)) != base  # another cached size
    rich = catalog.assign(brandName="Acme")  # the full-resolution dataset's styles/<id>.json columns
    assert dataset_digest(rich, DataConfig()) != base
    assert dataset_digest(rich, DataConfig()) != dataset_digest(rich.assign(brandName="Other"), DataConfig())
    # a column no model reads does not split the digest
    assert dataset_digest(catalog.assign(note="x"), DataConfig()) == base


def test_digest_changes_when_one_product_changes_year_or_label(catalog):
    """A product moved from 2012 to 2013 changes the split (train -> test): reuse and the ensemble's same-digest
    check must see another dataset; so must a relabelled product."""
    base = dataset_digest(catalog, DataConfig())
    first = catalog.index[catalog["valid"] & (catalog["year"] == 2012)][0]
    moved = catalog.copy()
    moved.loc[first, "year"] = 2013
    assert dataset_digest(moved, DataConfig()) != base
    relabelled = catalog.copy()
    other = next(c for c in catalog["articleType"].unique() if c != catalog.loc[first, "articleType"])
    relabelled.loc[first, "articleType"] = other
    assert dataset_digest(relabelled, DataConfig()) != base


def year_catalog() -> pd.DataFrame:
    """Classes over several even years and an odd one: A everywhere, B never in 2016, C only in 2016."""
    years = (
        [2010, 2012, 2012, 2014, 2016, 2016, 2016, 2013, 2013]  # A
        + [2012, 2012, 2014, 2018, 2015]  # B
        + [2016, 2016, 2017]
    )  # C
    labels = ["A"] * 9 + ["B"] * 5 + ["C"] * 3
    return pd.DataFrame(
        {"id": range(len(years)), "valid": True, "articleType": labels, "year": pd.array(years, dtype="Int64")}
    )


def test_validation_by_year_holds_out_whole_even_years():
    cat = year_catalog()
    sp = make_splits(cat, DataConfig(top_k=1, val_by="year", val_years=(2016,)))
    val = sp[sp["split"] == "val"]
    assert set(val["year"]) == {2016} and set(val["label"]) == {"A"}
    assert len(val) == 3  # every 2016 product of A, none of another year
    assert (sp.loc[sp["year"] % 2 == 1, "split"] == "test").all()
    # C's only training-year products are in 2016: held out, C could not be learned; it keeps them in train
    assert (sp.loc[(sp["label"] == "C") & (sp["year"] == 2016), "split"] == "train").all()
    assert stage_classes(sp, "finetune") == ["B", "C"]
    assert (sp.loc[sp["label"] == "B", "split"] != "val").all()  # B has no 2016 product: no validation
    two = make_splits(cat, DataConfig(top_k=1, val_by="year", val_years=(2014, 2016)))
    assert set(two.loc[two["split"] == "val", "year"]) == {2014, 2016}
    # val_fraction and split_seed mean nothing here: the same split, the same digest
    other = DataConfig(top_k=1, val_by="year", val_years=(2016,), val_fraction=0.3, split_seed=5)
    assert make_splits(cat, other)["split"].tolist() == sp["split"].tolist()
    assert dataset_digest(cat.assign(image="", image_bytes=0), other) == dataset_digest(
        cat.assign(image="", image_bytes=0), DataConfig(top_k=1, val_by="year", val_years=(2016,))
    )


def test_validation_by_year_changes_the_digest_and_needs_a_present_year():
    cat = year_catalog().assign(image="", image_bytes=0)
    random = dataset_digest(cat, DataConfig(top_k=1))
    by_2016 = dataset_digest(cat, DataConfig(top_k=1, val_by="year"))
    by_2014 = dataset_digest(cat, DataConfig(top_k=1, val_by="year", val_years=(2014,)))
    assert len({random, by_2016, by_2014}) == 3
    with pytest.raises(SplitError, match="val_years 2020: no valid training product.*2010, 2012, 2014, 2016, 2018"):
        make_splits(cat, DataConfig(top_k=1, val_by="year", val_years=(2020,)))


@pytest.mark.parametrize(
    "value, expected", [("2016", (2016,)), ("2014,2016", (2014, 2016)), ("[2012, 2018]", (2012, 2018))]
)
def test_val_years_override_reads_integers(value, expected):
    from fashion_core.config.schema import apply_overrides

    cfg = load_experiment(EXP / "pretrain" / "baseline.yaml", profile="smoke")
    assert apply_overrides(cfg, {"data.val_by": "year", "data.val_years": value}).data.val_years == expected


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("data.val_years", "2015", "2015 is a test year"),
        ("data.val_years", "x", "expected integers"),
        ("data.val_years", "[]", "at least one even year"),
        ("data.val_by", "month", "choose one of: random, year"),
    ],
)
def test_bad_validation_settings_are_config_errors(key, value, message):
    from fashion_core.config.schema import apply_overrides

    cfg = load_experiment(EXP / "pretrain" / "baseline.yaml", profile="smoke")
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, {key: value})


def test_summary_reports_no_test_and_test_only():
    cat = pd.DataFrame(
        {
            "id": range(7),
            "valid": True,
            "articleType": ["A", "A", "A", "B", "B", "C", "D"],
            "year": pd.array([2012, 2013, 2012, 2012, 2014, 2013, 2012], dtype="Int64"),
        }
    )
    sp = make_splits(cat, DataConfig(top_k=1, val_fraction=0.0))
    s = summarize_splits(sp, top_classes(cat, 1))
    assert s.top == ["A"] or s.top == ["B"]
    assert "C" in s.test_only["finetune"]
    assert "D" in s.no_test["finetune"]


def test_name_conflicts_across_the_year_split():
    from bench.label_conflicts import name_conflicts

    rows = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6, 7, 8],
            "label": ["Heels", "Heels", "Flats", "Flats", "Heels", "Flats", "Socks", "Belts"],
            "split": ["train", "val", "train", "test", "test", "test", "test", "test"],
        }
    )
    names = pd.Series(
        {
            1: "Catwalk  Gold Flats",
            2: "catwalk gold flats",
            3: "Rocia Flats",
            4: "CATWALK Gold Flats",
            5: "Rocia Flats",
            6: "New Flats",
            7: "Socks",
            8: "Belt",
        }
    )
    table, conflicts = name_conflicts(rows, names)
    # id 4 (Flats) bears a name the training years call Heels; id 5 (Heels) one they call Flats; id 6 is unseen.
    # Socks and Belts have no training rows: test-only classes are not evaluated.
    assert set(table.index) == {"Flats", "Heels"}
    assert table.loc["Flats", "n_test"] == 2 and table.loc["Flats", "conflict"] == 0.5
    assert table.loc["Flats", "name_seen"] == 0.5
    assert table.loc["Heels", "conflict"] == 1.0
    assert sorted(conflicts["id"]) == [4, 5]

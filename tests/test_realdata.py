"""The real catalogue: the counts DESIGN.md and the data README list (skipped when the data is absent)."""

import logging

import pytest

from fashion_core.config.schema import DataConfig

pytestmark = pytest.mark.realdata

TOP20 = [
    "Tshirts",
    "Watches",
    "Casual Shoes",
    "Kurtas",
    "Shirts",
    "Tops",
    "Sunglasses",
    "Handbags",
    "Sports Shoes",
    "Heels",
    "Briefs",
    "Wallets",
    "Flip Flops",
    "Socks",
    "Belts",
    "Sandals",
    "Sarees",
    "Dresses",
    "Formal Shoes",
    "Flats",
]


def test_prepare_on_the_real_data(real_data, isolated, caplog):
    from mlflow.tracking import MlflowClient

    from fashion_core.runners.prepare import run_prepare

    p, run_id = run_prepare(real_data, DataConfig())
    m = MlflowClient().get_run(run_id).data.metrics
    assert m["n_rows"] == 44446 and m["n_valid"] == 44072
    assert m["n_train"] + m["n_val"] == 23755 and m["n_test"] == 20317
    assert m["invalid_no_image"] + m["invalid_no_year"] == 374 and m["invalid_undecodable_image"] == 0
    assert m["n_classes_pretrain"] == 20
    assert p.top == TOP20
    assert p.summary.no_test["pretrain"] == ["Sarees"]
    assert "Perfume and Body Mist" in p.summary.test_only["finetune"]
    assert p.catalog.loc[p.catalog["id"] == 53781, "reason"].item() == "no_year"
    # the 22 rows with commas in productDisplayName parse into the right columns
    assert p.catalog["year"].dropna().between(2007, 2019).all()
    assert set(p.catalog["gender"]) <= {"Men", "Women", "Boys", "Girls", "Unisex"}
    arts = {a.path for a in MlflowClient().list_artifacts(run_id, "splits")}
    assert {"splits/splits.parquet", "splits/class_frequency.html", "splits/class_counts.json"} <= arts
    # a second prepare reuses the cache
    caplog.set_level(logging.INFO, logger="fashion_core")
    run_prepare(real_data, DataConfig())
    assert any("reusing" in line for line in caplog.messages)

"""Word meanings as zero-shot evidence (fashion_core/zeroshot/semantic.py), with a tiny stand-in sentence encoder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.zeroshot import text_encoder
from fashion_core.zeroshot.semantic import TEXT_FEATURE, TextEvidence, class_texts, fit_text_map, with_text
from tests.helpers.runs import run_data, run_table
from tests.helpers.store import module_store
from tests.helpers.zeroshot import UNSEEN, ConceptEncoder, cfg, make_zs_dataset

# A class whose products never say its name: only word meanings link "Nightdress" to Baby Dolls.
MEANING_ONLY = {"Baby Dolls": ["Clovia Women Pink Nightdress", "Secret Wish Women Nightdress"]}
TEXT = {"zeroshot.text": "mapped", "zeroshot.text_l2": 10.0}
STUB = ConceptEncoder()


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    return make_zs_dataset(tmp_path_factory.mktemp("zs-text") / "catalogue", unseen={**UNSEEN, **MEANING_ONLY})


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """A store of the module's own, and the stand-in encoder wherever the code loads the packaged one."""
    with module_store(tmp_path_factory, "zs-text-store") as (path, mp):
        mp.setattr(text_encoder, "load_encoder", lambda: STUB)
        yield path


@pytest.fixture(scope="module")
def runs(text_data, text_store):
    from fashion_core.runners.stage import run_stage

    return {mode: run_stage(cfg(**{**TEXT, "zeroshot.text": mode}), str(text_data)) for mode in ("none", "mapped")}


# ---------------------------------------------------------------- pieces


def test_text_map_fits_and_falls_back_to_the_identity():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((200, 8))
    rot = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    target = emb @ rot
    assert np.abs(fit_text_map(emb, target, 1e-6) - rot).max() < 1e-4  # weak pull: the map the rows follow
    assert np.abs(fit_text_map(emb, target, 1e9) - np.eye(8)).max() < 1e-4  # strong pull: the raw cosine
    with pytest.raises(ConfigError, match="zeroshot.text_l2"):
        fit_text_map(emb, target, 0.0)


def test_text_evidence_is_one_more_kind_and_survives_its_json():
    classes = ["Baby Dolls", "Night suits", "Watches"]
    class_emb = STUB.encode(class_texts(classes, "a {} product"))
    names = ["Clovia Women Nightdress", "Titan Men Watch"]
    emb = STUB.encode(names)
    ev = TextEvidence.fit(class_emb, "a {} product", STUB.source, "mapped", 1.0, emb, np.array([0, 2]))
    phi = with_text(np.zeros((2, 3, 8), np.float32), ev, emb)
    assert phi.shape == (2, 3, 9) and phi[:, :, 8].argmax(axis=1).tolist() == [0, 2]
    again = TextEvidence.from_dict(json.loads(json.dumps(ev.to_dict())))
    assert np.abs(again.features(emb) - ev.features(emb)).max() < 1e-5 and again.source == STUB.source
    raw = TextEvidence.fit(class_emb, "{}", STUB.source, "cosine")
    assert raw.proj is None and raw.features(emb)[:, :, 0] == pytest.approx(emb @ class_emb.T, abs=1e-5)
    with pytest.raises(ConfigError, match="exactly once"):
        class_texts(classes, "a product")


def test_config_checks_the_text_keys():
    with pytest.raises(ConfigError, match="zeroshot.text"):
        cfg(**{"zeroshot.text": "glove"})
    with pytest.raises(ConfigError, match="zeroshot.text_l2"):
        cfg(**{"zeroshot.text_l2": 0})
    with pytest.raises(ConfigError, match="zeroshot.class_template"):
        cfg(**{"zeroshot.class_template": "{} {}"})


# ---------------------------------------------------------------- runs


def test_word_meanings_name_a_class_no_product_name_mentions(runs, tmp_path):
    """Baby Dolls' products say "Nightdress": no name evidence reaches it, the stand-in's word meanings do."""
    without = run_table(runs["none"], tmp_path / "a").set_index("class")
    with_meanings = run_table(runs["mapped"], tmp_path / "b").set_index("class")
    assert without.loc["Baby Dolls", "n_train"] == 0 and with_meanings.loc["Baby Dolls", "n_train"] == 0
    assert without.loc["Baby Dolls", "top1"] == 0.0 and with_meanings.loc["Baby Dolls", "top1"] == 1.0
    data = run_data(runs["mapped"])
    assert data.metrics[f"zs_w_{TEXT_FEATURE}"] > 0  # a seen-class-fitted weight that trusts the meanings
    # the encoder's source is on the run, like init_* for packaged image weights
    assert {k: data.tags[f"text_encoder_{k}"] for k in STUB.source} == STUB.source
    assert f"zs_w_{TEXT_FEATURE}" not in run_data(runs["none"]).metrics


def test_the_logged_pyfunc_embeds_names_too(runs):
    import mlflow

    model = mlflow.pyfunc.load_model(f"runs:/{runs['mapped']}/model")
    frame = pd.DataFrame(
        {
            "gender": ["Women"],
            "baseColour": ["Blue"],
            "usage": ["Casual"],
            "productDisplayName": ["Clovia Women Pink Nightdress"],
        }
    )
    assert model.predict(frame).idxmax(axis=1).tolist() == ["Baby Dolls"]


def test_no_test_label_enters_the_text_map_or_calibration(runs, text_data, tmp_path):
    """Poisoned test split (labels shuffled, unseen test names rewritten): weights, map and calibration unchanged."""
    from fashion_core.data.prepared import prepare_data
    from fashion_core.runners.zeroshot import run_zeroshot
    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.runs import download_artifact

    c = cfg(**TEXT)
    p = prepare_data(str(text_data), c.data)
    splits = p.splits.copy()
    test = (splits["split"] == "test") & (splits["subset"] == "finetune")
    splits.loc[test, "label"] = np.random.default_rng(1).permutation(splits.loc[test, "label"].to_numpy())
    catalog = p.catalog.copy()
    unseen_ids = p.splits.loc[test & p.splits["label"].isin(list({**UNSEEN, **MEANING_ONLY})), "id"]
    catalog.loc[catalog["id"].isin(unseen_ids), "productDisplayName"] = "Clovia Night Suit Tie Watch Wallet"
    tracking.set_experiment("poisoned-text")
    again = run_zeroshot(c, dataclasses.replace(p, splits=splits, catalog=catalog))
    a, b = run_data(runs["mapped"]).metrics, run_data(again).metrics
    fitted = [k for k in a if k.startswith("zs_") or k in ("logreg_c", "val_top1_mean", "val_pseudo_harmonic")]
    assert f"zs_w_{TEXT_FEATURE}" in fitted and {k: a[k] for k in fitted} == {k: b[k] for k in fitted}
    heads = [
        json.loads(Path(download_artifact(r, "checkpoint/zeroshot.json", tmp_path / r)).read_text())
        for r in (runs["mapped"], again)
    ]
    assert heads[0]["text"]["proj"] is not None and heads[0]["text"] == heads[1]["text"]
    pd.testing.assert_frame_equal(
        run_table(runs["mapped"], tmp_path / "c", "zeroshot/calibration.csv"),
        run_table(again, tmp_path / "d", "zeroshot/calibration.csv"),
    )
    assert a["test_top1_unseen_mean"] != b["test_top1_unseen_mean"]  # the poison did reach the test scores


def test_the_calibration_bench_compares_text_variants(text_data, text_store, tmp_path, capsys):
    """bench/zeroshot_calibration.py on the generated catalogue: one row per evidence x hold-back x mix, and the
    same table again from its saved fold rows."""
    from bench.zeroshot_calibration import main

    rows = tmp_path / "rows.csv"
    args = [
        "--data",
        str(text_data),
        "--seeds",
        "2",
        "--text",
        "none",
        "mapped:10:a_{}_product",
        "--hold-back",
        "constant",
        "doubt",
        "--rows",
        str(rows),
        "-o",
        "metadata.logreg_c=1",
        "-o",
        "data.top_k=1",
    ]
    assert main(args) == 0
    table = capsys.readouterr().out.split("fold seed 1 done\n")[-1]
    assert main(["--data", "unused", "--seeds", "2", "--summarize", str(rows)]) == 0
    assert capsys.readouterr().out == table
    saved = pd.read_csv(rows, keep_default_na=False)
    assert set(saved["text"]) == {"none", "mapped:10:a_{}_product"} and set(saved["seed"]) == {0, 1}
    assert set(saved["variant"]) == {"constant", "doubt"} and saved["H"].between(0, 1).all()


def test_the_calibration_bench_reads_its_text_variants():
    from bench.zeroshot_calibration import parse_text

    assert parse_text("none") == ("none", 0.0, "{}") and parse_text("cosine:{}") == ("cosine", 1.0, "{}")
    assert parse_text("mapped:10:a_{}_product") == ("mapped", 10.0, "a {} product")
    with pytest.raises(SystemExit, match="bad --text variant"):
        parse_text("mapped:10:a_{}_product:wordnet")  # the WordNet class text left the code


def test_the_meta_text_features_bench_reads_validation_only(text_data, text_store, capsys):
    """bench/meta_text_features.py on the generated catalogue: one validation row per embedding scale, the scale-0
    arm being meta_only's own model; no test figure in its output."""
    from bench.meta_text_features import main

    assert (
        main(["--data", str(text_data), "--scales", "0", "2", "-o", "metadata.logreg_c=1", "-o", "data.top_k=1"]) == 0
    )
    out = capsys.readouterr().out
    assert "embedding_scale" in out and "val_top1_mean" in out and "test" not in out
    rows = [
        json.loads(line.replace("'", '"').replace("True", "true").replace("False", "false"))
        for line in out.splitlines()
        if line.startswith("{")
    ]
    assert [r["embedding_scale"] for r in rows] == [0.0, 2.0]
    assert all(0 <= r["val_top1_mean"] <= 1 and r["val_top1_mean"] <= r["val_top5_mean"] for r in rows)


def test_the_run_logs_its_class_texts(runs, tmp_path):
    """The class text is the name in the technique file's template: the run logs every class's."""
    from fashion_core.tracking.runs import download_artifact

    texts = json.loads(Path(download_artifact(runs["mapped"], "zeroshot/class_texts.json", tmp_path)).read_text())
    assert texts["Baby Dolls"] == "a Baby Dolls product" and texts["Watches"] == "a Watches product"
    assert not any(k.startswith("text_encoder_descriptions") for k in run_data(runs["mapped"]).tags)


def test_a_head_with_dropped_evidence_kinds_is_refused():
    """Heads logged with definition-word or photo evidence (measured, not adopted, removed) do not load silently."""
    from fashion_core.zeroshot.head import ZeroShotHead

    state = {
        "classes": ["A", "B"],
        "weights": [1.0],
        "seen": [True, False],
        "gamma": 0.0,
        "mix": "gate",
        "token_idf": {},
        "idf_unseen": 1.0,
        "text": None,
    }
    assert ZeroShotHead.from_dict(state).text is None
    for kind in ("definitions", "image"):
        with pytest.raises(ConfigError, match="train it again"):
            ZeroShotHead.from_dict({**state, kind: {"definitions": []}})

"""Tests for fashion_core.fusion and fashion_core.runners.metadata_only: encoders, fusion shapes on every backbone,
the auxiliary loss, leaky tagging, the metadata-only baseline run, and a fused pretrain -> finetune carrying
the encoders across (generated data, CPU).

    .venv/bin/python -m pytest tests/test_fusion.py -q
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fashion_core.config.checks import BACKBONES, ConfigError
from fashion_core.config.schema import FusionConfig, ModelConfig, load_experiment
from fashion_core.fusion.encoders import MISSING, UNKNOWN, CategoryVocab, MetaVocab, TextHasher
from fashion_core.fusion.meta import model_from_meta, model_meta
from fashion_core.fusion.modules import FusedNet, param_groups, reads_metadata
from fashion_core.losses import Criterion, build_criterion
from fashion_core.models.network import build_model

EXP = Path(__file__).resolve().parents[1] / "experiments"


def cfg(stage, technique, **over):
    over = {"data.top_k": 4, "train.epochs": 1, **over}
    return load_experiment(EXP / stage / f"{technique}.yaml", overrides=over, profile="smoke", stage=stage)


def rows(**cols) -> pd.DataFrame:
    base = {
        "gender": ["Men", "Women", "", "Men"],
        "baseColour": ["Blue", "NA", "Red", None],
        "season": ["Summer", "Fall", "Summer", ""],
        "usage": ["Casual", "NA", "", "Sports"],
        "productDisplayName": ["Puma Men Blue Shoes", "", "NA", "Nike Men RED  shoes"],
        "masterCategory": ["Footwear", "Apparel", "Footwear", "Footwear"],
        "subCategory": ["Shoes", "Topwear", "Shoes", "Shoes"],
    }
    base.update(cols)
    return pd.DataFrame(base)


def tiny_vocab(text=True, fields=("gender", "baseColour", "season", "usage")) -> MetaVocab:
    f = FusionConfig(mode="late", fields=tuple(fields) + (("productDisplayName",) if text else ()), text_buckets=64)
    return MetaVocab.fit(rows(), f)


def batch_for(vocab: MetaVocab, n: int = 4) -> dict:
    return vocab.encode(rows().iloc[:n])


def tiny_late(*args, **kwargs):
    """A seeded tiny late-fusion model on ``tiny_vocab``, 4 images and their batch: (model, vocab, x, batch)."""
    torch.manual_seed(0)
    vocab = tiny_vocab()
    model = FusedNet(build_model(ModelConfig(width_mult=0.25, stem="imagenet"), 3), vocab, "late", 8, *args, **kwargs)
    return model, vocab, torch.randn(4, 3, 32, 24), batch_for(vocab)


# ---------------------------------------------------------------- encoders


def test_category_codes_unknown_missing_and_na():
    v = CategoryVocab.fit("usage", ["Casual", "NA", "", None, "Sports", float("nan")])
    assert v.values == ("Casual", "NA", "Sports") and v.size == 5
    codes = v.encode(["Casual", "NA", "", None, float("nan"), "Party", " Casual "])
    assert codes.tolist() == [2, 3, MISSING, MISSING, MISSING, UNKNOWN, 2]
    assert codes.dtype == np.int64
    assert v.encode(["NA"])[0] not in (UNKNOWN, MISSING)  # the literal NA is a value of its own


def test_text_hasher_is_stable_case_blind_and_pads():
    h = TextHasher(buckets=97, ngrams=2)
    a = h.encode(["Puma Men Blue Shoes", "", "puma MEN blue shoes", "Cufflinks never seen"])
    assert a.shape[0] == 4 and (a >= 0).all() and (a <= 97).all()
    assert np.array_equal(a[0], a[2])  # lower-cased
    assert (a[1] == 97).all()  # empty name: padding only
    assert (a[3] < 97).sum() == 3 + 2  # unseen words still get buckets: 3 words + 2 pairs
    assert h.tokens("T-Shirt, Men's")[:4] == ["t", "shirt", "men", "s"]
    # CRC-32, not Python's per-process hash: the same bucket in every process and on every machine
    assert h.bucket("shoes") == 349143447 % 97
    assert (TextHasher(97, 1).encode(["Puma Men Blue Shoes"]) < 97).sum() == 4


def test_s_stemmer_makes_plurals_singular_only():
    from fashion_core.fusion.encoders import s_stem

    words = "wallets wallet accessories shoes flats dress glass canvas bus men kurtas tshirts toes".split()
    assert [s_stem(w) for w in words] == [
        "wallet",
        "wallet",
        "accessory",
        "shoe",
        "flat",
        "dress",
        "glass",
        "canva",
        "bus",
        "men",
        "kurta",
        "tshirt",
        "toe",
    ]
    # -es comes off the plurals of words ending in s, ch, sh, x (Harman's rules alone leave "dresse")
    words = "dresses watches brushes boxes sunglasses".split()
    assert [s_stem(w) for w in words] == ["dress", "watch", "brush", "box", "sunglass"]
    h = TextHasher(97, 2)
    assert np.array_equal(*h.encode(["Men Black Wallets", "men black wallet"]))  # pairs too
    assert np.array_equal(*h.encode(["Biba Women Blue Dresses", "biba women blue dress"]))


def test_a_vocabulary_hashed_another_way_is_refused():
    f = FusionConfig(mode="late", fields=("gender", "productDisplayName"), text_buckets=64)
    d = MetaVocab.fit(rows(), f).to_dict()
    assert d["text"]["stem"] is True and d["text"]["rules"] == "plural"
    for older in ({"stem": False}, {"rules": "harman"}, {"stem": None, "rules": None}):
        text = {k: v for k, v in {**d["text"], **older}.items() if v is not None}
        with pytest.raises(ConfigError, match="train it again"):
            MetaVocab.from_dict({**d, "text": text})


def test_meta_vocab_round_trips_and_rejects_absent_columns():
    v = tiny_vocab()
    again = MetaVocab.from_dict(v.to_dict())
    assert again == v
    for k, t in v.encode(rows()).items():
        assert torch.equal(t, again.encode(rows())[k])
    enc = v.encode(rows())
    assert enc["meta_cat"].shape == (4, 4) and enc["meta_text"].shape[0] == 4
    with pytest.raises(ConfigError, match="brandName"):
        MetaVocab.fit(rows(), FusionConfig(mode="late", fields=("gender", "brandName")))


def test_config_keeps_year_and_leaky_fields_out():
    with pytest.raises(ConfigError, match="metadata field"):
        load_experiment(None, overrides={"fusion.mode": "late", "fusion.fields": "gender,year"})
    with pytest.raises(ConfigError, match="leaky metadata field"):
        load_experiment(None, overrides={"fusion.leaky_fields": "articleType"})
    with pytest.raises(ConfigError, match="transfer.method=scratch"):
        load_experiment(
            EXP / "finetune" / "meta_only.yaml", overrides={"transfer.method": "finetune"}, stage="finetune"
        )
    with pytest.raises(ConfigError, match="loss.name=ce"):
        load_experiment(EXP / "pretrain" / "meta_only.yaml", overrides={"loss.name": "focal"})
    with pytest.raises(ConfigError, match="text_ngrams"):
        load_experiment(None, overrides={"fusion.text_ngrams": 4})
    assert not load_experiment(EXP / "pretrain" / "fused_text.yaml").fusion.leaky
    assert load_experiment(
        EXP / "pretrain" / "fused_text.yaml", overrides={"fusion.leaky_fields": "subCategory"}
    ).fusion.leaky


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fused_shapes_on_every_backbone(backbone):
    torch.manual_seed(0)
    mcfg = ModelConfig(backbone=backbone, stem="imagenet", width_mult=0.25 if backbone.startswith("resnet") else 1.0)
    vocab = tiny_vocab()
    net = build_model(mcfg, 5)
    image_dim = net.embed_dim
    x, batch = torch.randn(4, 3, 32, 24), batch_for(vocab)
    for mode in ("late", "film"):  # both share the trunk: one slow first forward per backbone
        model = FusedNet(net, vocab, mode, 8, {"aux_master": ("a", "b"), "aux_sub": ("x", "y", "z")}).eval()
        with torch.no_grad():
            feats = model.forward_features(x, batch)
            out = model(x, batch)
        assert feats.shape == (4, model.embed_dim) == (4, image_dim), mode
        assert out["logits"].shape == (4, 5) and out["aux_master"].shape == (4, 2) and out["aux_sub"].shape == (4, 3)
        assert reads_metadata(model)
        with pytest.raises(ValueError, match="metadata"):
            model(x)
    # an image network, or one with auxiliary heads and no metadata encoder, serves on the photo alone
    assert not reads_metadata(net) and not reads_metadata(FusedNet(net, None, aux={"aux_master": ("a", "b")}))


def test_film_starts_as_the_image_model_and_metadata_changes_late_fusion():
    torch.manual_seed(0)
    mcfg = ModelConfig(width_mult=0.25, stem="imagenet")
    vocab = tiny_vocab()
    net = build_model(mcfg, 3).eval()
    x, batch = torch.randn(4, 3, 32, 24), batch_for(vocab)
    with torch.no_grad():
        image_only = net.forward_features(x)
        film = FusedNet(net, vocab, "film", 8).eval()
        assert torch.allclose(film.forward_features(x, batch), image_only, atol=1e-6)  # zero-initialised FiLM
        late = FusedNet(build_model(mcfg, 3), vocab, "late", 8).eval()
        other = {
            **batch,
            "meta_cat": batch["meta_cat"].roll(1, dims=0),
            "meta_text": batch["meta_text"].roll(1, dims=0),
        }
        assert not torch.allclose(late(x, batch)["logits"], late(x, other)["logits"])


def test_meta_dropout_only_in_training():
    model, vocab, x, batch = tiny_late(meta_dropout=0.999)
    model.eval()
    with torch.no_grad():
        a = model(x, batch)["logits"]
        model.meta_dropout = 0.0
        assert torch.equal(a, model(x, batch)["logits"])  # eval: dropout has no effect
        model.meta_dropout = 0.999
        model.train()
        model.backbone.eval()  # compare with batch statistics out of the way
        blind = model.fuse(model.backbone(x), torch.zeros(4, model.meta.out_dim))
        assert torch.allclose(model.forward_features(x, batch), blind)


def test_trainable_policies_and_param_groups():
    vocab = tiny_vocab()
    model = FusedNet(build_model(ModelConfig(width_mult=0.25), 3), vocab, "late", 8, {"aux_sub": ("x", "y")})
    model.set_trainable("head")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.metadata_parameters())  # the fused embedding is the fixed feature
    assert all(p.requires_grad for p in model.head.parameters()) and all(
        p.requires_grad for p in model.aux.parameters()
    )
    model.set_trainable("last_block")
    assert all(p.requires_grad for p in model.metadata_parameters())
    assert all(p.requires_grad for p in model.backbone.last_block().parameters())
    assert not model.backbone.conv1.weight.requires_grad
    model.set_trainable("all")
    model.embed_lr_mult = 10.0
    groups = {g["name"]: g for g in param_groups(model, 1.0, 0.1, 0.05)}
    assert groups["backbone"]["lr"] == pytest.approx(0.1)
    assert groups["metadata"]["lr"] == 1.0 and groups["head"]["lr"] == 1.0  # only the image trunk is slowed
    tables = groups["metadata_embeddings"]
    assert tables["lr"] == 10.0 and tables["weight_decay"] == 0.0
    assert {id(p) for p in tables["params"]} == {id(model.meta.text.weight)} | {id(e.weight) for e in model.meta.cat}
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == len(list(model.parameters()))


def test_model_json_round_trip():
    torch.manual_seed(0)
    vocab = tiny_vocab()
    mcfg = ModelConfig(width_mult=0.25, stem="imagenet")
    model = FusedNet(build_model(mcfg, 3), vocab, "film", 8, {"aux_master": ("a", "b")}).eval()
    meta = {"classes": ["c0", "c1", "c2"], **model_meta(model)}
    import json

    again = model_from_meta(mcfg, json.loads(json.dumps(meta)))
    again.load_state_dict(model.state_dict())
    again.eval()
    x, batch = torch.randn(2, 3, 32, 24), batch_for(vocab, 2)
    with torch.no_grad():
        assert torch.equal(model(x, batch)["aux_master"], again(x, batch)["aux_master"])
    assert again.vocab == vocab and model_meta(build_model(mcfg, 3)) == {}


# ---------------------------------------------------------------- auxiliary loss


def test_aux_loss_is_wired_and_weighted():
    torch.manual_seed(0)
    out = {
        "logits": torch.randn(6, 4, requires_grad=True),
        "aux_master": torch.randn(6, 2, requires_grad=True),
        "aux_sub": torch.randn(6, 3, requires_grad=True),
    }
    batch = {
        "label": torch.tensor([0, 1, 2, 3, 0, 1]),
        "aux_master": torch.tensor([0, 1, 1, 0, -1, 1]),
        "aux_sub": torch.tensor([2, 1, 0, 0, 1, -1]),
    }
    loss = Criterion(torch.nn.CrossEntropyLoss(), {"aux_master": 0.3, "aux_sub": 0.7})
    want = (
        F.cross_entropy(out["logits"], batch["label"])
        + 0.3
        * F.cross_entropy(out["aux_master"][batch["aux_master"] >= 0], batch["aux_master"][batch["aux_master"] >= 0])
        + 0.7 * F.cross_entropy(out["aux_sub"][batch["aux_sub"] >= 0], batch["aux_sub"][batch["aux_sub"] >= 0])
    )
    got = loss(out, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert out["aux_sub"].grad.abs().sum() > 0 and out["aux_sub"].grad[5].abs().sum() == 0  # -1 is ignored
    logits_only = {"logits": out["logits"]}  # as train.evaluate scores: the class loss alone
    assert loss(logits_only, batch).item() == pytest.approx(F.cross_entropy(out["logits"], batch["label"]).item())
    zero = Criterion(torch.nn.CrossEntropyLoss(), {"aux_master": 0.0, "aux_sub": 1.0})
    assert set(zero.aux_weights) == {"aux_sub"}
    counts = [5, 3, 2]
    plain = build_criterion(load_experiment(EXP / "pretrain" / "fused_text.yaml"), counts)
    assert plain.aux_weights == {}
    aux = build_criterion(load_experiment(EXP / "pretrain" / "fused_text_aux.yaml"), counts)
    assert aux.aux_weights == {"aux_master": 0.3, "aux_sub": 0.3}


def test_aux_gradient_reaches_the_shared_embedding():
    model, vocab, x, batch = tiny_late({"aux_master": ("Apparel", "Footwear")})
    batch.update(label=torch.tensor([0, 1, 2, 0]), aux_master=torch.tensor([1, 0, 1, 1]))
    out = model(x, batch)
    Criterion(torch.nn.CrossEntropyLoss(), {"aux_master": 1.0})(out, batch).backward()
    with_aux = [p.grad.clone() for p in model.fuse.parameters()]
    model.zero_grad()
    out = model(x, batch)
    Criterion(torch.nn.CrossEntropyLoss())(out, batch).backward()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(with_aux, model.fuse.parameters()))
    assert model.aux["aux_master"].weight.grad is None or model.aux["aux_master"].weight.grad.abs().sum() == 0


# ---------------------------------------------------------------- runs on generated data


def _tags(run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data.tags


def _artifacts(run_id, path=""):
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient().list_artifacts(run_id, path)}


@pytest.fixture(scope="module")
def fused_pretrain(dataset, isolated_module):
    from fashion_core.runners.stage import run_stage

    return run_stage(cfg("pretrain", "fused_text_aux"), str(dataset))


def test_fused_pretrain_logs_encoders_and_tags(fused_pretrain):
    from fashion_core.tracking.references import load_run_model

    tags = _tags(fused_pretrain)
    assert tags["leaky"] == "false" and tags["fusion"] == "late"
    assert tags["fusion_inputs"] == "gender,baseColour,usage,productDisplayName"
    assert tags["aux_heads"] == "aux_master,aux_sub"
    assert {"checkpoint/model.json", "checkpoint/model_state.pt"} <= _artifacts(fused_pretrain, "checkpoint")
    assert {"eval/per_class.csv", "eval/predictions.csv"} <= _artifacts(fused_pretrain, "eval")
    model, meta = load_run_model(fused_pretrain)
    assert isinstance(model, FusedNet) and model.vocab.text.buckets == 16384
    assert set(meta["fused"]["aux"]) == {"aux_master", "aux_sub"}
    assert "Blue" in meta["fused"]["vocab"]["categorical"]["baseColour"]


def test_vocabularies_come_from_the_train_split_only(tmp_path, monkeypatch):
    from fashion_core.data.prepared import prepare_data
    from fashion_core.fusion.plan import plan_stage
    from tests.helpers.data import make_dataset

    monkeypatch.setenv("FASHION_CACHE", str(tmp_path / "cache"))
    root = make_dataset(tmp_path / "mini", n_classes=4, per_class=(12, 12, 10, 10), odd_rows=False)
    with open(root / "styles.csv", "a") as f:  # a test-year (odd) product with values no training row has
        f.write("1900,Girls,Apparel,Dress,C0,Magenta,Spring,2013,Party,Tiny Girls Magenta Party Dress\n")
    (root / "images" / "1900.jpg").write_bytes((root / "images" / "1000.jpg").read_bytes())
    p = prepare_data(str(root), cfg("pretrain", "fused_text").data)
    _, plan = plan_stage(cfg("pretrain", "fused_text_aux"), p, None)
    cats = {v.field: v.values for v in plan.vocab.categorical}
    assert cats["baseColour"] == ("Blue",) and cats["usage"] == ("Casual", "NA") and "Girls" not in cats["gender"]
    assert plan.aux["aux_sub"] == ("Topwear",)
    rows = p.splits[p.splits["subset"] == "pretrain"].sort_values("id").reset_index(drop=True)
    extras = plan.extras(p, rows, ["C0", "C1", "C2", "C3"])
    new = int(np.flatnonzero(rows["id"].to_numpy() == 1900)[0])
    assert extras["meta_cat"][new].tolist() == [UNKNOWN] * 3  # unseen in training -> the unknown bucket
    assert extras["aux_sub"][new] == -1  # an auxiliary class the head does not have is ignored
    assert extras["meta_text"].shape == (len(rows), 32)


def test_finetune_carries_the_encoders_across(fused_pretrain, dataset):
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking.references import load_run_model

    source, src_meta = load_run_model(fused_pretrain)
    run_id = run_stage(
        cfg("finetune", "fused_text_aux", **{"transfer.method": "linear_probe"}),
        str(dataset),
        source=fused_pretrain,
    )
    tuned, meta = load_run_model(run_id)
    assert isinstance(tuned, FusedNet) and meta["fused"]["vocab"] == src_meta["fused"]["vocab"]
    src, dst = source.state_dict(), tuned.state_dict()
    carried = [k for k in src if k.startswith(("meta.", "fuse.", "backbone."))]
    assert any(k.startswith("meta.text") for k in carried)
    assert all(torch.equal(src[k], dst[k]) for k in carried)  # frozen under linear_probe: identical
    assert meta["classes"] == ["C4", "C5", "C6", "C7"] and set(meta["fused"]["aux"]) == {"aux_master", "aux_sub"}
    assert _tags(run_id)["fusion"] == "late" and _tags(run_id)["source_run_id"] == fused_pretrain


@pytest.mark.parametrize("technique", ["ncm", "imprint"])
def test_image_techniques_adopt_the_fused_source(fused_pretrain, dataset, technique):
    """ncm / imprint embed the training set through the fused embedding (which needs the batch)."""
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking.references import load_run_model

    run_id = run_stage(cfg("finetune", technique), str(dataset), source=fused_pretrain)
    tags = _tags(run_id)
    assert tags["fusion"] == "late" and tags["fusion_inputs"].endswith("productDisplayName")
    model, meta = load_run_model(run_id)
    assert isinstance(model, FusedNet) and meta["fusion"]["mode"] == "late" and meta["fused"]["aux"] == {}
    assert meta["head_kind"] == ("ncm" if technique == "ncm" else "cosine")


def test_fused_technique_needs_a_matching_source(fused_pretrain, dataset):
    from mlflow.tracking import MlflowClient

    from fashion_core.runners.stage import run_stage

    before = len(MlflowClient().search_runs([_experiment_id(fused_pretrain)]))
    with pytest.raises(ConfigError, match="fields"):
        run_stage(cfg("finetune", "fused"), str(dataset), source=fused_pretrain)
    assert len(MlflowClient().search_runs([_experiment_id(fused_pretrain)])) == before  # no run left behind


def _experiment_id(run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).info.experiment_id


def test_metadata_baseline_is_a_run_of_the_stage(fused_pretrain, dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from fashion_core.evaluation import metrics as M
    from fashion_core.fusion.metadata_only import class_scores, features
    from fashion_core.runners.metadata_only import load_metadata_baseline
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking.references import SourceError, resolve_source
    from fashion_core.tracking.runs import download_artifact

    run_id = run_stage(cfg("pretrain", "meta_only", **{"metadata.logreg_c": 1.0}), str(dataset))
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "pretrain" and run.data.tags["technique"] == "meta_only"
    assert run.data.tags["baseline"] == "metadata_only" and run.data.tags["leaky"] == "false"
    for m in ("test_top1_mean", "test_top5_mean", "test_top1_micro", "test_top5_micro", "val_top1_mean"):
        assert m in run.data.metrics
    assert {"eval/per_class.csv", "eval/predictions.csv", "eval/per_class_intervals.csv"} <= _artifacts(run_id, "eval")
    table = M.read_per_class(download_artifact(run_id, "eval/per_class.csv", tmp_path))
    preds = M.read_predictions(download_artifact(run_id, "eval/predictions.csv", tmp_path))
    assert list(table.columns) == ["class", "n_train", "n_val", "n_test", "top1", "top5"]
    again = M.per_class_from_predictions(preds, table["class"].tolist()).set_index("class")
    assert np.allclose(table.set_index("class")["top1"].fillna(-1), again.loc[table["class"], "top1"].fillna(-1))
    assert run.data.metrics["test_top1_mean"] == pytest.approx(M.summarize(table)["top1_mean"])
    # the names hold the class ("Brand Men C2 shirt 4"): the name alone gives the label here
    assert run.data.metrics["test_top1_mean"] == 1.0
    # the logged model predicts what the run reported
    clf, vocab, classes = load_metadata_baseline(run_id)
    from fashion_core.data.prepared import prepare_data
    from fashion_core.fusion.plan import stage_rows

    p = prepare_data(str(dataset), cfg("pretrain", "meta_only").data)
    test = preds.head(5)
    top1 = class_scores(clf, features(vocab, stage_rows(p, test["id"])), len(classes)).argmax(1)
    assert [classes[i] for i in top1] == test["pred1"].tolist()
    # no network to fine-tune: refused by --from, skipped by latest
    with pytest.raises(SourceError, match="metadata-only baseline"):
        resolve_source(run_id)
    assert resolve_source("latest") != run_id


def test_leaky_configs_are_tagged(fused_pretrain, dataset):
    from fashion_core.runners.stage import run_stage

    run_id = run_stage(
        cfg("finetune", "meta_only", **{"fusion.leaky_fields": "subCategory", "metadata.logreg_c": 1.0}),
        str(dataset),
    )
    tags = _tags(run_id)
    assert tags["leaky"] == "true" and "subCategory" in tags["fusion_inputs"].split(",")
    # a leaky pretrain run's leak goes wherever its encoders go: an image technique adopting them is leaky too
    from fashion_core.data.prepared import prepare_data
    from fashion_core.fusion.plan import plan_stage
    from fashion_core.tracking.references import load_run_model

    source = load_run_model(fused_pretrain)
    source[1]["fusion"]["leaky_fields"] = ["subCategory"]  # as a leaky pretrain run's model.json says
    source[1]["fused"]["vocab"]["categorical"]["subCategory"] = ["Topwear"]
    p = prepare_data(str(dataset), cfg("finetune", "ncm").data)
    adopted, plan = plan_stage(cfg("finetune", "ncm"), p, source)
    assert adopted.fusion.leaky and adopted.fusion.mode == "late" and plan.vocab is not None

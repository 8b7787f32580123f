"""Tests for fashion_core.models: every backbone x stem, heads, freezing, weight loading, param groups.

.venv/bin/python -m pytest tests/test_models.py -q
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fashion_core.config.checks import BACKBONES, STEMS, TRANSFER_METHODS, ConfigError
from fashion_core.config.schema import ModelConfig
from fashion_core.models.heads import CosineHead, LinearHead, NCMHead, class_means, imprint_weights
from fashion_core.models.network import TRAINABLE_POLICIES, FashionNet, build_model, param_groups, transfer_policy

NUM_CLASSES = 5


def tiny(backbone="resnet18", **kw) -> ModelConfig:
    """A fast config: resnets at quarter width, others at full width."""
    kw.setdefault("width_mult", 0.25 if backbone.startswith("resnet") else 1.0)
    return ModelConfig(backbone=backbone, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def images():
    return torch.randn(2, 3, 80, 60)


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_stem_builds(backbone, stem, images):
    model = build_model(tiny(backbone, stem=stem, dropout=0.1), NUM_CLASSES).eval()
    with torch.no_grad():
        feats = model.forward_features(images)
        out = model(images)
        logits = out["logits"]
    assert set(out) == {"logits"}  # the one calling convention: a dict, the logits under "logits"
    assert feats.shape == (2, model.embed_dim)
    assert logits.shape == (2, NUM_CLASSES) and model.num_classes == NUM_CLASSES
    assert torch.allclose(logits, model.forward_head(feats), atol=1e-5)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_stem_sets_downsampling(backbone, images):
    sizes = {}
    for stem in STEMS:
        model = build_model(tiny(backbone, stem=stem), NUM_CLASSES).eval()
        with torch.no_grad():
            sizes[stem] = model.backbone(images).shape[-2:]
    assert sizes["imagenet"] == (3, 2)  # 80x60 / 32
    assert sizes["s2"] == (5, 4)  # / 16
    assert sizes["s1"] == ((10, 8) if backbone == "resnet18" else (5, 4))


def test_width_mult_scales_resnet_channels():
    assert build_model(tiny("resnet18", width_mult=0.5), 3).embed_dim == 256
    assert build_model(tiny("resnet50", width_mult=0.25), 3).embed_dim == 512  # 128 * 4
    assert build_model(ModelConfig(width_mult=1.0), 3).embed_dim == 512


def test_width_mult_only_for_resnets():
    with pytest.raises(ConfigError, match="width_mult"):
        build_model(ModelConfig(backbone="mobilenet_v3_small", width_mult=0.5), 3)


def test_unknown_names_list_choices():
    with pytest.raises(ConfigError, match="efficientnet_b0"):
        build_model(ModelConfig(backbone="vgg16"), 3)
    with pytest.raises(ConfigError, match="s1"):
        build_model(ModelConfig(stem="s4", width_mult=0.25), 3)
    with pytest.raises(ConfigError, match="cosine"):
        build_model(ModelConfig(head="mlp", width_mult=0.25), 3)


def test_scratch_resnet_zero_inits_last_bn():
    model = build_model(tiny("resnet18"), 3)
    assert all(torch.all(b.bn2.weight == 0) for b in model.backbone.modules() if hasattr(b, "bn2"))
    assert torch.all(model.backbone.bn1.weight == 1)


def test_channels_last(images):
    model = build_model(tiny("resnet18"), 3).eval()
    with torch.no_grad():
        ref = model(images)["logits"]
        model = model.to(memory_format=torch.channels_last)
        out = model(images.to(memory_format=torch.channels_last))["logits"]
    assert torch.allclose(ref, out, atol=1e-4)


def test_an_image_network_takes_the_batch_and_ignores_it(images):
    model = build_model(tiny("resnet18"), 3).eval()
    batch = {"label": torch.tensor([0, 1]), "meta_cat": torch.zeros(2, 3, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(model(images, batch)["logits"], model(images)["logits"])
        assert torch.equal(model.forward_features(images, batch), model.forward_features(images))


def test_reset_head_keeps_backbone(images):
    model = build_model(tiny("resnet18", head="linear"), NUM_CLASSES).eval()  # eval: BN stats stay put
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.reset_head(9, kind="cosine")
    assert isinstance(model.head, CosineHead) and model.head_kind == "cosine"
    assert model(images)["logits"].shape == (2, 9) and model.num_classes == 9
    model.reset_head(4)
    assert isinstance(model.head, LinearHead) and model(images)["logits"].shape == (2, 4)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    with pytest.raises(ConfigError, match="set_head"):
        model.reset_head(4, kind="ncm")


def test_reset_head_follows_dtype():
    model = build_model(tiny("resnet18"), 3).to(torch.float64)
    model.reset_head(6, kind="cosine")
    assert model.head.weight.dtype == torch.float64


def test_cosine_head_bounded_by_scale():
    head = CosineHead(16, 7)
    logits = head(torch.randn(50, 16) * 100)
    assert head.scale.item() == 16.0 and head.scale.requires_grad
    assert logits.abs().max() <= head.scale + 1e-4
    aligned = head(head.weight[:1].detach() * 3)  # a feature along w_0 has cosine 1 with it
    assert aligned[0, 0].item() == pytest.approx(16.0, rel=1e-5)


def test_imprint_unit_rows_equal_normalised_means():
    model = build_model(tiny("resnet18", head="linear"), 2)
    feats = torch.randn(12, model.embed_dim)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])  # class 3 has no examples
    w = imprint_weights(model, feats, labels, num_classes=4)
    assert isinstance(model.head, CosineHead) and model.num_classes == 4
    assert torch.allclose(w.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(w, model.head.weight.detach())
    unit = F.normalize(feats, dim=1)
    for c in range(3):
        assert torch.allclose(w[c], F.normalize(unit[labels == c].mean(0), dim=0), atol=1e-5)
    # an example's own class now gets the highest cosine on these separable means
    with torch.no_grad():
        assert model.forward_head(w[:3] * 5).argmax(1).tolist() == [0, 1, 2]


def test_class_means_and_ncm_predicts_nearest_mean():
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    means = class_means(feats, torch.tensor([0, 0, 2, 2]), num_classes=3)
    assert torch.allclose(means[0], torch.tensor([1.0, 0.0])) and torch.isnan(means[1]).all()
    head = NCMHead(means)
    queries = torch.tensor([[1.5, 0.5], [9.0, 9.0], [-3.0, 1.0]])
    logits = head(queries)
    assert logits.argmax(1).tolist() == [0, 2, 0]  # class 1 (no examples) is never predicted
    assert torch.allclose(logits[0, 0], -((queries[0] - means[0]) ** 2).sum())
    assert torch.isfinite(logits).all() and list(head.parameters()) == []


def test_set_head_ncm(images):
    model = build_model(tiny("resnet18"), 3).eval()
    with torch.no_grad():
        feats = model.forward_features(images)
        model.set_head(NCMHead.from_features(feats, torch.tensor([0, 1]), 2, normalize=True))
        assert model.head_kind == "ncm" and model(images)["logits"].argmax(1).tolist() == [0, 1]
    assert list(model.head_parameters()) == []


def _bn_stats(module):
    return [b.running_mean.clone() for b in module.modules() if isinstance(b, nn.BatchNorm2d)]


def test_set_trainable_head_freezes_backbone_and_bn(images):
    model = build_model(tiny("resnet18"), NUM_CLASSES)
    model.set_trainable("head")
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.head_parameters())
    model.train()
    before = _bn_stats(model.backbone)
    model(images)["logits"].sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(model.backbone)))
    assert model.head.weight.grad is not None
    model.set_trainable("all")
    assert all(p.requires_grad for p in model.parameters()) and model.backbone.bn1.training


def test_set_trainable_last_block(images):
    model = build_model(tiny("resnet18"), NUM_CLASSES)
    model.set_trainable("last_block")
    model.train()
    assert all(p.requires_grad for p in model.backbone.layer4.parameters())
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if not n.startswith("layer4"))
    assert not model.backbone.layer3[0].bn1.training and model.backbone.layer4[0].bn1.training
    frozen_before = _bn_stats(model.backbone.layer3)
    model(images)
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, _bn_stats(model.backbone.layer3)))
    with pytest.raises(ConfigError, match="last_block"):
        model.set_trainable("some")


def test_set_trainable_last_block_torchvision_trunk():
    model = build_model(tiny("mobilenet_v3_small"), NUM_CLASSES)
    model.set_trainable("last_block")
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone")}
    assert trainable == {str(len(model.backbone.features) - 2), str(len(model.backbone.features) - 1)}


def test_init_from_torchvision_state_dict(tmp_path):
    path = tmp_path / "resnet18.pt"
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), path)
    model = build_model(ModelConfig(backbone="resnet18", stem="s2", init=str(path)), 4)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.weight, reference.layer4[1].bn2.weight)
    skipped = " ".join(model.init_report["skipped"])
    assert "fc.weight" in skipped and "conv1.weight (shape" in skipped  # classifier and the s2 stem
    assert model.init_report["missing"] == ["backbone.conv1.weight"]


def test_init_from_fashionnet_state_dict(tmp_path):
    source = build_model(tiny("resnet18", head="cosine"), 20)
    path = tmp_path / "fashionnet.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # a training checkpoint dict
    model = build_model(tiny("resnet18", init=str(path)), 7)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in source.backbone.state_dict().items())
    assert model.num_classes == 7 and model.init_report["missing"] == []


def test_init_with_wrong_backbone_fails(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(build_model(tiny("mobilenet_v3_small"), 3).state_dict(), path)
    with pytest.raises(ConfigError, match="none of its"):
        build_model(tiny("resnet18", init=str(path)), 3)


def test_init_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        build_model(tiny("resnet18", init="/nonexistent/weights.pt"), 3)


def test_init_imagenet(monkeypatch):
    state = torchvision.models.mobilenet_v3_small().state_dict()
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    model = build_model(ModelConfig(backbone="mobilenet_v3_small", stem="s1", init="imagenet"), 3)
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])
    with pytest.raises(ConfigError, match="width_mult=1.0"):
        build_model(ModelConfig(backbone="resnet18", width_mult=0.5, init="imagenet"), 3)


def test_init_imagenet_offline_is_a_clear_error(monkeypatch):
    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ConfigError, match="model.init=/path/to/state_dict.pt"):
        build_model(ModelConfig(backbone="resnet18", init="imagenet"), 3)


def test_transfer_policy_table():
    for method in TRANSFER_METHODS:
        p = transfer_policy(method)
        assert p.trainable in TRAINABLE_POLICIES and (p.train or not p.lr_mult)
    assert transfer_policy("linear_probe").trainable == "head"
    assert transfer_policy("scratch").pretrained is False
    assert transfer_policy("imprint").imprint and not transfer_policy("imprint").train
    assert transfer_policy("ncm").head == "ncm"
    with pytest.raises(dataclasses.FrozenInstanceError):  # the table cannot be changed through a policy
        transfer_policy("finetune").train = False  # type: ignore[misc]
    assert transfer_policy("finetune").train is True
    with pytest.raises(ConfigError, match="imprint_finetune"):
        transfer_policy("zero_shot")


def test_param_groups():
    model = build_model(tiny("resnet18", head="cosine"), NUM_CLASSES)
    groups = {g["name"]: g for g in param_groups(model, lr=0.1, backbone_lr_mult=0.01, weight_decay=0.05)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == 0.1
    assert groups["backbone"]["weight_decay"] == 0.05 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for g in ("backbone_no_decay", "head_no_decay") for p in groups[g]["params"])
    assert any(p is model.head.scale for p in groups["head_no_decay"]["params"])
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(model.parameters()))
    torch.optim.AdamW(list(groups.values()))  # the groups are valid optimizer input

    model.set_trainable("head")
    names = [g["name"] for g in param_groups(model, lr=0.1, backbone_lr_mult=0.1, weight_decay=0.05)]
    assert names == ["head", "head_no_decay"]


def test_fashionnet_interface():
    model = build_model(tiny("resnet18"), 3)
    assert isinstance(model, FashionNet)
    assert len(list(model.backbone_parameters())) + len(list(model.head_parameters())) == len(list(model.parameters()))

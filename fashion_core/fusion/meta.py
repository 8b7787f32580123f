"""The ``model.json`` round trip of a fused model: what rebuilds a ``FusedNet`` from its logged state."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from fashion_core.config.schema import ModelConfig
from fashion_core.fusion.encoders import MetaVocab
from fashion_core.fusion.modules import FusedNet
from fashion_core.models.network import FashionNet, build_model

# ---------------------------------------------------------------- model.json round trip


def model_meta(model: nn.Module) -> dict:
    """What ``model.json`` needs to rebuild a FusedNet (``{}`` for a plain FashionNet)."""
    if not isinstance(model, FusedNet):
        return {}
    return {
        "fused": {
            "mode": model.mode,
            "embed_dim": model.meta_embed_dim,
            "vocab": model.vocab.to_dict() if model.vocab is not None else None,
            "aux": {k: list(v) for k, v in model.aux_classes.items()},
        }
    }


def model_from_meta(model_cfg: ModelConfig, meta: Mapping) -> FashionNet:
    """The (untrained) model a ``model.json`` describes: a FusedNet when it has a ``fused`` entry."""
    net = build_model(model_cfg, len(meta["classes"]))
    fused = meta.get("fused")
    if not fused:
        return net
    vocab = MetaVocab.from_dict(fused["vocab"]) if fused.get("vocab") else None
    return FusedNet(
        net, vocab, fused["mode"], int(fused["embed_dim"]), {k: tuple(v) for k, v in fused.get("aux", {}).items()}
    )

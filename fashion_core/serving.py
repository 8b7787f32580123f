"""Serving and prediction: a logged model takes uint8 images, gives class probabilities.

    fashion predict path/to/1163.jpg --model models:/fashion-pretrain@best
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data.loader import to_float


class ServingModel(nn.Module):
    """uint8 N x H x W x 3 images -> softmax probabilities (N, C); ``classes`` in index order."""

    def __init__(self, model: nn.Module, classes: list[str]):
        super().__init__()
        self.model = model
        self.classes = list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images.to(torch.uint8))
        out = self.model(x)
        logits = out["logits"] if isinstance(out, dict) else out
        return torch.softmax(logits.float(), dim=1)


def predict_images(paths: list[str | Path], model_uri: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each image file, from a logged or registered model.

    The model is rebuilt from its state dict (``torch.load(weights_only=True)``), never unpickled.
    """
    from .data.cache import decode_image
    from .experiment import load_run_model, resolve_model_uri

    run_id = resolve_model_uri(model_uri)
    model, meta = load_run_model(run_id)
    if getattr(model, "uses_batch", False):
        from .config import ConfigError

        raise ConfigError(f"{model_uri} fuses product metadata; predict takes images only")
    h, w = meta["height"], meta["width"]
    images = np.stack([decode_image(str(p), h, w) for p in paths])
    serving = ServingModel(model.eval(), meta["classes"])
    with torch.no_grad():
        probs = serving(torch.from_numpy(images)).numpy()
    out = []
    for row in probs:
        idx = np.argsort(-row)[:k]
        out.append([(meta["classes"][i], float(row[i])) for i in idx])
    return out

"""A toy classification task that N processes must reproduce exactly: noisy tinted images and a linear net."""

from __future__ import annotations

import torch
import torch.nn as nn

from fashion_core.data.loader import TensorData


def toy_data(n: int, seed: int) -> TensorData:
    """Noisy images whose class tints one channel: learnable, but over several epochs (no instant zero loss)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randint(0, 200, (n, 8, 6, 3), generator=g, dtype=torch.int64)
    images[torch.arange(n), :, :, labels] += 20
    return TensorData(images.to(torch.uint8), labels, {})


class TinyNet(nn.Module):
    """No BatchNorm, so N processes must reproduce one process exactly; called as every network is (``{"logits"}``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8 * 6 * 3, 3)

    def forward(self, x, batch=None):
        return {"logits": self.fc(x.flatten(1))}

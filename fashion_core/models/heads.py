"""Classifier heads: embedding (B, D) -> logits (B, C).

- ``LinearHead``: a plain linear layer.
- ``CosineHead``: scaled cosine similarity to one weight vector per class (Gidaris & Komodakis
  2018); with ``imprint_weights`` a new class's weight is its normalised mean embedding
  (Qi et al., CVPR 2018), which works from a handful of examples.
- ``NCMHead``: nearest class mean, no trainable parameters; install it with
  ``model.set_head(NCMHead.from_features(feats, labels, num_classes))``.

    .venv/bin/python -c "import torch; from fashion_core.models.heads import CosineHead; print(CosineHead(8, 3)(torch.randn(2, 8)))"
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_core.config.checks import HEADS, ConfigError


class LinearHead(nn.Linear):
    """A linear classifier; keys ``weight`` and ``bias``."""

    kind = "linear"

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__(embed_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.out_features


class CosineHead(nn.Module):
    """logits = scale * cos(f, w_c), so every logit lies in [-scale, scale].

    Args:
        embed_dim: embedding size D.
        num_classes: number of classes C.
        scale: initial value of the learnable temperature; cosines alone are too flat for softmax.
    """

    kind = "cosine"

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) / embed_dim**0.5)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, feats: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(feats, dim=1), F.normalize(self.weight, dim=1))


class NCMHead(nn.Module):
    """Nearest class mean: logits = -||f - m_c||^2; the means are buffers, nothing trains.

    A class whose mean is not finite (no examples, see ``class_means``) is never predicted:
    its logit is a very negative finite number, so softmax and cross-entropy stay NaN-free.

    Args:
        means: (C, D) class means; rows with NaN mark classes without examples.
        normalize: L2-normalise the incoming features first; build the means from normalised
            features too (``from_features`` does), as SimpleShot's CL2N does.
    """

    kind = "ncm"
    means: Tensor
    present: Tensor

    def __init__(self, means: Tensor, normalize: bool = False):
        super().__init__()
        means = means.detach().float()
        present = torch.isfinite(means).all(dim=1)
        self.register_buffer("means", torch.where(present[:, None], means, torch.zeros_like(means)))
        self.register_buffer("present", present)
        self.normalize = normalize

    @classmethod
    def from_features(cls, feats: Tensor, labels: Tensor, num_classes: int, normalize: bool = False) -> NCMHead:
        """An NCM head from embeddings (N, D) and labels (N,).

        Args:
            feats: embeddings, e.g. ``model.forward_features(x)`` over the training set.
            labels: class indices in [0, num_classes).
            num_classes: C; classes without examples are never predicted.
            normalize: see the class docstring.

        Returns:
            The head; install it with ``model.set_head(head)``.
        """
        feats = F.normalize(feats.float(), dim=1) if normalize else feats
        return cls(class_means(feats, labels, num_classes), normalize=normalize)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    def forward(self, feats: Tensor) -> Tensor:
        # float32 outside autocast: the expanded distance cancels badly in bf16
        with torch.autocast(device_type=feats.device.type, enabled=False):
            f = feats.float()
            if self.normalize:
                f = F.normalize(f, dim=1)
            m = self.means.float()
            d2 = (f * f).sum(1, keepdim=True) - 2.0 * f @ m.T + (m * m).sum(1)[None, :]
            logits = -d2.clamp_min(0.0)
            return logits.masked_fill(~self.present[None, :], torch.finfo(logits.dtype).min / 2)


def make_head(kind: str, embed_dim: int, num_classes: int) -> nn.Module:
    """A fresh trainable head by name ("linear" | "cosine").

    Args:
        kind: one of ``config.HEADS``.
        embed_dim: input size D.
        num_classes: output size C.

    Returns:
        The head module, with ``kind`` and ``num_classes`` attributes.
    """
    if kind == "linear":
        return LinearHead(embed_dim, num_classes)
    if kind == "cosine":
        return CosineHead(embed_dim, num_classes)
    raise ConfigError(
        f"unknown head {kind!r}; choose one of: {', '.join(HEADS)} "
        "(a nearest-class-mean head is installed with model.set_head(NCMHead.from_features(...)))"
    )


def class_means(feats: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean embedding per class.

    Args:
        feats: (N, D) embeddings.
        labels: (N,) class indices in [0, num_classes).
        num_classes: C.

    Returns:
        (C, D) float32 means; a class with no examples gets a row of NaN (0 / 0), which
        ``NCMHead`` treats as "never predict" and ``imprint_weights`` replaces.
    """
    labels = labels.long().to(feats.device)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    feats = feats.detach().float()
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).float()
    return sums / counts[:, None]


class _HasHead(Protocol):
    """What ``imprint_weights`` needs of a model: a ``head`` and ``reset_head``, as a FashionNet has."""

    head: nn.Module

    def reset_head(self, num_classes: int, kind: str = "linear") -> None: ...


@torch.no_grad()
def imprint_weights(
    model: _HasHead, feats: Tensor, labels: Tensor, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """Imprint a cosine head: each class weight = normalised mean of its normalised embeddings.

    Following Qi et al. (2018), embeddings are L2-normalised before averaging so every example
    counts equally; a class with no examples gets a random unit vector. If ``model.head`` is not
    a cosine head with ``num_classes`` outputs, a new one is installed with ``model.reset_head``.

    Args:
        model: a FashionNet (anything with ``head`` and ``reset_head``).
        feats: (N, D) embeddings from ``model.forward_features``.
        labels: (N,) class indices.
        num_classes: C.
        generator: for the random vectors of empty classes.

    Returns:
        The (C, D) unit-norm weight matrix now in the head.
    """
    head = model.head
    if not (isinstance(head, CosineHead) and head.num_classes == num_classes):
        model.reset_head(num_classes, kind="cosine")
        head = cast(CosineHead, model.head)  # reset_head(kind="cosine") installs a CosineHead
    means = class_means(F.normalize(feats.float(), dim=1), labels, num_classes)
    empty = ~torch.isfinite(means).all(dim=1)
    if empty.any():
        rand = torch.randn(int(empty.sum()), means.shape[1], generator=generator)
        means[empty] = rand.to(means.device)
    weight = F.normalize(means, dim=1)
    head.weight.copy_(weight.to(head.weight))
    return weight.to(head.weight)

"""Losses by name: cross-entropy, focal with per-class alpha, logit-adjusted; class-weight schemes.

Every loss is an ``nn.Module`` with ``forward(logits, target)`` returning a scalar, computes in
float32 (safe under bf16 autocast), and exposes ``.class_weight`` (C,) for logging. Class weights
reduce like ``F.cross_entropy(weight=...)``: sum(w_y * loss) / sum(w_y), so focal loss with
gamma 0 *is* weighted cross-entropy. ``Criterion`` is what training calls: a network's output
(``{"logits", <auxiliary heads>}``) and its batch -> the class loss plus each weighted auxiliary
head's cross-entropy; ``build_criterion`` builds it from a stage's config.

    .venv/bin/python -c "from fashion_core.losses import class_weights; print(class_weights([1, 4, 100, 0], 'effective_number'))"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_core.config.checks import LOSS_NAMES, WEIGHT_SCHEMES, ConfigError
from fashion_core.config.schema import ExperimentConfig, LossConfig

# log of the prior used for a class with no training examples: very unlikely, but finite
# (exp(-27.6) ~ 1e-12), so the adjusted logits never hold -inf and nothing turns NaN.
_LOG_PRIOR_FLOOR = 1e-12


def class_weights(counts: Sequence[int] | Tensor, scheme: str, beta: float = 0.999) -> Tensor:
    """Per-class loss weights from training counts.

    Args:
        counts: (C,) training examples per class.
        scheme: "none" (all 1), "inverse" (1/n), "inverse_sqrt" (1/sqrt(n)) or
            "effective_number" ((1 - beta) / (1 - beta^n), Cui et al. 2019).
        beta: effective_number only, in (0, 1).

    Returns:
        (C,) float32 weights with mean 1 over the classes that have examples; a class with
        n == 0 gets 0 (except under "none", where every weight is 1).
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ConfigError(f"unknown class-weight scheme {scheme!r}; choose one of: {', '.join(WEIGHT_SCHEMES)}")
    n = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if (n < 0).any():
        raise ValueError(f"class counts must be >= 0, got {n.tolist()}")
    if scheme == "none":
        return torch.ones(n.numel(), dtype=torch.float32)
    present = n > 0
    if not present.any():
        raise ValueError("class weights need at least one class with examples; all counts are 0")
    safe = n.clamp_min(1.0)  # keeps n == 0 away from 1/0; those classes are zeroed below
    if scheme == "inverse":
        w = 1.0 / safe
    elif scheme == "inverse_sqrt":
        w = safe.rsqrt()
    else:
        if not 0.0 < beta < 1.0:
            raise ConfigError(f"loss.beta must be in (0, 1), got {beta}")
        w = (1.0 - beta) / (1.0 - beta**safe)
    w = torch.where(present, w, torch.zeros_like(w))
    return (w / w[present].mean()).float()


def _as_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    """A float32 tensor, or None."""
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32).detach().clone()


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` computed in float32, with ``.class_weight`` for logging."""

    @property
    def class_weight(self) -> Tensor | None:
        return self.weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return super().forward(logits.float(), target)


class FocalLoss(nn.Module):
    """Focal loss, -alpha_y (1 - p_y)^gamma log p_y (Lin et al. 2017), with a per-class alpha.

    With label smoothing the target is q = (1 - eps) onehot(y) + eps / C and the loss of one
    example is sum_c q_c alpha_c (1 - p_c)^gamma (-log p_c); the batch loss is the sum over
    examples divided by sum(alpha_y). With gamma = 0 this is exactly
    ``F.cross_entropy(logits, y, weight=alpha, label_smoothing=eps)``.

    Args:
        gamma: focusing parameter; 0 = cross-entropy, 2 is the usual start.
        alpha: (C,) per-class weights (e.g. ``class_weights(...)``), or None for all 1.
        label_smoothing: eps in [0, 1).
        reduction: "mean" (weighted, as above), "sum" or "none" (per example, weighted, not normalised).
    """

    alpha: Tensor | None  # a buffer (register_buffer), None for all 1

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Tensor | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"unknown reduction {reduction!r}; choose one of: mean, sum, none")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.register_buffer("alpha", _as_weight(alpha))

    @property
    def class_weight(self) -> Tensor | None:
        return self.alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logp = F.log_softmax(logits.float(), dim=1)
            target = target.long()
            num_classes = logp.shape[1]
            alpha = self.alpha if self.alpha is not None else logp.new_ones(num_classes)
            if self.label_smoothing > 0:
                q = torch.full_like(logp, self.label_smoothing / num_classes)
                q.scatter_add_(1, target[:, None], q.new_full((len(target), 1), 1.0 - self.label_smoothing))
                per_class = q * alpha[None, :] * self._modulate(logp) * -logp
                loss = per_class.sum(dim=1)
            else:
                logp_y = logp.gather(1, target[:, None])
                loss = (alpha[target, None] * self._modulate(logp_y) * -logp_y).squeeze(1)
            if self.reduction == "none":
                return loss
            if self.reduction == "sum":
                return loss.sum()
            return loss.sum() / alpha[target].sum()

    def _modulate(self, logp: Tensor) -> Tensor | float:
        """(1 - p)^gamma, from log p; 1.0 when gamma == 0 so that case matches CE exactly."""
        if self.gamma == 0:
            return 1.0
        # -expm1(log p) is 1 - p without cancellation; the floor keeps the gradient of
        # x^gamma (gamma < 1) finite when p rounds to 1
        return (-torch.expm1(logp)).clamp_min(1e-12).pow(self.gamma)


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE on logits + tau * log(prior).

    Training against the prior-shifted logits makes the raw logits balanced, so prediction
    uses them unchanged. A class with prior 0 gets log(1e-12) instead of -inf.

    Args:
        prior: (C,) class frequencies (they are renormalised to sum to 1).
        tau: strength of the adjustment; 1 is the paper's default.
        weight: optional (C,) class weights, reduced as in ``F.cross_entropy``.
        label_smoothing: eps in [0, 1).
    """

    log_prior: Tensor  # buffers (register_buffer)
    weight: Tensor | None

    def __init__(
        self,
        prior: Tensor | Sequence[float],
        tau: float = 1.0,
        weight: Tensor | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        prior = torch.as_tensor(prior, dtype=torch.float64).flatten()
        if (prior < 0).any() or prior.sum() <= 0:
            raise ValueError(f"prior must be >= 0 with a positive sum, got {prior.tolist()}")
        prior = prior / prior.sum()
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("log_prior", prior.clamp_min(_LOG_PRIOR_FLOOR).log().float())
        self.register_buffer("weight", _as_weight(weight))

    @property
    def class_weight(self) -> Tensor | None:
        return self.weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            adjusted = logits.float() + self.tau * self.log_prior
            return F.cross_entropy(adjusted, target.long(), weight=self.weight, label_smoothing=self.label_smoothing)


def build_loss(cfg: LossConfig, class_counts: Sequence[int] | np.ndarray | Tensor) -> nn.Module:
    """The training loss named by ``cfg.name``, weighted from the stage's training counts.

    Args:
        cfg: name ("ce" | "focal" | "logit_adjusted"), weights (scheme), beta, gamma,
            label_smoothing, tau.
        class_counts: (C,) training examples per class.

    Returns:
        A module with ``forward(logits, target) -> scalar`` and ``.class_weight`` (C,) float32
        (all ones under the "none" scheme, which then equals the unweighted loss).
    """
    if cfg.name not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {cfg.name!r}; choose one of: {', '.join(LOSS_NAMES)}")
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    weight = class_weights(counts, cfg.weights, cfg.beta)
    if cfg.name == "ce":
        return CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    if cfg.name == "focal":
        return FocalLoss(cfg.gamma, alpha=weight, label_smoothing=cfg.label_smoothing)
    return LogitAdjustedLoss(counts, tau=cfg.tau, weight=weight, label_smoothing=cfg.label_smoothing)


class Criterion(nn.Module):
    """A network's output and its batch -> the training loss: ``(output, batch) -> scalar``.

    The class loss of ``output["logits"]`` against ``batch["label"]``, plus ``weight * cross-entropy`` of
    each weighted auxiliary head whose key is in both the output and the batch (targets of -1 are
    ignored; a batch with none left adds nothing). An output without the auxiliary keys (the logits
    alone, as ``train.evaluate`` scores) gives the class loss alone.

    Args:
        loss: the class loss ``loss(logits, target)`` (``build_loss``); kept as ``.loss``.
        aux_weights: output key ("aux_master" / "aux_sub") -> loss weight; weights of 0 are left out.
    """

    def __init__(self, loss: nn.Module, aux_weights: Mapping[str, float] | None = None):
        super().__init__()
        self.loss = loss
        self.aux_weights = {k: float(w) for k, w in (aux_weights or {}).items() if w > 0}

    def forward(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor:
        total = self.loss(out["logits"].float(), batch["label"])
        for key, w in self.aux_weights.items():
            if key in out and key in batch and bool((batch[key] >= 0).any()):
                total = total + w * F.cross_entropy(out[key].float(), batch[key], ignore_index=-1)
        return total


def build_criterion(cfg: ExperimentConfig, class_counts: Sequence[int] | np.ndarray | Tensor) -> Criterion:
    """A stage's criterion: ``build_loss(cfg.loss, class_counts)`` and the auxiliary heads' weights of ``cfg.fusion``."""
    aux = {"aux_master": cfg.fusion.aux_master, "aux_sub": cfg.fusion.aux_sub}
    return Criterion(build_loss(cfg.loss, class_counts), aux)

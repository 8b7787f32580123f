"""Tests for fashion_core.losses: weight schemes by hand, focal == weighted CE at gamma 0, logit adjustment.

.venv/bin/python -m pytest tests/test_losses.py -q
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fashion_core.config.checks import LOSS_NAMES, WEIGHT_SCHEMES, ConfigError
from fashion_core.config.schema import LossConfig
from fashion_core.losses import CrossEntropyLoss, FocalLoss, LogitAdjustedLoss, build_loss, class_weights

COUNTS = [1, 4, 100, 0]


def _normalised(raw):
    """Hand normalisation: mean 1 over the first three (present) classes, 0 for the empty one."""
    m = sum(raw) / len(raw)
    return [r / m for r in raw] + [0.0]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=g) * 3
    target = torch.randint(0, 3, (32,), generator=g)  # class 3 has no training examples
    return logits, target


@pytest.mark.parametrize(
    "scheme, expected",
    [
        ("none", [1.0, 1.0, 1.0, 1.0]),
        ("inverse", _normalised([1 / 1, 1 / 4, 1 / 100])),
        ("inverse_sqrt", _normalised([1 / 1, 1 / 2, 1 / 10])),
        ("effective_number", _normalised([(1 - 0.9) / (1 - 0.9**n) for n in (1, 4, 100)])),
    ],
)
def test_class_weights_by_hand(scheme, expected):
    w = class_weights(COUNTS, scheme, beta=0.9)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)
    # a class without training examples gets weight 0 from every scheme that weighs; the others average 1
    assert w[3] == (1.0 if scheme == "none" else 0.0)
    assert math.isclose(w[:3].mean().item(), 1.0, rel_tol=1e-6)


def test_effective_number_default_beta_and_tensor_counts():
    w = class_weights(torch.tensor(COUNTS), "effective_number")
    raw = [(1 - 0.999) / (1 - 0.999**n) for n in (1, 4, 100)]
    assert torch.allclose(w, torch.tensor(_normalised(raw)), atol=1e-6)


def test_unknown_scheme_lists_choices():
    with pytest.raises(ConfigError, match="inverse_sqrt"):
        class_weights(COUNTS, "balanced")


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_focal_gamma0_equals_weighted_ce(batch, scheme, eps):
    logits, target = batch
    w = class_weights(COUNTS, scheme)
    focal = FocalLoss(gamma=0.0, alpha=w, label_smoothing=eps)(logits, target)
    ce = F.cross_entropy(logits, target, weight=w, label_smoothing=eps)
    assert torch.allclose(focal, ce, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_focal_gamma0_without_alpha_equals_ce(batch, eps):
    logits, target = batch
    assert torch.allclose(
        FocalLoss(0.0, label_smoothing=eps)(logits, target),
        F.cross_entropy(logits, target, label_smoothing=eps),
        atol=1e-6,
    )


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_with_label_smoothing_follows_gamma(batch, gamma):
    """With smoothing the loss is sum_c q_c alpha_c (1 - p_c)^gamma (-log p_c) / sum alpha_y, gamma included."""
    logits, target = batch
    w = class_weights(COUNTS, "inverse")
    eps = 0.1
    logp = F.log_softmax(logits.float(), dim=1)
    q = torch.full_like(logp, eps / logp.shape[1])
    q[torch.arange(len(target)), target] += 1 - eps
    expected = (q * w[None, :] * (1 - logp.exp()).pow(gamma) * -logp).sum() / w[target].sum()
    got = FocalLoss(gamma=gamma, alpha=w, label_smoothing=eps)(logits, target)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, FocalLoss(gamma=0.0, alpha=w, label_smoothing=eps)(logits, target), atol=1e-4)


def test_focal_downweights_easy_examples():
    easy = torch.tensor([[4.0, 0.0, 0.0]])  # p_y ~ 0.96
    hard = torch.tensor([[0.0, 0.5, 0.0]])  # p_y ~ 0.27
    y = torch.tensor([0])
    ratio = lambda x: (FocalLoss(2.0)(x, y) / F.cross_entropy(x, y)).item()  # noqa: E731
    p_easy, p_hard = F.softmax(easy, 1)[0, 0].item(), F.softmax(hard, 1)[0, 0].item()
    assert ratio(easy) == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert ratio(hard) == pytest.approx((1 - p_hard) ** 2, rel=1e-5)
    assert ratio(easy) < 0.01 < ratio(hard)


def test_focal_by_hand_with_alpha():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    y = torch.tensor([1, 2])
    alpha = torch.tensor([0.5, 2.0, 3.0])
    p = F.softmax(logits, 1)[torch.arange(2), y]
    per = -alpha[y] * (1 - p) ** 1.5 * p.log()
    got = FocalLoss(1.5, alpha=alpha)(logits, y)
    assert torch.allclose(got, per.sum() / alpha[y].sum(), atol=1e-6)
    assert torch.allclose(FocalLoss(1.5, alpha=alpha, reduction="none")(logits, y), per, atol=1e-6)


def test_focal_alpha_uses_every_class_weight():
    """Regression: the original applied alpha through (target != 0), so only two weights mattered."""
    logits = torch.zeros(1, 4)  # same per-example loss whatever the class
    base = FocalLoss(2.0, reduction="none")(logits, torch.tensor([0])).item()
    alpha = torch.tensor([1.0, 2.0, 3.0, 4.0])
    focal = FocalLoss(2.0, alpha=alpha, reduction="none")
    got = [focal(logits, torch.tensor([c])).item() for c in range(4)]
    assert got == pytest.approx([base * a for a in alpha.tolist()], rel=1e-6)


def test_focal_is_stable_and_float32_under_bf16_autocast():
    logits = torch.tensor([[80.0, -80.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    loss = FocalLoss(0.5, alpha=torch.tensor([1.0, 2.0, 1.0]))(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(8, 5).to(torch.bfloat16)
        t = torch.randint(0, 5, (8,))
        out = FocalLoss(2.0)(x, t)
    assert out.dtype == torch.float32
    assert torch.allclose(out, FocalLoss(2.0)(x.float(), t))


def test_logit_adjusted_by_hand():
    counts = torch.tensor([10.0, 30.0, 60.0])
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]])
    y = torch.tensor([0, 2])
    tau = 1.5
    loss = LogitAdjustedLoss(counts, tau=tau)(logits, y)
    adjusted = logits + tau * torch.log(counts / counts.sum())
    by_hand = -(adjusted.log_softmax(1)[torch.arange(2), y]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)


def test_logit_adjusted_zero_prior_is_finite():
    loss_fn = LogitAdjustedLoss(torch.tensor([5.0, 0.0, 5.0]), tau=1.0)
    logits = torch.zeros(4, 3, requires_grad=True)
    loss = loss_fn(logits, torch.tensor([0, 2, 0, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss_fn.log_prior[1] < -20  # a large negative offset, not -inf


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("scheme", ["none", "inverse_sqrt"])
def test_build_loss_by_name(batch, name, scheme):
    logits, target = batch
    loss_fn = build_loss(LossConfig(name=name, weights=scheme, gamma=0.0, tau=0.0, label_smoothing=0.1), COUNTS)
    w = class_weights(COUNTS, scheme)
    assert torch.equal(loss_fn.class_weight, w)
    # gamma 0 / tau 0 reduce every loss to weighted CE: one check that the options are wired
    expected = F.cross_entropy(logits, target, weight=w, label_smoothing=0.1)
    assert torch.allclose(loss_fn(logits, target), expected, atol=1e-5)


def test_build_loss_types_and_parameters():
    counts = [10, 20, 70]
    ce = build_loss(LossConfig(name="ce", label_smoothing=0.05), counts)
    assert isinstance(ce, CrossEntropyLoss) and ce.label_smoothing == 0.05
    focal = build_loss(LossConfig(name="focal", gamma=1.5, weights="inverse"), counts)
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    la = build_loss(LossConfig(name="logit_adjusted", tau=2.0), counts)
    assert isinstance(la, LogitAdjustedLoss) and la.tau == 2.0
    assert torch.allclose(la.log_prior, torch.log(torch.tensor([0.1, 0.2, 0.7])))


def test_unknown_loss_lists_choices():
    with pytest.raises(ConfigError, match="logit_adjusted"):
        build_loss(LossConfig(name="hinge"), COUNTS)

"""The name model of generalised zero-shot (a conditional logit over the candidate classes) and the stacking of
its scores with the metadata model's (see the package doc).
"""

from __future__ import annotations

import numpy as np

from fashion_core.config.checks import ConfigError

RANKER_L2 = 1e-3  # ridge on the ranker's few weights (mean log-loss scale)
MIXES = ("gate", "product")  # how the seen classes' two scores combine (chosen on validation with gamma)
NEG = -1e30  # score of a class a model cannot output


# ---------------------------------------------------------------- the name model (conditional logit)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_ranker(phi: np.ndarray, y: np.ndarray, balanced: bool = True, l2: float = RANKER_L2) -> np.ndarray:
    """Weights ``w`` (F,) of the conditional logit ``softmax_c(phi[n, c] . w)`` fitted to labels ``y``.

    Args:
        phi: (N, C, F) evidence of each product for each candidate class.
        y: (N,) the product's class index among the C candidates.
        balanced: weigh each class's products by 1 / their count (the target metric is the class mean).
        l2: ridge strength on ``w``.
    """
    from scipy.optimize import minimize

    n, _, f = phi.shape
    if n == 0:
        raise ConfigError("the name model needs training products of at least one seen class")
    counts = np.bincount(y)
    weight = 1.0 / counts[y] if balanced else np.ones(n)
    weight = weight / weight.sum()
    phi64 = phi.astype(np.float64)
    onehot_phi = phi64[np.arange(n), y]  # (N, F)

    def loss(w):
        logp = _log_softmax(phi64 @ w)
        p = np.exp(logp)
        value = -(weight * logp[np.arange(n), y]).sum() + 0.5 * l2 * w @ w
        expected = np.einsum("nc,ncf->nf", p, phi64)
        grad = (weight[:, None] * (expected - onehot_phi)).sum(axis=0) + l2 * w
        return value, grad

    res = minimize(loss, np.zeros(f), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x


def ranker_log_proba(phi: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log p_name(c | x) over the candidate classes, (N, C)."""
    return _log_softmax(phi.astype(np.float64) @ w) if len(phi) else np.zeros((0, phi.shape[1]))


def stacked_scores(
    meta_logp: np.ndarray, name_logp: np.ndarray, seen: np.ndarray, gamma: float, mix: str = "gate", beta: float = 0.0
) -> np.ndarray:
    """GZSL scores: an unseen c scores log p_name(c); a seen c scores ``mix``'s combination minus
    ``gamma + beta * doubt(x)``, where doubt(x) = -max_c log p_meta(c | x) is how unsure the metadata model is of
    its best seen class (0 when sure; large for a product unlike any it was fitted on).

    Args:
        meta_logp: (N, C) log p_meta over the candidates (NEG where the metadata model cannot output c).
        name_logp: (N, C) log p_name over the candidates.
        seen: (C,) bool, the classes the metadata model was fitted on.
        gamma: the calibration constant subtracted from seen classes.
        beta: how much more the seen classes are held back per unit of the metadata model's doubt (0: the
            single constant of calibrated stacking).
        mix: "gate": log p_name(any seen class) + log p_meta(c) (the name model says whether the product is of
            a seen class, the metadata model which); "product": log p_name(c) + log p_meta(c) (both must agree
            on the class: a "Night Suit" is more Night suits than the unseen Suits).
    """
    if mix not in MIXES:
        raise ConfigError(f"unknown zero-shot mix {mix!r}; choose one of: {', '.join(MIXES)}")
    if len(name_logp) == 0:
        return np.zeros_like(name_logp)
    out = name_logp.copy()
    held_back: float | np.ndarray = gamma  # per row (N, 1) when beta adds the doubt
    if beta and seen.any():
        held_back = gamma + beta * doubt(meta_logp, seen)[:, None]
    if mix == "product":
        out[:, seen] = name_logp[:, seen] + meta_logp[:, seen] - held_back
        return out
    m = name_logp[:, seen].max(axis=1, keepdims=True)
    log_seen = (
        m[:, 0] + np.log(np.exp(name_logp[:, seen] - m).sum(axis=1)) if seen.any() else np.full(len(name_logp), NEG)
    )
    out[:, seen] = log_seen[:, None] + meta_logp[:, seen] - held_back
    return out


def doubt(meta_logp: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """-max over the seen classes of log p_meta(c | x), per row (N,): the metadata model's uncertainty."""
    return -meta_logp[:, seen].max(axis=1)


def harmonic(s: float, u: float) -> float:
    """2SU / (S + U); 0 when both are 0, NaN when either is NaN."""
    if s != s or u != u:
        return float("nan")
    return 2 * s * u / (s + u) if s + u > 0 else 0.0

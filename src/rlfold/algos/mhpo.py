"""MHPO (Modulated Hazard-aware PO): a bounded log-ratio map and Weibull hazard damping instead of a hard clip.

Source: policy.md §7, built from two independent third-party notes on arXiv 2603.16929 that agree
with each other; there is no official code, and the PDF was not read. The formula is implemented as
those notes publish it; see ``mhpo``'s docstring for the one place where it looks odd (the weight at
r = 1 is e^{-1.32779} = 0.26506, not 1).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from rlfold.algos.policy_losses import POLICY_LOSSES, _check_inputs, _fraction, _log_ratio, _masked, _ppo_kl
from rlfold.core.masked import masked_mean

Positive = Annotated[float, Field(gt=0)]


def log_ratio_map(log_ratio: Tensor, c: float) -> Tensor:
    """MHPO's log-ratio map (LFM) psi = c tanh(log r / c): psi ~ log r near r = 1, |psi| < c everywhere
    (in floating point |psi| <= c: tanh rounds to 1 once |log r| / c is large)."""
    return c * torch.tanh(log_ratio / c)


def hazard(psi: Tensor, *, k_pos: float, lam_pos: float, k_neg: float, lam_neg: float) -> Tensor:
    """MHPO's damping (DHP): zeta = (softplus(psi) / lam_pos)^k_pos + (softplus(-psi) / lam_neg)^k_neg,
    the cumulative hazard of a Weibull(k, lam) at softplus(+-psi); the k_pos/lam_pos term grows with
    ratios above 1, the k_neg/lam_neg term with ratios below 1. Always > 0."""
    return (F.softplus(psi) / lam_pos) ** k_pos + (F.softplus(-psi) / lam_neg) ** k_neg


@POLICY_LOSSES.register("mhpo")
def mhpo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    c: Positive = 1.5,
    k_pos: Positive = 1.5,
    lam_pos: Positive = 1.0,
    k_neg: Positive = 2.0,
    lam_neg: Positive = 0.8,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MHPO log-ratio map with Weibull hazard damping (arXiv 2603.16929; formula from third-party notes).

    x = clamp(logp - old_logp, -20, 20); psi = c tanh(x / c); zeta = (softplus(sg psi) / lam_pos)^k_pos
    + (softplus(-sg psi) / lam_neg)^k_neg; l = -exp(psi - sg zeta) A. Nothing is clipped: the gradient
    is dl/dlogp = -A exp(psi - zeta) sech^2(x / c), whose multiplier lies in (0, e^c) (psi < c and
    zeta > 0; in floating point it reaches 0 far in the tails, where sech^2 rounds to 0), so it never
    flips A's sign and never exceeds e^c |A|; it decays smoothly as r leaves 1.
    Aggregate like any policy loss (the ``mhpo`` recipe uses ``seq-mean-token-mean``, as the notes do).

    Provenance: policy.md §7, from two agreeing third-party notes; no official code exists and the
    PDF was not read, so this is the formula as published in those notes. As written, the weight at
    r = 1 is not 1: psi = 0, zeta = (ln 2)^1.5 + (ln 2 / 0.8)^2 = 1.32779, e^{-zeta} = 0.26506 with the
    defaults, because softplus(0) = ln 2 (the paper may intend a function that is 0 at 0; unconfirmed).
    We keep it: on the first update of a batch (every r = 1) it scales the gradient by 0.26506
    relative to PPO's -A grad logp. Defaults c = 1.5, (k_pos, lam_pos) = (1.5, 1.0),
    (k_neg, lam_neg) = (2.0, 0.8).
    Metrics: ``ppo_kl``; ``mhpo_weight_mean`` = masked mean of exp(psi - zeta); ``mhpo_zeta_mean`` =
    masked mean of zeta; ``mhpo_saturated_frac`` = fraction of valid tokens with |psi| > 0.9 c (the
    map is in its flat tail there, a soft analogue of ``pg_clipfrac``).
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    for name, v in (("c", c), ("k_pos", k_pos), ("lam_pos", lam_pos), ("k_neg", k_neg), ("lam_neg", lam_neg)):
        if not v > 0:
            raise ValueError(f"mhpo: {name} must be > 0, got {v}")
    log_ratio = _log_ratio(logprobs, old_logprobs)
    psi = log_ratio_map(log_ratio, c)
    zeta = hazard(psi.detach(), k_pos=k_pos, lam_pos=lam_pos, k_neg=k_neg, lam_neg=lam_neg)
    weight = torch.exp(psi - zeta)
    loss = _masked(-weight * advantages, mask)
    with torch.no_grad():
        metrics = {
            "ppo_kl": _ppo_kl(log_ratio, mask),
            "mhpo_weight_mean": masked_mean(weight.detach(), mask).detach(),
            "mhpo_zeta_mean": masked_mean(zeta, mask).detach(),
            "mhpo_saturated_frac": _fraction(psi.detach().abs() > 0.9 * c, mask, loss.dtype),
        }
    return loss, metrics


__all__ = ["hazard", "log_ratio_map", "mhpo"]

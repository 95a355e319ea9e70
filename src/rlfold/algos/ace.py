"""ACE: negative GRPO advantages scaled up by the rollout's confidence shift (Xu et al. 2026, arXiv 2602.21420).

"Overconfident Errors Need Stronger Correction: Asymmetric Confidence Penalties for Reinforcement
Learning" (Xu, Sang, Zhou, He, Wang) measures, per rollout, how much training has raised its
likelihood over the reference model, c_i = log(pi_theta(y_i|x) / pi_ref(y_i|x)), and penalises
wrong rollouts with c_i > 0 (overconfident errors) harder than those the policy has not come to
prefer (exploratory errors). Positive advantages are left alone.

The abstract fixes c_i and the asymmetry; the exact modulation function and its coefficient are not
public. ``ace`` therefore implements a documented family of modulations (see the part's docstring);
its default is a third-party guess, not the paper's verified formula.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, Eps, Scale, _check_inputs, grpo
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["OVERCONFIDENT_METRIC_NATS", "ace", "ace_factor", "confidence_shift"]

Modulation = Literal["relu", "tanh", "softplus"]

# The metric ``ace/frac_overconfident_errors`` counts c > this many nats: with the policy still equal
# to the reference (the first step) c is rounding noise (about 1e-6) of either sign, not confidence.
OVERCONFIDENT_METRIC_NATS = 1e-3


def confidence_shift(old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """[N] float64 c_i = sum over the valid response tokens of (old_logprobs - ref_logprobs), detached.

    Sequence level, as in the paper: log pi_theta(y|x) - log pi_ref(y|x) with the log-likelihood of
    the whole response. A row with no valid token has c = 0. Padded positions are ignored whatever
    they hold (even -inf); a non-finite log-prob on a valid token is refused.
    """
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if t.shape != response_mask.shape:
            raise ValueError(
                f"{name} must have the shape of response_mask {tuple(response_mask.shape)}, got {tuple(t.shape)}"
            )
    valid = response_mask.bool()
    old, ref = old_logprobs.detach().to(torch.float64), ref_logprobs.detach().to(torch.float64)
    for name, t in (("old_logprobs", old), ("ref_logprobs", ref)):
        bad = valid & ~torch.isfinite(t)
        if bad.any():
            rows = bad.any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"ace: {name} must be finite on valid tokens; non-finite in rows {rows[:10]}")
    diff = torch.where(valid, old - ref, torch.zeros_like(old))
    return diff.sum(dim=1)


def ace_factor(c: Tensor, *, alpha: float, modulation: Modulation, tau: float) -> Tensor:
    """The factor f(c) >= 1 that multiplies a negative advantage (same dtype as ``c``).

    relu: 1 + alpha max(c, 0); tanh: 1 + alpha tanh(max(c, 0) / tau) (at most 1 + alpha);
    softplus: 1 + alpha tau softplus(c / tau) = 1 + alpha tau log(1 + exp(c / tau)).
    All are non-decreasing in c; relu and tanh are exactly 1 for c <= 0, softplus is above 1
    everywhere (1 + alpha tau log 2 at c = 0) and tends to 1 only as c -> -inf; it tends to relu
    as tau -> 0.
    """
    if modulation == "relu":
        return 1.0 + alpha * c.clamp(min=0)
    if modulation == "tanh":
        return 1.0 + alpha * torch.tanh(c.clamp(min=0) / tau)
    if modulation == "softplus":
        return 1.0 + alpha * tau * F.softplus(c / tau)
    raise ValueError(f"modulation must be one of 'relu', 'tanh', 'softplus'; got {modulation!r}")


@ADVANTAGES.register("ace")
@group_relative
@needs("old_logprobs", "ref_logprobs")
def ace(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    alpha: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0,
    modulation: Modulation = "relu",
    tau: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0,
    scale: Scale = "group",
    eps: Eps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """ACE asymmetric confidence-aware error penalty on GRPO (Xu et al. 2026, arXiv 2602.21420).

    A_i is ``grpo``'s advantage (options ``scale``, ``eps`` passed through). The confidence shift
    c_i = sum_t (old_logprobs - ref_logprobs) over the row's valid response tokens is the sequence
    log-ratio log pi_theta(y_i|x) / pi_ref(y_i|x) of the policy the batch was sampled with (the update
    starts from) to the reference model, detached, so the factor is a constant of the loss. Then
    A'_i = A_i f(c_i) where A_i < 0 and A'_i = A_i elsewhere (positive and zero advantages, masked
    tokens untouched). The modulation f is ours, not the paper's: the exact formula is not public.
    ``modulation="relu"`` (default) is f = 1 + alpha max(c, 0), a third-party summary's guess,
    unverified; ``"tanh"`` is the bounded f = 1 + alpha tanh(max(c, 0) / tau) (at most 1 + alpha,
    for long responses whose c can reach tens of nats); ``"softplus"`` is f = 1 + alpha tau
    softplus(c / tau), the smooth variant other summaries say the paper prefers to ReLU (it also
    raises errors with c <= 0, by at most alpha tau log 2, so it does not keep them exactly unchanged).
    For relu and tanh a negative advantage with c <= 0 is exactly unchanged; for all three |A'| is
    non-decreasing in c and the sign is kept. ``alpha = 0`` is GRPO exactly. Default ``alpha = 1``:
    c is in nats, so an error that has become e times likelier than under the reference (c = 1)
    gets twice the penalty; at the first step (policy = reference, c = 0) relu and tanh are GRPO.
    ``tau`` (nats) is the scale of tanh and softplus; relu ignores it.
    Metrics: ``frac_reward_zero_std`` (as ``grpo``), ``ace/c_mean`` (mean c over rows),
    ``ace/frac_overconfident_errors`` (share of rows with A < 0 that have c > 1e-3 nats, above the
    rounding noise of c when policy and reference are the same weights), ``ace/factor_mean``
    and ``ace/factor_max`` (f over the rows with A < 0; 1 when there are none).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and > 0, got {tau}")
    if modulation not in ("relu", "tanh", "softplus"):
        raise ValueError(f"modulation must be one of 'relu', 'tanh', 'softplus'; got {modulation!r}")
    c = confidence_shift(old_logprobs, ref_logprobs, response_mask)
    adv, metrics = grpo(rewards, group_ids, response_mask, scale=scale, eps=eps)
    if rewards.numel() == 0:
        metrics.update({"ace/c_mean": 0.0, "ace/frac_overconfident_errors": 0.0,
                        "ace/factor_mean": 1.0, "ace/factor_max": 1.0})
        return adv, metrics
    factor = ace_factor(c, alpha=alpha, modulation=modulation, tau=tau)  # [N] float64
    # GRPO's advantage is one value per row on its valid tokens and 0 elsewhere, so adv < 0 marks
    # exactly the valid tokens of the rows with a negative advantage.
    negative = (adv < 0).any(dim=1)
    out = torch.where(adv < 0, adv * factor.to(adv.dtype)[:, None], adv)
    neg_f, neg_c = factor[negative], c[negative]
    metrics.update({
        "ace/c_mean": float(c.mean()),
        "ace/frac_overconfident_errors": (float((neg_c > OVERCONFIDENT_METRIC_NATS).double().mean())
                                          if neg_c.numel() else 0.0),
        "ace/factor_mean": float(neg_f.mean()) if neg_f.numel() else 1.0,
        "ace/factor_max": float(neg_f.max()) if neg_f.numel() else 1.0,
    })
    return out, metrics

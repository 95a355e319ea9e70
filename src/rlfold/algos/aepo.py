"""AEPO's two policy-update parts (Agentic Entropy-Balanced Policy Optimization, arXiv 2510.14545).

* ``aepo_clip`` (``POLICY_LOSSES``): PPO clipping whose upper bound keeps a gradient, the paper's
  "entropy clipping-balanced mechanism" (``enable_entropy_balanced_clipping`` in the official code).
* ``aepo_entropy_advantage`` (``SELECTIONS``): token weights 1 + coef * z_t from the standardised
  rollout-time entropy, the paper's "entropy-aware advantage estimation"
  (``enable_entropy_balanced_advantage``).

Reference: ``compute_policy_loss_entropy_balanced_clipping`` in
``AEPO/verl_aepo_entropy/verl/trainer/ppo/core_algos.py`` of dongguanting/ARPO. The paper's third
part, the entropy-balanced rollout (entropy pre-monitoring and branch penalty), is a rollout
collector and is not here.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.policy_losses import (
    POLICY_LOSSES,
    ClipHigh,
    ClipLow,
    DualClip,
    _check_clip,
    _check_dual_clip,
    _check_inputs,
    _dual_clip,
    _fraction,
    _log_ratio,
    _masked,
    _ppo_kl,
)
from rlfold.algos.selection import SELECTIONS, Selection, SelectionInput

__all__ = ["aepo_clip", "aepo_entropy_advantage", "entropy_zscore"]


@POLICY_LOSSES.register("aepo_clip")
def aepo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: ClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    clip_c: DualClip | None = 3.0,
    stop_gradient_clip: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """AEPO stop-gradient clipping (Dong et al. 2025, AEPO, arXiv 2510.14545): clipped tokens keep a gradient.

    r = exp(clamp(logp - old_logp, -20, 20)); the upper clip bound 1 + clip_high is replaced by
    (1 + clip_high) * r / sg(r), whose value is 1 + clip_high and whose gradient is
    (1 + clip_high) * grad logp:

        l = max(-A r, -A clamp(r, 1 - clip_low, (1 + clip_high) r / sg(r))),
        l = min(l, -A clip_c) where A < 0 (dual clip, the official code's clip_ratio_c = 3).

    The VALUE of l equals ``ppo_clip``'s with the same clip_low / clip_high / clip_c everywhere. The
    gradient differs only where A > 0 and r > 1 + clip_high: there it is -A (1 + clip_high) grad logp
    (``ppo_clip``: 0). Where A < 0 and r > 1 + clip_high the unclipped term -A r is the active max
    anyway, and the lower side (r < 1 - clip_low) is unchanged. As in the official code the bound
    applies to every token (not only high-entropy ones). ``stop_gradient_clip=False`` gives the
    constant bound, i.e. exactly ``ppo_clip`` with dual clip ``clip_c`` (the paper's flag off);
    ``clip_c=None`` switches the dual clip off. Metrics as ``ppo_clip``: ``pg_clipfrac`` (clipped
    term is the active max), ``pg_clipfrac_lower`` (dual clip applied), ``ppo_kl``, plus
    ``pg_clipfrac_high_grad`` = fraction of valid tokens with A > 0 and r > 1 + clip_high, the tokens
    whose gradient this loss keeps.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    _check_dual_clip(clip_c)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    low, high = 1.0 - clip_low, 1.0 + clip_high
    if stop_gradient_clip:
        upper = high * ratio / ratio.detach()  # value 1 + clip_high, gradient (1 + clip_high) grad logp
    else:
        upper = torch.full_like(ratio, high)
    clipped_ratio = torch.where(ratio > high, upper, torch.where(ratio < low, torch.full_like(ratio, low), ratio))
    unclipped = -advantages * ratio
    clipped = -advantages * clipped_ratio
    loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    loss, dual_active = _dual_clip(loss, advantages, clip_c)
    loss = _masked(loss, mask)
    metrics = {
        "pg_clipfrac": _fraction(clip_active, mask, loss.dtype),
        "pg_clipfrac_lower": _fraction(dual_active, mask, loss.dtype),
        "pg_clipfrac_high_grad": _fraction((advantages > 0) & (ratio > high), mask, loss.dtype),
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics


def entropy_zscore(entropy: Tensor, mask: Tensor) -> Tensor:
    """z_t = (H_t - mean H) / std H over the valid tokens of ``mask`` (float64, 0 on invalid tokens).

    std is ``torch.std`` (unbiased, N - 1) as in the AEPO code; a zero std (or a single valid token)
    counts as 1, as the code does for std == 0, so z = 0 when every valid entropy is equal."""
    valid = mask.bool()
    h = entropy.detach().to(torch.float64)
    values = h[valid]
    if values.numel() == 0:
        return torch.zeros_like(h)
    mean = values.mean()
    std = values.std() if values.numel() > 1 else values.new_tensor(0.0)
    if not bool(std > 0):
        std = values.new_tensor(1.0)
    return torch.where(valid, (h - mean) / std, torch.zeros_like(h))


@SELECTIONS.register("aepo_entropy_advantage")
def aepo_entropy_advantage(
    inp: SelectionInput,
    *,
    generator: torch.Generator | None = None,
    coef: Annotated[float, Field(ge=0)] = 0.2,
    floor: Annotated[float, Field(ge=0, le=1)] = 0.01,
) -> Selection:
    """AEPO entropy-aware advantage, A_t (1 + 0.2 sg z_t) (Dong et al. 2025, AEPO, arXiv 2510.14545).

    z_t = (H_t - mean H) / std H with H the policy entropy of each response token recorded at rollout
    time (``SelectionInput.entropy``), mean and unbiased std over the valid tokens of this call's
    batch, i.e. the whole step's loss tokens after the earlier selection parts (the official code
    standardises the training-time entropy of each micro-batch instead; a data-parallel trainer must
    pass the gathered batch to keep one global statistic). std 0 counts as 1 (z = 0). Returns
    ``token_weights`` w_t = max(1 + coef z_t, floor) on valid tokens (0 on padding); the trainer
    multiplies the per-token policy loss by w_t, and KL / entropy terms are not weighted.

    When this equals scaling the advantage: for per-token losses that are positively homogeneous in
    A, l(c A) = c l(A) for c > 0 (``ppo_clip`` and ``aepo_clip`` incl. their dual clip, ``cispo``,
    ``reinforce``, ``sapo``, ``gspo_token``), w_t l(A_t) = l(w_t A_t), so with w_t > 0 this is
    exactly A_t -> A_t (1 + coef z_t). It is not for ``gspo`` (sequence-level ratio and advantage) nor
    any loss that mixes tokens. Below zero: where 1 + coef z_t <= floor (z_t <= -(1 - floor) / coef,
    about -5 standard deviations with the defaults) the weight is clamped at ``floor`` > 0, i.e. the
    advantage is scaled by ``floor`` and keeps its sign. The official code multiplies A itself and
    would flip its sign there (a negative weight on the clipped loss is not that either, since the
    clip is asymmetric in A); ``floor=0`` drops such tokens from the gradient instead (they keep
    counting in the normaliser). ``coef=0`` gives weight 1 everywhere (the paper's flag off). Worked
    example: z = +1 -> A x 1.2; z = 0 -> A unchanged; z = -1 -> A x 0.8. Metrics:
    ``selection/aepo_entropy_mean``, ``selection/aepo_entropy_std`` (over valid tokens),
    ``selection/aepo_weight_mean`` and ``selection/aepo_floor_frac`` (valid tokens clamped at floor).
    """
    del generator
    recorded = inp.require_entropy("aepo_entropy_advantage")
    if not coef >= 0:
        raise ValueError(f"aepo_entropy_advantage coef must be >= 0, got {coef!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"aepo_entropy_advantage floor must be in [0, 1], got {floor!r}")
    valid = inp.response_mask.bool()
    entropy = recorded.detach()
    if not bool(torch.isfinite(entropy[valid]).all()):
        bad = torch.nonzero(valid & ~torch.isfinite(entropy))[:5].tolist()
        raise ValueError(
            f"aepo_entropy_advantage: entropy must be finite on valid tokens; non-finite at [row, token] {bad}"
        )
    z = entropy_zscore(entropy, inp.response_mask)
    raw = 1.0 + coef * z
    factor = raw.clamp(min=floor)
    dtype = entropy.dtype if entropy.dtype.is_floating_point else torch.float32
    dtype = torch.promote_types(dtype, torch.float32)
    token_weights = torch.where(valid, factor, torch.zeros_like(factor)).to(dtype)
    values = entropy[valid].to(torch.float64)
    n = values.numel()
    metrics = {
        "selection/aepo_entropy_mean": float(values.mean()) if n else 0.0,
        "selection/aepo_entropy_std": float(values.std()) if n > 1 else 0.0,
        "selection/aepo_weight_mean": float(factor[valid].mean()) if n else 0.0,
        "selection/aepo_floor_frac": float((raw[valid] < floor).sum()) / n if n else 0.0,
    }
    return Selection(token_weights=token_weights, metrics=metrics)

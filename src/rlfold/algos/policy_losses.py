"""Per-token policy-gradient losses (quantities to minimise); aggregation happens elsewhere.

Every part has the signature
``fn(logprobs, old_logprobs, advantages, mask, *, clip_low, clip_high, clip_c)
-> (per_token_loss [N, R], metrics)``; all tensors are ``[N, R]``. The per-token loss is zero on
masked tokens and is NOT reduced: pass it to an ``Aggregation`` (``rlfold.algos.aggregation``).
``metrics`` holds detached 0-dim tensors (``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl``),
so that logging them does not force a device synchronisation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlfold.core.masked import masked_mean
from rlfold.core import registry

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSSES = registry.POLICY_LOSSES

LOG_RATIO_CLAMP = 20.0


def _check_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> None:
    shape = tuple(logprobs.shape)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, R], got shape {shape}")
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of logprobs {shape}, got {tuple(t.shape)}")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with clip-higher and dual-clip.

    r = exp(clamp(logp - old_logp, -20, 20));
    l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)). ``clip_high > clip_low`` is DAPO's
    Clip-Higher (Yu et al. 2025, arXiv 2503.14476). With ``clip_c`` (> 1), the dual clip of
    Ye et al. 2020 (arXiv 1912.09729) bounds the loss of negative-advantage tokens:
    l = min(l, -A clip_c) where A < 0.
    Metrics: ``pg_clipfrac`` = fraction of valid tokens where the clipped term is the active max;
    ``pg_clipfrac_lower`` = fraction where the dual clip applied; ``ppo_kl`` = masked mean of
    old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low} and {clip_high}")
    if clip_c is not None and not clip_c > 1.0:
        raise ValueError(f"clip_c (dual-clip bound) must be > 1, got {clip_c}")

    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped

    if clip_c is not None:
        bound = -advantages * clip_c
        dual_active = (advantages < 0) & (loss > bound)
        loss = torch.where(dual_active, bound, loss)
    else:
        dual_active = torch.zeros_like(clip_active)

    loss = torch.where(mask.bool(), loss, torch.zeros_like(loss))
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": masked_mean(clip_active.to(loss.dtype), mask).detach(),
            "pg_clipfrac_lower": masked_mean(dual_active.to(loss.dtype), mask).detach(),
            "ppo_kl": masked_mean(-log_ratio, mask).detach(),
        }
    return loss, metrics

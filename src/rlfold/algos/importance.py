"""Importance weights between the policy that sampled a row (the engine's behaviour log-probs) and the
trainer's old (proximal) policy: the log-ratio on valid tokens and its truncation or masking to a band.

Shared by the ``tis`` selection (weights applied as token weights) and the ``decoupled_ppo`` policy loss
(weights applied inside the loss).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def behaviour_log_ratio(old_logprobs: Tensor, behaviour_logprobs: Tensor, valid: Tensor, who: str) -> Tensor:
    """log r = old - behaviour, detached, in at least float32, on ``valid`` tokens (0 elsewhere).

    A NaN on a valid token (NaN log-probs, or -inf in both) is an error naming ``who`` and the first positions.
    """
    old, beh = old_logprobs.detach(), behaviour_logprobs.detach()
    dtype = torch.promote_types(torch.promote_types(old.dtype, beh.dtype), torch.float32)
    diff = old.to(dtype) - beh.to(dtype)
    nan = valid & torch.isnan(diff)
    if nan.any():
        bad = torch.nonzero(nan)[:5].tolist()
        raise ValueError(f"{who}: old_logprobs - behaviour_logprobs is NaN at [row, token] {bad} "
                         "(NaN log-probs, or -inf in both)")
    return torch.where(valid, diff, torch.zeros_like(diff))


def bound_weights(w: Tensor, lower: float, upper: float,
                  mode: Literal["truncate", "mask"]) -> tuple[Tensor, Tensor]:
    """``(adjusted, inside)``: ``truncate`` clamps w to [lower, upper]; ``mask`` keeps w inside the band and sets
    it to 0 outside; ``inside`` marks lower <= w <= upper."""
    inside = (w >= lower) & (w <= upper)
    if mode == "truncate":
        return w.clamp(min=lower, max=upper), inside
    return torch.where(inside, w, torch.zeros_like(w)), inside


__all__ = ["behaviour_log_ratio", "bound_weights"]

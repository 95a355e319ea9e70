"""Critic losses and diagnostics for value-model PPO (pure tensor functions, not registered).

All tensors are ``[N, R]`` with a 0/1 ``mask``; per-token losses are zero on masked tokens and
NOT reduced: aggregate them with the recipe's ``Aggregation`` (``rlfold.algos.aggregation``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlfold.core.masked import masked_mean, masked_var


def _check(values: Tensor, **others: Tensor) -> None:
    shape = tuple(values.shape)
    if values.dim() != 2:
        raise ValueError(f"values must be [N, R], got shape {shape}")
    for name, t in others.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of values {shape}, got {tuple(t.shape)}")


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO (Schulman et al. 2017, arXiv 1707.06347; as in verl, OpenAI baselines).

    v_clip = old_values + clamp(values - old_values, -clip, clip);
    l = 0.5 * max((values - returns)^2, (v_clip - returns)^2), 0 on masked tokens. ``clip=None``
    gives the unclipped 0.5 * (values - returns)^2. The default 0.5 is verl's ``cliprange_value``.
    Metrics (detached 0-dim tensors): ``vf_clipfrac`` = fraction of valid tokens where the
    clipped term is strictly larger (0 when ``clip`` is None).
    """
    _check(values, old_values=old_values, returns=returns, mask=mask)
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 or None, got {clip}")
    unclipped = (values - returns) ** 2
    if clip is None:
        sq = unclipped
        clip_active = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (v_clip - returns) ** 2
        sq = torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = 0.5 * sq
    loss = torch.where(mask.bool(), loss, torch.zeros_like(loss))
    with torch.no_grad():
        metrics = {"vf_clipfrac": masked_mean(clip_active.to(loss.dtype), mask).detach()}
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the valid tokens (nan when Var(returns) == 0).

    1 is a perfect critic, 0 no better than predicting the mean return, < 0 worse than that. The
    variances use the same normalisation, so the Bessel correction cancels. Returns a Python
    float (one device synchronisation): a logging diagnostic, not a loss.
    """
    _check(values, returns=returns, mask=mask)
    with torch.no_grad():
        values, returns = values.detach(), returns.detach()
        var_returns = float(masked_var(returns, mask, unbiased=False))
        if var_returns == 0.0 or not mask.bool().any():
            return math.nan
        var_residual = float(masked_var(returns - values, mask, unbiased=False))
    return 1.0 - var_residual / var_returns


__all__ = ["clipped_value_loss", "explained_variance"]

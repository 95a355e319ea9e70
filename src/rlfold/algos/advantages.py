"""Outcome advantage estimators: one scalar reward per sequence in, per-token advantages out.

Every part has the signature
``fn(rewards [N], group_ids [N], response_mask [N, R], **hyper) -> (advantages [N, R], metrics)``.
Sequences with the same ``group_ids`` value answer the same prompt (the ids need not be contiguous
or sorted). The advantage of a sequence is broadcast over its response tokens and is exactly zero
on masked tokens. ``metrics`` holds plain floats.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from rlfold.core import registry

Scale = Literal["group", "batch", "none"]
AdvantageFn = Callable[..., tuple[Tensor, dict[str, float]]]

ADVANTAGES = registry.ADVANTAGES


def _check_inputs(rewards: Tensor, group_ids: Tensor, response_mask: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if response_mask.dim() != 2 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"response_mask must be [N, R] with N={rewards.shape[0]}, "
            f"got shape {tuple(response_mask.shape)}"
        )
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite; non-finite at rows {bad[:10]}")


def _broadcast(adv: Tensor, response_mask: Tensor) -> Tensor:
    """Advantage per sequence [N] -> per token [N, R], exactly 0 where the mask is 0."""
    per_token = adv[:, None].expand(-1, response_mask.shape[1])
    return torch.where(response_mask.bool(), per_token, torch.zeros_like(per_token))


def _centred(
    rewards: Tensor, group_ids: Tensor, scale: Scale, eps: float
) -> tuple[Tensor, dict[str, float]]:
    """Group-centred (and optionally scaled) advantage per sequence, plus metrics."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max().item()) + 1
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))
    mean = zeros.index_add(0, inv, rewards) / count
    sq_dev = zeros.index_add(0, inv, (rewards - mean[inv]) ** 2)
    std = (sq_dev / (count - 1).clamp(min=1)).sqrt()  # unbiased, like torch.std
    # max == min is an exact test for "all rewards equal"; the floating-point mean is not.
    r_max = zeros.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    r_min = zeros.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    multi = count > 1
    constant = multi & (r_max == r_min)
    # verl convention: a group of one sample has mean 0 and std 1 (its advantage is its reward).
    mean = torch.where(multi, mean, torch.zeros_like(mean))
    std = torch.where(multi, std, torch.ones_like(std))

    centred = rewards - mean[inv]
    if scale == "group":
        adv = centred / (std[inv] + eps)
    elif scale == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_tensor(1.0)
        adv = centred / (batch_std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be one of 'group', 'batch', 'none'; got {scale!r}")
    adv = torch.where(constant[inv], torch.zeros_like(adv), adv)
    n_multi = int(multi.sum().item())
    frac = float(constant.sum().item()) / n_multi if n_multi else 0.0
    return adv, {"frac_reward_zero_std": frac}


def _outcome(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor, scale: Scale, eps: float
) -> tuple[Tensor, dict[str, float]]:
    _check_inputs(rewards, group_ids, response_mask)
    if not rewards.dtype.is_floating_point:
        rewards = rewards.float()
    rewards = rewards.detach()
    if rewards.numel() == 0:
        empty = torch.zeros(response_mask.shape, dtype=rewards.dtype, device=rewards.device)
        return empty, {"frac_reward_zero_std": 0.0}
    adv, metrics = _centred(rewards, group_ids, scale, eps)
    return _broadcast(adv, response_mask), metrics


@ADVANTAGES.register("grpo")
def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    scale: Scale = "group",
    eps: float = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO group-normalised outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    A_i = (R_i - mean_g) / (std_g + eps) with the unbiased group std (``scale="group"``); the batch
    std of all rewards instead (``scale="batch"``); or no division (``scale="none"``, Dr. GRPO).
    A group of one sample has mean 0 and std 1. A group of two or more samples with equal rewards
    gets advantage exactly 0. Metric ``frac_reward_zero_std``: fraction of groups (of size >= 2)
    whose rewards are all equal.
    """
    return _outcome(rewards, group_ids, response_mask, scale, eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO group-mean-centred advantage, no std division (Liu et al. 2025, arXiv 2503.20783).

    A_i = R_i - mean_g; same conventions as ``grpo`` (singleton mean 0, equal rewards give 0).
    """
    return _outcome(rewards, group_ids, response_mask, "none", 0.0)

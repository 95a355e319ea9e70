"""Outcome advantage estimators: one scalar reward per sequence in, per-token advantages out.

Every part has the signature
``fn(rewards [N], group_ids [N], response_mask [N, R], **hyper) -> (advantages [N, R], metrics)``.
Sequences with the same ``group_ids`` value answer the same prompt (the ids need not be contiguous
or sorted). The advantage of a sequence is broadcast over its response tokens and is exactly zero
on masked tokens. ``metrics`` holds plain floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core import registry
from rlfold.core.groups import group_index
from rlfold.core.masked import masked_mean, masked_var
from rlfold.core.options import group_relative

Scale = Literal["group", "batch", "none"]
Eps = Annotated[float, Field(ge=0)]  # added to a std that is > 0 wherever it divides
PositiveEps = Annotated[float, Field(gt=0)]  # added to a std or variance that may be 0 (whitening)
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


class _Groups(NamedTuple):
    """Per-group statistics of the sequence rewards; ``inv`` maps each row to its group index."""

    inv: Tensor  # [N] group index of every row
    count: Tensor  # [G] rows per group
    total: Tensor  # [G] sum of rewards
    multi: Tensor  # [G] group has two or more rows
    constant: Tensor  # [G] group of two or more rows whose rewards are all equal


def _group_stats(rewards: Tensor, group_ids: Tensor) -> _Groups:
    inv, n_groups = group_index(group_ids)
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))
    total = zeros.index_add(0, inv, rewards)
    # max == min is an exact test for "all rewards equal"; the floating-point mean is not.
    r_max = zeros.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    r_min = zeros.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    multi = count > 1
    return _Groups(inv, count, total, multi, multi & (r_max == r_min))


def _frac_zero_std(groups: _Groups) -> float:
    n_multi = int(groups.multi.sum().item())
    return float(groups.constant.sum().item()) / n_multi if n_multi else 0.0


def _centred(rewards: Tensor, groups: _Groups, scale: Scale, eps: float) -> Tensor:
    """Group-centred (and optionally scaled) advantage per sequence."""
    inv, count, multi = groups.inv, groups.count, groups.multi
    mean = groups.total / count
    sq_dev = torch.zeros_like(mean).index_add(0, inv, (rewards - mean[inv]) ** 2)
    std = (sq_dev / (count - 1).clamp(min=1)).sqrt()  # unbiased, like torch.std
    # verl convention: a group of one sample has mean 0 and std 1 (its advantage is its reward).
    mean = torch.where(multi, mean, torch.zeros_like(mean))
    std = torch.where(multi, std, torch.ones_like(std))

    centred = rewards - mean[inv]
    if scale == "group":
        return centred / (std[inv] + eps)
    if scale == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_tensor(1.0)
        return centred / (batch_std + eps)
    return centred


def _outcome(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    per_sequence: Callable[[Tensor, _Groups], Tensor],
) -> tuple[Tensor, dict[str, float]]:
    """Validate, compute the per-sequence advantage, zero constant groups, broadcast to tokens."""
    _check_inputs(rewards, group_ids, response_mask)
    if not rewards.dtype.is_floating_point:
        rewards = rewards.float()
    rewards = rewards.detach()
    if rewards.numel() == 0:
        empty = torch.zeros(response_mask.shape, dtype=rewards.dtype, device=rewards.device)
        return empty, {"frac_reward_zero_std": 0.0}
    groups = _group_stats(rewards, group_ids)
    adv = per_sequence(rewards, groups)
    adv = torch.where(groups.constant[groups.inv], torch.zeros_like(adv), adv)
    return _broadcast(adv, response_mask), {"frac_reward_zero_std": _frac_zero_std(groups)}


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) * rsqrt(var + eps) over the valid entries of the whole batch; 0 where masked.

    Mean and unbiased (Bessel-corrected) variance are taken over all entries where ``mask`` is 1
    (verl ``masked_whiten``). An all-zero input stays exactly zero.
    """
    valid = mask.bool()
    mean = masked_mean(x, valid)
    var = masked_var(x, valid, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(valid, out, torch.zeros_like(out))


@ADVANTAGES.register("grpo")
@group_relative
def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    scale: Scale = "group",
    eps: Eps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO group-normalised outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    A_i = (R_i - mean_g) / (std_g + eps) with the unbiased group std (``scale="group"``); the batch
    std of all rewards instead (``scale="batch"``); or no division (``scale="none"``, Dr. GRPO).
    A group of one sample has mean 0 and std 1. A group of two or more samples with equal rewards
    gets advantage exactly 0. Metric ``frac_reward_zero_std``: fraction of groups (of size >= 2)
    whose rewards are all equal.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be one of 'group', 'batch', 'none'; got {scale!r}")
    return _outcome(
        rewards, group_ids, response_mask, lambda r, g: _centred(r, g, scale, eps)
    )


@ADVANTAGES.register("dr_grpo")
@group_relative
def dr_grpo(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Dr. GRPO group-mean-centred advantage, no std division (Liu et al. 2025, arXiv 2503.20783).

    A_i = R_i - mean_g; same conventions as ``grpo`` (singleton mean 0, equal rewards give 0).
    """
    return _outcome(
        rewards, group_ids, response_mask, lambda r, g: _centred(r, g, "none", 0.0)
    )


@ADVANTAGES.register("rloo")
@group_relative
def rloo(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """RLOO leave-one-out baseline advantage (Ahmadian et al. 2024, arXiv 2402.14740).

    A_i = R_i - mean_{j != i in the group} R_j = k/(k-1) (R_i - mean_g) for a group of k rows.
    A group of one sample keeps its reward (A_i = R_i); equal rewards in a group give exactly 0.
    Metric ``frac_reward_zero_std`` as in ``grpo``.
    """

    def leave_one_out(r: Tensor, g: _Groups) -> Tensor:
        others = (g.total[g.inv] - r) / (g.count[g.inv] - 1).clamp(min=1)
        return torch.where(g.multi[g.inv], r - others, r)

    return _outcome(rewards, group_ids, response_mask, leave_one_out)


@ADVANTAGES.register("opo")
@group_relative
def opo(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """OPO length-weighted optimal reward baseline (Hao et al. 2025, arXiv 2505.23585).

    b_g = sum_j |o_j| R_j / sum_j |o_j| with |o_j| the number of valid response tokens of row j;
    A_i = R_i - b_g. A group of one sample has baseline 0 (verl); a group whose rows have no valid
    tokens falls back to the plain mean; equal rewards in a group give exactly 0. With equal
    lengths this is ``dr_grpo``. Metric ``frac_reward_zero_std`` as in ``grpo``.
    """
    lengths = response_mask.detach().sum(dim=1)

    def length_weighted(r: Tensor, g: _Groups) -> Tensor:
        length = lengths.to(r.dtype)
        zeros = torch.zeros_like(g.total)
        weighted = zeros.index_add(0, g.inv, length * r)
        total_len = zeros.index_add(0, g.inv, length)
        base = torch.where(total_len > 0, weighted / total_len.clamp(min=1), g.total / g.count)
        base = torch.where(g.multi, base, torch.zeros_like(base))
        return r - base[g.inv]

    return _outcome(rewards, group_ids, response_mask, length_weighted)


@ADVANTAGES.register("reinforce_pp_baseline")
@group_relative
def reinforce_pp_baseline(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor, *, eps: PositiveEps = 1e-8
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE++-baseline: group-mean baseline, then batch whitening (Hu 2025, arXiv 2501.03262).

    A = masked_whiten(R_i - mean_g broadcast over valid tokens) with mean and unbiased variance over
    all valid tokens of the batch. A singleton group has mean 0; if every group has equal rewards
    the advantages are all exactly 0. Metric ``frac_reward_zero_std`` as in ``grpo``.
    """
    adv, metrics = _outcome(
        rewards, group_ids, response_mask, lambda r, g: _centred(r, g, "none", 0.0)
    )
    return masked_whiten(adv, response_mask, eps), metrics


@ADVANTAGES.register("grpo_passk")
@group_relative
def grpo_passk(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor, *, norm_by_std: bool = True, eps: Eps = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    """Pass@k-style advantage: only each group's best response is credited (Pass@k Training, arXiv 2503.19595).

    Per group, the first row with the highest reward gets A = R_max - R_second (the second-highest
    reward, counting ties), divided by (std_g + eps) with the unbiased group std if
    ``norm_by_std``; every other row gets 0, as does a group of one row or of equal rewards.
    """

    def best_only(r: Tensor, g: _Groups) -> Tensor:
        adv = torch.zeros_like(r)
        for gi in range(int(g.count.shape[0])):
            rows = torch.nonzero(g.inv == gi).flatten()
            if rows.numel() < 2:
                continue
            top2 = torch.topk(r[rows], 2)
            gap = top2.values[0] - top2.values[1]
            if norm_by_std:
                gap = gap / (r[rows].std() + eps)
            adv[rows[top2.indices[0]]] = gap
        return adv

    return _outcome(rewards, group_ids, response_mask, best_only)

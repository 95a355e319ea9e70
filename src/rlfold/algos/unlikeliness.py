"""Unlikeliness reward: GRPO on rewards that penalise correct-but-likely samples (He et al. 2025, arXiv 2506.02355).

"Rewarding the Unlikely: Lifting GRPO Beyond Distribution Sharpening" (He, Fried, Welleck) finds that
GRPO reinforces the already probable correct samples of a group and neglects the rare ones (rank bias).
Before the group z-score, each reward is scaled down by the rank of its sample's likelihood under the
old policy within its group, so the most likely correct sample gets the smallest reward.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, Eps, _centred, _check_inputs, _outcome
from rlfold.core.groups import group_index
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["likelihood_ranks", "unlikeliness"]


def likelihood_ranks(mean_logprobs: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """([N] rank of each row within its group in ascending ``mean_logprobs``, [N] size of its group).

    Rank 0 is the least likely row of the group, rank G - 1 the most likely. Ties are broken by row
    order (stable sort): of two equal values the earlier row gets the lower rank.
    """
    inv, n_groups = group_index(group_ids)
    ranks = torch.zeros(inv.shape, dtype=torch.long, device=inv.device)
    sizes = torch.bincount(inv, minlength=n_groups)
    for g in range(n_groups):
        rows = torch.nonzero(inv == g).flatten()
        order = torch.sort(mean_logprobs[rows], stable=True).indices
        ranks[rows[order]] = torch.arange(rows.numel(), device=inv.device)
    return ranks, sizes[inv]


@ADVANTAGES.register("unlikeliness")
@group_relative
@needs("old_logprobs")
def unlikeliness(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    old_logprobs: Tensor,
    beta_rank: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.25,
    eps: Eps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """Unlikeliness reward, then GRPO (He, Fried, Welleck 2025, Rewarding the Unlikely, arXiv 2506.02355).

    Per row, the likelihood is the mean of ``old_logprobs`` [N, R] (the policy the update starts from)
    over its valid response tokens (0 for a row with none, like verl's ``masked_mean``). Within each
    group of G rows, rank_i is the row's position in ascending likelihood (0 = least likely; ties broken
    by row order, the official code's ``argsort`` leaves them unspecified), and
    R~_i = R_i (1 - beta_rank rank_i / G). The advantage is GRPO's on R~: (R~_i - mean_g) / (std_g + eps)
    with the unbiased std, singleton groups mean 0 and std 1, equal R~ in a group give exactly 0.
    ``beta_rank = 0`` is GRPO. As in the official code, a group whose rewards are all equal and nonzero
    (all correct) gets nonzero advantages from its ranks; the paper drops such groups before the
    update (``advantage_threshold``), rlfold's ``dynamic_sampling`` group filter. Metrics
    ``frac_reward_zero_std`` (over R~, as in ``grpo``) and ``unlikeliness/penalty_mean`` (mean R - R~).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if old_logprobs.shape != response_mask.shape:
        raise ValueError(
            f"old_logprobs must have the shape of response_mask {tuple(response_mask.shape)}, "
            f"got {tuple(old_logprobs.shape)}"
        )
    valid = response_mask.bool()
    logp = old_logprobs.detach().to(torch.float64)
    bad = valid & ~torch.isfinite(logp)
    if bad.any():
        rows = bad.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"unlikeliness: old_logprobs must be finite on valid tokens; non-finite in rows {rows[:10]}")
    r = rewards.detach()
    if not r.dtype.is_floating_point:
        r = r.float()
    if r.numel() == 0:
        empty = torch.zeros(response_mask.shape, dtype=r.dtype, device=r.device)
        return empty, {"frac_reward_zero_std": 0.0, "unlikeliness/penalty_mean": 0.0}
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    mean_logp = logp.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    ranks, sizes = likelihood_ranks(mean_logp, group_ids)
    r_tilde = r * (1.0 - beta_rank * ranks.to(r.dtype) / sizes.to(r.dtype))
    adv, metrics = _outcome(r_tilde, group_ids, response_mask, lambda x, g: _centred(x, g, "group", eps))
    metrics["unlikeliness/penalty_mean"] = float((r - r_tilde).mean().item())
    return adv, metrics

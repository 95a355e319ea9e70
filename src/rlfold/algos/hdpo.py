"""HDPO's two advantage channels: accuracy over the whole group, tool efficiency over its correct rollouts."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, Eps, _broadcast, _check_inputs, _centred, _group_stats
from rlfold.core.options import group_relative
from rlfold.core.registry import needs


def conditional_group_advantage(rewards: Tensor, group_ids: Tensor, members: Tensor, eps: float) -> Tensor:
    """[N] GRPO advantage of ``rewards`` computed over the ``members`` of each group only (unbiased std);
    exactly 0 for non-members, for groups with fewer than two members and for groups whose members tie."""
    out = torch.zeros_like(rewards)
    idx = members.nonzero().flatten()
    if idx.numel() < 2:
        return out
    sub, groups = rewards[idx], _group_stats(rewards[idx], group_ids[idx])
    adv = _centred(sub, groups, "group", eps)
    keep = groups.multi[groups.inv] & ~groups.constant[groups.inv]
    out[idx] = torch.where(keep, adv, torch.zeros_like(adv))
    return out


@ADVANTAGES.register("hdpo")
@group_relative
@needs("reward_columns")
def hdpo(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    reward_columns: Tensor,
    accuracy_column: Annotated[int, Field(ge=0)] = 0,
    tool_column: Annotated[int, Field(ge=0)] = 1,
    w_acc: Annotated[float, Field(ge=0)] = 1.0,
    w_tool: Annotated[float, Field(ge=0)] = 0.15,
    eps: Eps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """HDPO (Metis "Act Wisely", arXiv 2604.08545): A = w_acc * A_acc + w_tool * A_tool.

    ``reward_columns`` [N, F] holds the raw score of each reward function of the recipe, in the order of
    ``rewards:``; ``accuracy_column`` is r_acc (0.9 r_ans + 0.1 r_fmt, the ``hdpo_accuracy`` reward) and
    ``tool_column`` r_tool (1/(T+1) if correct else 0). A_acc is GRPO over all G rollouts of a prompt;
    A_tool is GRPO over its correct rollouts Q = {r_tool > 0} only, when |Q| >= 2 (else 0; incorrect
    rollouts get 0). The paper optimises w_acc L(A_acc) + w_tool L(A_tool) as two clipped surrogates;
    here one surrogate takes the weighted sum. The two are equal whenever no importance ratio is
    clipped, in particular on the first (or only) update of a batch, where every ratio is 1 (rlfold's
    default, train.ppo_epochs = 1 with one mini-batch); with several updates per batch they differ
    on clipped tokens whose two channels have opposite signs. w_tool = 0 is GRPO on r_acc.
    """
    _check_inputs(rewards, group_ids, response_mask)
    if reward_columns.dim() != 2 or reward_columns.shape[0] != rewards.shape[0]:
        raise ValueError(f"reward_columns must be [N, F] with N={rewards.shape[0]}, got {tuple(reward_columns.shape)}")
    f = reward_columns.shape[1]
    for name, col in (("accuracy_column", accuracy_column), ("tool_column", tool_column)):
        if not 0 <= col < f:
            raise ValueError(f"hdpo: {name}={col}, but the recipe has {f} reward functions (columns 0..{f - 1})")
    cols = reward_columns.detach().double()
    if not torch.isfinite(cols[:, [accuracy_column, tool_column]]).all():
        raise ValueError("hdpo: the accuracy and tool rewards must be finite on every row")
    r_acc, r_tool = cols[:, accuracy_column], cols[:, tool_column]
    groups = _group_stats(r_acc, group_ids)
    a_acc = _centred(r_acc, groups, "group", eps)
    a_acc = torch.where(groups.constant[groups.inv], torch.zeros_like(a_acc), a_acc)
    correct = r_tool > 0
    a_tool = conditional_group_advantage(r_tool, group_ids, correct, eps)
    adv = (w_acc * a_acc + w_tool * a_tool).to(torch.float32)
    n_q = torch.zeros(int(groups.count.numel()), dtype=torch.float64).index_add(0, groups.inv, correct.double())
    metrics = {"frac_reward_zero_std": float(groups.constant.sum()) / max(int(groups.multi.sum()), 1),
               "hdpo/frac_groups_tool_signal": float((n_q >= 2).double().mean()),
               "hdpo/tool_adv_abs_mean": float(a_tool.abs().mean())}
    return _broadcast(adv, response_mask), metrics


__all__ = ["conditional_group_advantage", "hdpo"]

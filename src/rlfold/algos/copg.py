"""Online CoPG: the contrastive policy gradient on k samples per prompt (Flet-Berliac et al. 2024, arXiv 2406.19185).

"Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly fashion"
regularises the reward with the sequence log-ratio to the reference, R_beta(y) = R(y) - beta ln(pi(y)/pi_ref(y)),
and minimises the squared loss (R_beta(y) - R_beta(y'))^2 over pairs; its gradient is
-2 beta (R_beta(y) - R_beta(y')) (grad ln pi(y) - grad ln pi(y')), with no importance ratio. The offline loss
is the preference loss ``copg`` (``rlfold.algos.preference.pairwise``); this module is the same objective in
the online loop, written as an advantage for the plain policy-gradient loss ``reinforce``.

Derivation of the advantage (the constant). For a group of k samples the offline loss is
l = 1/(k-1) sum_{i<j} (R_beta_i - R_beta_j)^2. With the identity
sum_{i<j} (a_i - a_j)(g_i - g_j) = sum_i g_i sum_j (a_i - a_j), its gradient is
grad l = -2 beta sum_i [1/(k-1) sum_j (R_beta_i - R_beta_j)] grad ln pi(y_i).
So with A_i = c sum_j (R_beta_i - R_beta_j), c = 1/(k-1), and the sequence loss -A_i ln pi(y_i) averaged over
the k rows (``reinforce`` with ``seq-mean-token-sum``), one row carries 1/k of grad l / (2 beta). Since
sum_j (R_i - R_j) = k R_i - sum_j R_j, A_i = R_beta_i - mean_{j != i} R_beta_j: online CoPG is RLOO on the
regularised reward. For k = 2 and beta = 0, A = RLOO exactly, and the row-mean loss's gradient is 1/2 of the
pair's contrastive gradient (R(y) - R(y'))(grad ln pi(y) - grad ln pi(y')) (the 1/2 of the spec's test: the pair
gradient is twice RLOO's row-mean estimate, and equals RLOO's sum over the two rows).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, _check_inputs, _Groups, _outcome
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["copg", "copg_pairwise", "sequence_log_ratio"]

Beta = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def sequence_log_ratio(old_logprobs: Tensor, ref_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """[N] float64 l_i = sum over row i's valid tokens of (old_logprobs - ref_logprobs), detached.

    The sequence log-ratio ln(pi(y_i)/pi_ref(y_i)) of the policy the batch was sampled with. A row with no
    valid token has l = 0; padded positions are ignored whatever they hold; a non-finite log-prob on a
    valid token is refused.
    """
    valid = response_mask.bool()
    out = []
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if t.shape != response_mask.shape:
            raise ValueError(f"copg: {name} must have the shape of response_mask {tuple(response_mask.shape)}, "
                             f"got {tuple(t.shape)}")
        t = t.detach().to(torch.float64)
        bad = valid & ~torch.isfinite(t)
        if bad.any():
            rows = bad.any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"copg: {name} must be finite on valid tokens; non-finite in rows {rows[:10]}")
        out.append(t)
    old, ref = out
    return torch.where(valid, old - ref, torch.zeros_like(old)).sum(dim=1)


def copg_pairwise(reg_rewards: Tensor, groups: _Groups) -> Tensor:
    """[N] A_i = 1/(k-1) sum_{j in group(i)} (R_beta_i - R_beta_j); 0 for a group of one row (no pair)."""
    k = groups.count[groups.inv]
    pair_sum = k * reg_rewards - groups.total[groups.inv]  # sum_j (R_i - R_j), the j = i term is 0
    return torch.where(groups.multi[groups.inv], pair_sum / (k - 1).clamp(min=1), torch.zeros_like(reg_rewards))


@ADVANTAGES.register("copg")
@group_relative
@needs("old_logprobs", "ref_logprobs")
def copg(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    beta: Beta = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """Online CoPG contrastive advantage on the regularised reward (Flet-Berliac et al. 2024, arXiv 2406.19185).

    R_beta_i = R_i - beta l_i with l_i = sum_t (old_logprobs - ref_logprobs) over row i's valid tokens (the
    sampling policy's sequence log-ratio to the reference, detached); A_i = 1/(k-1) sum_j (R_beta_i - R_beta_j)
    over the k rows of i's group (= RLOO on R_beta), broadcast over row i's valid tokens, exactly 0 on masked
    tokens, on every row of a group whose R_beta are all equal, and on a group of one row (no pair; ``rloo``
    keeps the reward there). Use with ``policy_loss: reinforce`` (no ratio, as CoPG) and ``loss_agg:
    seq-mean-token-sum`` (ln pi(y) is the sum over tokens): the loss is then 1/k of the offline ``copg``
    group loss over 2 beta, in gradient. R_beta uses the log-probs the update starts from, so it is the
    squared loss's exact gradient for one optimiser step per batch (``ppo_epochs=1``, one mini-batch) and an
    approximation after the weights move. ``@needs`` is static, so a run builds the reference model even at
    ``beta=0`` (then online CoPG is ``rloo`` with 0 for singletons); a direct call may pass
    ``ref_logprobs=None`` when ``beta=0``. Metrics: ``copg/reg_reward_mean`` (mean R_beta over rows),
    ``copg/log_ratio_mean`` (mean l over rows), ``frac_reward_zero_std`` (on R_beta).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"copg: beta must be finite and >= 0, got {beta}")
    if ref_logprobs is None:
        if beta > 0:
            raise ValueError(f"copg: beta={beta} > 0 needs ref_logprobs (the reference model's log-probs)")
        ref_logprobs = old_logprobs
    log_ratio = sequence_log_ratio(old_logprobs, ref_logprobs, response_mask)
    out_dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.float32
    reg = rewards.detach().to(torch.float64) - beta * log_ratio
    adv, metrics = _outcome(reg, group_ids, response_mask, copg_pairwise)
    n = rewards.numel()
    metrics.update({
        "copg/reg_reward_mean": float(reg.mean()) if n else 0.0,
        "copg/log_ratio_mean": float(log_ratio.mean()) if n else 0.0,
    })
    return adv.to(out_dtype), metrics

"""ADORA: GRPO advantages, with whole groups down-weighted where the correct answers are not the longer ones.

Source: Gui & Ren 2025, "Training Reasoning Models with Dynamic Advantage Estimation" (Notion blog,
no arXiv id; a later paper-form title is "ADORA: Training Reasoning Models with Dynamic Advantage
Estimation on Reinforcement Learning"); official code ShadeCloak/ADORA
(``ADORA/verl/trainer/ppo/core_algos.py`` for the LLM variant, ``ADORA_VL/.../experience_maker_vl.py``
``weight_func`` for the VLM one), as summarised in policy.md §12.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, Eps, Scale, _check_inputs, grpo
from rlfold.core.groups import group_index
from rlfold.core.options import group_relative

Variant = Literal["llm", "vlm"]


def adora_group_weights(
    rewards: Tensor,
    group_ids: Tensor,
    lengths: Tensor,
    *,
    lam: float,
    correct_threshold: float,
    length_threshold: int,
    variant: Variant,
) -> tuple[Tensor, Tensor]:
    """Per-row weight [N] (1 or ``lam``, the same on every row of a group) and the per-group flag
    "down-weighted" [G] (groups in ``group_index`` order).

    correct = reward >= correct_threshold; short incorrect = not correct and length < length_threshold.
    A group keeps weight 1 when max length(correct) > mean length(short incorrect); otherwise it gets
    ``lam``. Edge cases: ``variant="llm"`` (verl code) - no correct row: lam; correct rows but no short
    incorrect one: 1. ``variant="vlm"`` (OpenRLHF ``weight_func``) - no correct row: 1; no short
    incorrect row: lam.
    """
    inv, n_groups = group_index(group_ids)
    r = rewards.detach().to(torch.float64)
    length = lengths.detach().to(torch.float64)
    correct = r >= correct_threshold
    short_wrong = ~correct & (length < length_threshold)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    n_correct = zeros.index_add(0, inv, correct.double())
    n_short = zeros.index_add(0, inv, short_wrong.double())
    max_correct = torch.full_like(zeros, -torch.inf).scatter_reduce(
        0, inv, torch.where(correct, length, torch.full_like(length, -torch.inf)), "amax", include_self=True)
    short_total = zeros.index_add(0, inv, torch.where(short_wrong, length, torch.zeros_like(length)))
    mean_short = short_total / n_short.clamp(min=1)
    has_correct, has_short = n_correct > 0, n_short > 0
    longer = has_correct & has_short & (max_correct > mean_short)
    if variant == "llm":
        keep = longer | (has_correct & ~has_short)
    elif variant == "vlm":
        keep = longer | ~has_correct
    else:
        raise ValueError(f"adora: variant must be 'llm' or 'vlm', got {variant!r}")
    down = ~keep
    weight = torch.where(down, torch.full_like(zeros, lam), torch.ones_like(zeros))
    return weight[inv], down


@ADVANTAGES.register("adora")
@group_relative
def adora(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    lam: Annotated[float, Field(ge=0)] = 0.1,
    correct_threshold: Annotated[float, Field(allow_inf_nan=False)] = 1.0,
    length_threshold: Annotated[int, Field(gt=0)] = 8,
    variant: Variant = "llm",
    scale: Scale = "group",
    eps: Eps = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """ADORA group weighting (Gui & Ren 2025, "Training Reasoning Models with Dynamic Advantage Estimation", blog).

    Source: the authors' Notion blog (2025, no arXiv id) and their code ShadeCloak/ADORA (policy.md §12).
    A = w_g * A_GRPO, with A_GRPO from ``grpo`` (``scale``, ``eps`` passed on) and w_g = 1 if
    max |o|(correct) > mean |o|(incorrect with |o| < length_threshold) in the group, else ``lam``
    (edge cases by ``variant``, see ``adora_group_weights``; default ``"llm"``, the verl code's: a group
    with no correct answer gets ``lam``, one with no short incorrect answer keeps 1). |o| is the number
    of valid tokens of ``response_mask``. ``lam = 1`` is GRPO exactly; a group with equal rewards has
    advantage 0 whatever its weight.

    Choices: correct means reward >= ``correct_threshold`` (the code uses a strict ``>`` with 1.01 on
    Logic-RL's reward scale, 0.5 for the VLM's 0/1 reward); our default 1.0 fits this project's
    rewards, e.g. exact_match 1.0 + 0.1 format: correct answers score 1.0 or 1.1, wrong ones 0 or 0.1.
    ``length_threshold`` excludes incorrect answers cut off at the length cap (the code: 3900/4054 of a
    4096-token cap); its default 8 is sized for the tiny-arith recipes' ``max_new_tokens: 8`` (an
    answer of all 8 tokens hit the cap) - set it to your recipe's cap. The weight multiplies the
    advantage after GRPO's normalisation, as the verl code does.
    Metrics: ``frac_reward_zero_std`` (from ``grpo``); ``adora/frac_groups_downweighted`` = fraction
    of groups given ``lam``; ``adora/frac_signal_groups_downweighted`` = the same among groups whose
    rewards are not all equal (the only ones where the weight changes anything).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if not lam >= 0:
        raise ValueError(f"adora: lam must be >= 0, got {lam}")
    if not length_threshold > 0:
        raise ValueError(f"adora: length_threshold must be > 0, got {length_threshold}")
    adv, metrics = grpo(rewards, group_ids, response_mask, scale=scale, eps=eps)
    if rewards.numel() == 0:
        return adv, {**metrics, "adora/frac_groups_downweighted": 0.0, "adora/frac_signal_groups_downweighted": 0.0}
    lengths = response_mask.detach().sum(dim=1)
    weight, down = adora_group_weights(rewards, group_ids, lengths, lam=lam, correct_threshold=correct_threshold,
                                       length_threshold=length_threshold, variant=variant)
    adv = adv * weight.to(adv.dtype)[:, None]
    inv, n_groups = group_index(group_ids)
    r = rewards.detach().to(torch.float64)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    spread = (zeros.scatter_reduce(0, inv, r, "amax", include_self=False)
              > zeros.scatter_reduce(0, inv, r, "amin", include_self=False))
    n_signal = int(spread.sum())
    metrics = {**metrics,
               "adora/frac_groups_downweighted": float(down.double().mean()),
               "adora/frac_signal_groups_downweighted": float((down & spread).sum()) / n_signal if n_signal else 0.0}
    return adv, metrics


__all__ = ["adora", "adora_group_weights"]

"""DECS per-position group-normalised token advantage and kappa curriculum (arXiv 2509.25827).

Registered in ``ADVANTAGES`` as ``decs``; it consumes the per-token rewards of the ``decs`` shaping
part (``rlfold.rewards.decs_shaping.decs``) through ``@needs("token_rewards")``. The kappa data
curriculum is the ``decs_curriculum`` group filter.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, PositiveEps, _check_inputs
from rlfold.algos.group_filters import GROUP_FILTERS, GroupFilterInput, Kept
from rlfold.core.groups import group_index
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["decs", "decs_curriculum", "decs_kappa"]


@ADVANTAGES.register("decs")
@group_relative
@needs("token_rewards")
def decs(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    token_rewards: Tensor,
    eps: PositiveEps = 1e-6,
    padding: Literal["in_group", "excluded"] = "in_group",
) -> tuple[Tensor, dict[str, float]]:
    """DECS token advantage (Lu et al., arXiv 2509.25827, Eq. 10): per-position group normalisation.

    A_ij = (r_ij - mean_g r_gj) / (std_g r_gj + eps), where for token position j the mean and the
    unbiased (n-1) std run over the rows g of row i's group. With ``padding="in_group"`` (the paper:
    Eq. 8 gives padding the reward r_+ 1[correct]) every row of the group takes part, a row that has
    already finished at position j with its sequence reward ``rewards[g]`` (the ``decs`` shaping
    part's scores are r_+ 1[correct]), so a long correct row's redundant tokens are compared with the
    finished rows' r_+ as well; with ``"excluded"`` only the rows whose position j is valid
    (``response_mask``) take part. Choices: eps = 1e-6 is added to the std (the paper writes a bare
    std); positions with fewer than 2 rows taking part get advantage 0 (no group baseline);
    positions where all of them agree get 0 (0 / eps); masked tokens get exactly 0.
    Metrics ``frac_tokens_unpaired`` (valid tokens with fewer than 2 rows taking part at their position in
    the group) and ``token_rewards_mean`` (over valid tokens).
    """
    _check_inputs(rewards, group_ids, response_mask)
    if token_rewards.shape != response_mask.shape:
        raise ValueError(
            f"token_rewards must have the shape of response_mask {tuple(response_mask.shape)}, "
            f"got {tuple(token_rewards.shape)}"
        )
    if not torch.isfinite(token_rewards).all():
        raise ValueError("token_rewards must be finite")
    r = token_rewards.detach()
    r = r if r.dtype.is_floating_point else r.float()
    valid = response_mask.bool()
    if r.numel() == 0:
        return torch.zeros_like(r), {"frac_tokens_unpaired": 0.0, "token_rewards_mean": 0.0}
    if padding == "in_group":
        seq = rewards.detach().to(r.dtype)
        r = torch.where(valid, r, seq[:, None].expand_as(r))
        part = torch.ones_like(valid)
    else:
        r = torch.where(valid, r, torch.zeros_like(r))
        part = valid
    vf = part.to(r.dtype)
    inv, n_groups = group_index(group_ids)
    zeros = torch.zeros((n_groups, r.shape[1]), dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, inv, vf)                      # [G, R] valid rows per position
    mean = zeros.index_add(0, inv, r) / count.clamp(min=1)
    dev = torch.where(part, r - mean[inv], torch.zeros_like(r))
    var = zeros.index_add(0, inv, dev**2) / (count - 1).clamp(min=1)
    std = var.sqrt()
    paired = (count >= 2)[inv] & valid
    adv = torch.where(paired, dev / (std[inv] + eps), torch.zeros_like(r))
    n_valid = int(valid.sum().item())
    metrics = {
        "frac_tokens_unpaired": float((valid & ~paired).sum().item()) / n_valid if n_valid else 0.0,
        "token_rewards_mean": float(r[valid].sum().item()) / n_valid if n_valid else 0.0,
    }
    return adv, metrics


# ----------------------------------------------------------------------------- the kappa curriculum


def decs_kappa(kappa_prev: float, r_now: float, r_prev: float, beta: float, kappa_natural: float) -> float:
    """DECS easy-prompt share (arXiv 2509.25827, Eq. 11): kappa_m = clip(kappa_{m-1} + beta (R_m - R_{m-1}), 0, kappa_m^0)."""
    return min(max(kappa_prev + beta * (r_now - r_prev), 0.0), kappa_natural)


@GROUP_FILTERS.register("decs_curriculum")
@group_relative
@needs("state")
def decs_curriculum(
    inp: GroupFilterInput,
    *,
    state: dict,
    beta: Annotated[float, Field(ge=0)] = 0.2,
    r_init: Annotated[float, Field(ge=0, le=1)] = 0.5,
    nrp_metric: str = "shaping/decs/nrp_ratio",
) -> Kept:
    """DECS curriculum data scheduling (Lu et al., arXiv 2509.25827, Eq. 11): cap the share of easy prompts.

    Easy groups are those whose every row is correct (accuracy >= 0.5); all-wrong groups are dropped
    and refilled (the paper's DAPO-style oversampling); mixed groups are kept. At the first round
    of step m: kappa_m^0 = the easy share of that round's B groups, R_m = the NRP share over correct
    rows (the scorer metric ``nrp_metric``, logged by the ``decs`` shaping part), and
    kappa_m = clip(kappa_{m-1} + beta (R_m - R_{m-1}), 0, kappa_m^0). The step keeps at most
    floor(kappa_m B) easy groups (in the order generated, over all its rounds). Choices where the
    paper is silent: kappa_0 = the first round's natural share; R_0 = ``r_init`` (0.5, the released
    code's initial previous ratio; its kappa learning rate 0.2 is ``beta``); a round with no correct
    row keeps R_m = R_{m-1}. Use it as the only group filter (its quota counts the groups it kept).
    Metrics ``decs/kappa``, ``decs/kappa_natural``, ``decs/nrp_ratio``, ``decs/easy_dropped`` (easy groups refused so far in the step).
    """
    ok = torch.nan_to_num(inp.accuracy.float(), nan=0.0) >= 0.5
    inv, n_groups = group_index(inp.group_ids)
    rows = torch.zeros(n_groups).index_add(0, inv, torch.ones_like(ok, dtype=torch.float32))
    right = torch.zeros(n_groups).index_add(0, inv, ok.float())
    easy, wrong = right == rows, right == 0
    if state.get("step") != inp.step:
        if bool(ok.any()):
            if nrp_metric not in inp.metrics:
                raise ValueError(f"decs_curriculum: the round has no metric {nrp_metric!r}; add the decs shaping "
                                 "part to the recipe's shaping list (or name the metric with nrp_metric)")
            r_now = float(inp.metrics[nrp_metric])
        else:
            r_now = float(state.get("r_prev", r_init))
        natural = float(easy.float().mean()) if n_groups else 0.0
        kappa = decs_kappa(float(state.get("kappa", natural)), r_now, float(state.get("r_prev", r_init)), beta,
                           natural)
        state.update(step=inp.step, kappa=kappa, kappa_natural=natural, r_prev=r_now,
                     quota=int(math.floor(kappa * n_groups + 1e-9)), easy_kept=0, easy_dropped=0)
    keep_group = ~wrong & ~easy
    for g in easy.nonzero().flatten().tolist():
        if state["easy_kept"] < state["quota"]:
            keep_group[g] = True
            state["easy_kept"] += 1
        else:
            state["easy_dropped"] += 1
    metrics = {"decs/kappa": state["kappa"], "decs/kappa_natural": state["kappa_natural"],
               "decs/nrp_ratio": state["r_prev"], "decs/easy_dropped": float(state["easy_dropped"])}
    return Kept(keep=keep_group[inv], metrics=metrics)

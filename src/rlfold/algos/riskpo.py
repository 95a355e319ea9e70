"""RiskPO: Mixed Value-at-Risk advantages over bundles of prompts (Ren et al. 2025, arXiv 2510.00911).

"RiskPO: Risk-based Policy Optimization via Verifiable Reward for LLM Post-Training" replaces the
mean reward of GRPO with a risk measure of "paper" scores. B consecutive prompts of the batch form a
bundle; the k-th response of every question in the bundle forms paper k, with score
X_k = sum over the bundle's questions of that response's reward. With a = q_alpha and b = q_beta,
quantiles of the bundle's paper scores, each paper gets the weight of the Mixed VaR

    g_R(X) = [(X - a)^+ - (X - b)^+ + (a - b) 1{natural_baseline}] / (beta - alpha)   (range VaR)
    g_C(X) = -(a - X)^+ / alpha                                                        (lower CVaR)
    g(X)   = (w_mix g_C + g_R) / (w_mix + 1)

optionally divided by the std of the bundle's paper scores, and the responses of the paper share g
by a credit rule. The official code is RTkenny/RiskPO, ``verl/trainer/ppo/core_algos.py``
(``compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking``) and ``ray_trainer.py`` (bundles,
quantile tracking).

The online quantile tracker of the paper (``use_q_track_mode`` track / mix) keeps state across steps:
the tracker is pure functions (``quantile_tracker_init``, ``quantile_tracker_step``, ``tracked_quantiles``)
and the registered part keeps its value under the key ``riskpo`` of the trainer input ``part_state``
(the run's checkpointed dict of part state), so a resumed run tracks on exactly.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, Eps, _broadcast, _check_inputs
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = [
    "QUANTILE_GRID",
    "bundle_papers",
    "mvar_advantage",
    "mvar_weight",
    "quantile_tracker_init",
    "quantile_tracker_step",
    "quantile_tracker_update",
    "quantile_values",
    "riskpo",
    "tracked_quantiles",
]

Credit = Literal["uniform", "std", "score", "sum-mean"]
Level = Annotated[float, Field(gt=0, lt=1)]

# The official tracker's grid of quantile levels alpha_j = 0.05, 0.10, ..., 0.95.
QUANTILE_GRID = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)

# The official code's thresholds: a question whose rewards have std <= 1e-3 gets std 1 in the `std`
# credit; a paper whose centred rewards sum to |S| <= 1e-6 shares g equally in the `sum-mean` credit.
_STD_FLOOR = 1e-3
_SUM_FLOOR = 1e-6


# ----- bundles and papers ------------------------------------------------------------------------
def _rows_by_group(group_ids: Tensor) -> list[Tensor]:
    """The rows of every group, groups in order of first appearance, rows in batch order."""
    order: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        order.setdefault(g, []).append(i)
    return [torch.tensor(rows, dtype=torch.long, device=group_ids.device) for rows in order.values()]


def bundle_papers(group_ids: Tensor, bundle_size: int) -> list[Tensor]:
    """Per bundle, the [B, K] row index of paper k's response to question q.

    Groups are taken in order of first appearance in the batch (consecutive prompts); bundle j holds
    groups j*B .. j*B + B - 1. K is the smallest group size of the bundle (the official code's
    papers "without replacement"): the k-th row of each group, in batch order, belongs to paper k,
    and rows past K belong to no paper. Raises when the number of groups is not a multiple of B.
    """
    groups = _rows_by_group(group_ids)
    if len(groups) % bundle_size:
        raise ValueError(
            f"riskpo: the batch has {len(groups)} prompt groups, not a multiple of bundle_size={bundle_size}; "
            f"set train.prompts_per_step to a multiple of {bundle_size} (and keep group filters from "
            "returning fewer groups)"
        )
    out = []
    for j in range(0, len(groups), bundle_size):
        members = groups[j: j + bundle_size]
        k = min(int(r.numel()) for r in members)
        out.append(torch.stack([r[:k] for r in members]))
    return out


# ----- the Mixed VaR weight ----------------------------------------------------------------------
def mvar_weight(x: Tensor, a: Tensor | float, b: Tensor | float, *, alpha: float, beta: float, w_mix: float,
                natural_baseline: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(g, g_R, g_C) of paper scores ``x`` for quantile values a <= b at levels alpha < beta.

    g_R = [(x - a)^+ - (x - b)^+ + (a - b) 1{natural_baseline}] / (beta - alpha),
    g_C = -(a - x)^+ / alpha, g = (w_mix g_C + g_R) / (w_mix + 1). ``w_mix = 0`` is the pure range VaR
    (the official ``use_mixing_risk_measure=False``). The official code adds 1e-6 to beta - alpha and
    to alpha; here they divide exactly (alpha > 0 and beta > alpha are enforced).
    """
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
    g_r = (x - a).clamp(min=0) - (x - b).clamp(min=0)
    if natural_baseline:
        g_r = g_r + (a - b)
    g_r = g_r / (beta - alpha)
    g_c = -(a - x).clamp(min=0) / alpha
    return (w_mix * g_c + g_r) / (w_mix + 1), g_r, g_c


# ----- the online quantile tracker (pure functions; see the module docstring) --------------------
def quantile_tracker_init(x: Tensor, levels: Tensor = QUANTILE_GRID) -> Tensor:
    """The tracker's first value: the empirical quantiles (linear interpolation) of the paper scores
    ``x`` (all bundles of the first batch together) at ``levels``."""
    if x.numel() == 0:
        raise ValueError("quantile_tracker_init: no paper scores")
    return torch.quantile(x.to(torch.float64).flatten(), levels.to(torch.float64))


def quantile_tracker_step(q: Tensor, x: Tensor, lr: float, levels: Tensor = QUANTILE_GRID) -> Tensor:
    """One SGD step of the pinball loss per level: q_j <- q_j + lr (alpha_j - mean_k 1{x_k < q_j}).

    ``q`` [J] is the tracked quantile at each of ``levels`` [J]; ``x`` holds this batch's paper scores
    (all bundles together). Pure: returns the new tensor, ``q`` is unchanged."""
    if q.shape != levels.shape:
        raise ValueError(f"quantile_tracker_step: q {tuple(q.shape)} and levels {tuple(levels.shape)} differ")
    if x.numel() == 0:
        raise ValueError("quantile_tracker_step: no paper scores")
    q = q.to(torch.float64)
    below = (x.to(torch.float64).flatten()[None, :] < q[:, None]).to(torch.float64).mean(dim=1)
    return q + lr * (levels.to(torch.float64) - below)


def tracked_quantiles(q: Tensor, alpha: float, beta: float, levels: Tensor = QUANTILE_GRID) -> tuple[float, float]:
    """(a, b): the tracked quantiles at the grid levels nearest to alpha and beta (the official rule)."""
    i = int(torch.argmin((levels - alpha).abs()))
    j = int(torch.argmin((levels - beta).abs()))
    return float(q[i]), float(q[j])


# ----- the advantage part -------------------------------------------------------------------------
def _credit(g: Tensor, r: Tensor, q_std: Tensor, q_mean: Tensor, credit: str, eps: float) -> Tensor:
    """[B, K] advantage of each response of the papers from the paper weights g [K] and rewards r [B, K]."""
    if credit == "uniform":
        return g[None, :].expand_as(r).clone()
    if credit == "score":
        return torch.where(r > 0, 0.5, 1.5).to(r.dtype) * g[None, :]
    if credit == "std":
        return g[None, :] / (q_std[:, None] + eps)
    ratio = r - q_mean[:, None]  # sum-mean
    total = ratio.sum(dim=0)
    shared = ratio / torch.where(total.abs() > _SUM_FLOOR, total, torch.ones_like(total))[None, :]
    shared = torch.where((total.abs() > _SUM_FLOOR)[None, :], shared, torch.full_like(r, 1.0 / r.shape[0]))
    return g[None, :] * shared


def quantile_tracker_update(q: Tensor | None, x: Tensor, lr: float, levels: Tensor = QUANTILE_GRID) -> Tensor:
    """The tracker after one batch of paper scores ``x``: the batch's empirical quantiles when there is no
    tracker yet (``q`` None; the official first step initialises and does not step), else one SGD step."""
    return quantile_tracker_init(x, levels) if q is None else quantile_tracker_step(q, x, lr, levels)


def quantile_values(mode: str, batch_a: Tensor, batch_b: Tensor,
                    tracked: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """(a, b) one bundle uses: ``batch`` its batch quantiles; ``track`` the tracked ones; ``mix`` their
    average. Before the tracker has a value (the first step) every mode uses the batch quantiles."""
    if mode == "batch" or tracked is None:
        return batch_a, batch_b
    ta, tb = (torch.as_tensor(v, dtype=batch_a.dtype, device=batch_a.device) for v in tracked)
    if mode == "track":
        return ta, tb
    if mode == "mix":
        return (ta + batch_a) / 2, (tb + batch_b) / 2
    raise ValueError(f"riskpo: unknown q_track_mode {mode!r}")


def mvar_advantage(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    bundle_size: int,
    quantile_down: float,
    quantile_up: float,
    w_mix: float,
    natural_baseline: bool,
    norm_by_std: bool,
    credit: str,
    eps: float,
    q_track_mode: str = "batch",
    tracked: tuple[float, float] | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """([N] RiskPO advantage per row, all paper scores of the batch, metrics); see ``riskpo``.
    ``tracked`` = (a, b) of the online tracker, used as ``quantile_values`` says."""
    if not quantile_down < quantile_up:
        raise ValueError(f"riskpo: quantile_down={quantile_down} must be below quantile_up={quantile_up}")
    adv = torch.zeros_like(rewards)
    papers = bundle_papers(group_ids, bundle_size)
    stats: dict[str, list[Tensor]] = {"x": [], "a": [], "b": [], "g": [], "below_a": [], "above_b": []}
    for idx in papers:  # idx [B, K]
        r = rewards[idx]
        x = r.sum(dim=0)  # [K] paper scores
        if x.numel() == 1:
            a = b = x[0]
            std = torch.ones((), dtype=x.dtype, device=x.device)
        else:
            a = torch.quantile(x, quantile_down)
            b = torch.quantile(x, quantile_up)
            std = x.std()
        a, b = quantile_values(q_track_mode, a, b, tracked)
        g, _, _ = mvar_weight(x, a, b, alpha=quantile_down, beta=quantile_up, w_mix=w_mix,
                              natural_baseline=natural_baseline)
        if norm_by_std:
            g = g / (std + eps)
        # per-question statistics over all rows of the question (not only the first K)
        q_std = torch.empty(idx.shape[0], dtype=rewards.dtype, device=rewards.device)
        q_mean = torch.empty_like(q_std)
        for qi in range(idx.shape[0]):
            rq = rewards[group_ids == group_ids[idx[qi, 0]]]
            s = rq.std() if rq.numel() > 1 else rq.new_tensor(0.0)
            q_std[qi] = s if s > _STD_FLOOR else 1.0
            q_mean[qi] = rq.mean()
        adv[idx] = _credit(g, r, q_std, q_mean, credit, eps)
        stats["x"].append(x)
        stats["g"].append(g)
        stats["a"].append(a.reshape(1))
        stats["b"].append(b.reshape(1))
        stats["below_a"].append((x < a).to(x.dtype))
        stats["above_b"].append((x > b).to(x.dtype))
    cat = {k: torch.cat(v) for k, v in stats.items()}
    metrics = {
        "riskpo/paper_score_mean": float(cat["x"].mean()),
        "riskpo/q_down_mean": float(cat["a"].mean()),
        "riskpo/q_up_mean": float(cat["b"].mean()),
        "riskpo/frac_below_q_down": float(cat["below_a"].mean()),
        "riskpo/frac_above_q_up": float(cat["above_b"].mean()),
        "riskpo/paper_weight_mean": float(cat["g"].mean()),
        "riskpo/n_bundles": float(len(papers)),
    }
    return adv, cat["x"], metrics


STATE_KEY = "riskpo"  # the part's key in ``part_state``: {"q": the tracked quantiles [19] float64}


@ADVANTAGES.register("riskpo")
@group_relative
@needs("part_state")
def riskpo(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    bundle_size: Annotated[int, Field(ge=1)] = 5,
    quantile_down: Level = 0.2,
    quantile_up: Level = 0.9,
    w_mix: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.5,
    natural_baseline: bool = True,
    norm_by_std: bool = True,
    credit: Credit = "uniform",
    q_track_mode: Literal["batch", "track", "mix"] = "batch",
    lr_q: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.1,
    eps: Eps = 1e-6,
    part_state: dict | None,
) -> tuple[Tensor, dict[str, float]]:
    """RiskPO Mixed-VaR bundle advantage (Ren et al. 2025, RiskPO, arXiv 2510.00911).

    Groups in order of first appearance are the consecutive prompts; every ``bundle_size`` of them form
    a bundle (the number of groups must be a multiple of it) and paper k takes the k-th row of each
    (K = the bundle's smallest group; rows past K get 0, as in the official code). Paper scores
    X_k = sum of the rewards of paper k. ``q_track_mode=batch``: a, b = torch.quantile (linear) of the
    bundle's X at ``quantile_down``, ``quantile_up`` (a = b = X and std 1 for a single paper). Then
    g = (w_mix g_C + g_R) / (w_mix + 1) (``mvar_weight``), divided by (std(X) + eps) (unbiased) if
    ``norm_by_std``. ``credit``: ``uniform`` A = g; ``std`` A = g / (s_q + eps), s_q the unbiased std of
    question q's rewards (all its rows), replaced by 1 when <= 1e-3 or undefined; ``score`` A = 0.5 g
    if R > 0 else 1.5 g; ``sum-mean`` A = g (R_i - m_q) / sum_paper (R_j - m_q), equal shares g / B when
    that sum is <= 1e-6 in size. Constant groups are not zeroed (a question whose rewards are equal
    still takes its paper's weight); a bundle whose rewards are all equal gets exactly 0. The paper's
    ``use_mean_as_baseline`` (trapezoid baseline over the tracked grid) is not offered.

    ``q_track_mode``: ``track`` takes a, b from the online tracker (``quantile_tracker_step`` with rate
    ``lr_q`` over the 19-level grid, the grid levels nearest alpha and beta), ``mix`` the average of the
    tracked and the batch quantiles; at the first step both use the batch quantiles, and the tracker starts
    at that batch's empirical quantiles (the official order: this batch's a, b come from the tracker before
    it sees this batch). Its value lives in ``part_state["riskpo"]`` (checkpointed).
    """
    _check_inputs(rewards, group_ids, response_mask)
    rewards = (rewards if rewards.dtype.is_floating_point else rewards.float()).detach()
    if rewards.numel() == 0:
        return _broadcast(torch.zeros_like(rewards), response_mask), {}
    tracking = q_track_mode != "batch"
    if tracking and part_state is None:
        raise ValueError(f"riskpo: q_track_mode={q_track_mode!r} keeps its quantile tracker in the trainer input "
                         "'part_state', which this caller did not pass")
    q = (part_state.get(STATE_KEY) or {}).get("q") if tracking else None
    tracked = tracked_quantiles(q, quantile_down, quantile_up) if q is not None else None
    adv, x, metrics = mvar_advantage(
        rewards, group_ids, bundle_size=bundle_size, quantile_down=quantile_down, quantile_up=quantile_up,
        w_mix=w_mix, natural_baseline=natural_baseline, norm_by_std=norm_by_std, credit=credit, eps=eps,
        q_track_mode=q_track_mode, tracked=tracked)
    if tracking:
        new_q = quantile_tracker_update(q, x, lr_q)
        part_state[STATE_KEY] = {"q": new_q}
        a, b = tracked_quantiles(new_q, quantile_down, quantile_up)
        metrics.update({"riskpo/tracked_q_down": a, "riskpo/tracked_q_up": b})
    return _broadcast(adv, response_mask), metrics

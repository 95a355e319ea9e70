"""SPAE: Step Potential Advantage Estimation (Wu et al. 2026, arXiv 2601.03823).

The policy is probed at the end of every reasoning step k of response i (the trainer inputs
``spae_steps`` and ``spae_potential``, ``rlfold.trainers.step_potential``) for its correctness Acc_k and
confidence Conf_k, combined into the step potential

    Phi_k = 1.5 Acc_k Conf_k + 0.5 Acc_k - Conf_k  in [-1, 1]   (Phi(1,1) = 1, Phi(0,1) = -1, Phi(0,0) = 0).

The advantage of token j in step k of row i is

    A_ij = A_i^grp f_ik + xi g_ik,   A_i^grp = R_i - mean_group (no std),
    f_ik = 1 - alpha (1 - exp(-C_sat_ik)),  C_sat_ik = #{steps l < k of row i with Phi_il > eps_sat},
    g_ik = exp(u_ik) - E_batch[exp(u)],     u = min-max normalised dPhi,  dPhi_ik = Phi_ik - Phi_i(k-1), dPhi_i1 = 0,

then a global z-score over the valid tokens of the batch. Choices of ours where the paper leaves it
open (policy.md section 16): the min-max range and the mean E_batch are taken over every (row, step) pair
of the batch, each step counted once (not weighted by its tokens), dPhi_i1 = 0 included; when all dPhi
are equal, u = 0 and g = 0. The z-score is ``masked_whiten`` (mean and Bessel-corrected variance over the
valid tokens, (A - mean) / sqrt(var + eps)). eps_sat is not given in the paper: 0.8, the potential of
Acc = Conf = 0.92 (unverified). alpha = xi = 0 gives A_ij = R_i - mean_group exactly (Dr. GRPO /
RF-B), before the z-score.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, PositiveEps, _check_inputs, dr_grpo, masked_whiten
from rlfold.core.options import group_relative
from rlfold.core.registry import needs

__all__ = ["difference_shaping", "per_step_potential", "potential_gains", "saturation_counts", "saturation_factor",
           "spae", "spae_token_advantages", "step_potential"]

Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def step_potential(acc: Tensor, conf: Tensor) -> Tensor:
    """Phi = 1.5 Acc Conf + 0.5 Acc - Conf (elementwise)."""
    return 1.5 * acc * conf + 0.5 * acc - conf


def saturation_factor(c_sat: Tensor, alpha: float) -> Tensor:
    """f = 1 - alpha (1 - exp(-C_sat)): 1 before the potential saturates, towards 1 - alpha after."""
    return 1.0 - alpha * (1.0 - torch.exp(-c_sat))


def per_step_potential(steps: Tensor, potential: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """([N, S] Phi of each step, [N, S] bool step exists) from the token maps: ``steps`` [N, R] long (the
    step index of each token, -1 off the mask) and ``potential`` [N, R] (Phi of each token's step)."""
    valid = mask.bool()
    n = steps.shape[0]
    width = int(steps[valid].max().item()) + 1 if valid.any() else 0
    phi = torch.zeros(n, width, dtype=torch.float64, device=potential.device)
    exists = torch.zeros(n, width, dtype=torch.bool, device=potential.device)
    rows = torch.arange(n, device=steps.device)[:, None].expand_as(steps)[valid]
    cols = steps[valid]
    phi[rows, cols] = potential[valid].to(torch.float64)
    exists[rows, cols] = True
    return phi, exists


def saturation_counts(phi: Tensor, exists: Tensor, eps_sat: float) -> Tensor:
    """[N, S] C_sat: per step, how many earlier steps of its row have Phi > eps_sat."""
    sat = ((phi > eps_sat) & exists).to(phi.dtype)
    return sat.cumsum(dim=1) - sat


def potential_gains(phi: Tensor, exists: Tensor) -> Tensor:
    """[N, S] dPhi_k = Phi_k - Phi_(k-1), 0 at each row's first step and where no step exists."""
    d = torch.zeros_like(phi)
    d[:, 1:] = phi[:, 1:] - phi[:, :-1]
    return torch.where(exists, d, torch.zeros_like(d))


def difference_shaping(d_phi: Tensor, exists: Tensor) -> Tensor:
    """[N, S] g = exp(u) - mean exp(u), u = (dPhi - min) / (max - min) over the batch's steps (u = 0 when
    max = min); min, max and mean over the existing steps, each counted once; 0 where no step exists."""
    if not exists.any():
        return torch.zeros_like(d_phi)
    vals = d_phi[exists]
    lo, hi = vals.min(), vals.max()
    u = (d_phi - lo) / (hi - lo) if bool(hi > lo) else torch.zeros_like(d_phi)
    e = torch.exp(u)
    g = e - e[exists].mean()
    return torch.where(exists, g, torch.zeros_like(g))


def spae_token_advantages(rewards: Tensor, group_ids: Tensor, response_mask: Tensor, steps: Tensor,
                          potential: Tensor, *, alpha: float = 0.5, xi: float = 0.5,
                          eps_sat: float = 0.8) -> tuple[Tensor, dict[str, float]]:
    """[N, R] A_ij = A_i^grp f_ik + xi g_ik before the z-score (module docstring), 0 off the mask."""
    _check_inputs(rewards, group_ids, response_mask)
    for name, t in (("spae_steps", steps), ("spae_potential", potential)):
        if tuple(t.shape) != tuple(response_mask.shape):
            raise ValueError(f"spae: {name} must have the shape of response_mask {tuple(response_mask.shape)}, "
                             f"got {tuple(t.shape)}")
    valid = response_mask.bool()
    bad = valid & (steps < 0)
    if bad.any():
        raise ValueError(f"spae: spae_steps is negative on valid tokens of rows {bad.any(1).nonzero().flatten().tolist()[:10]}")
    if not torch.isfinite(potential[valid]).all():
        raise ValueError("spae: spae_potential must be finite on valid tokens")
    grp, metrics = dr_grpo(rewards, group_ids, response_mask)
    phi, exists = per_step_potential(steps, potential, response_mask)
    c_sat = saturation_counts(phi, exists, eps_sat)
    f = saturation_factor(c_sat, alpha)
    g = difference_shaping(potential_gains(phi, exists), exists)
    idx = steps.clamp(min=0).long()
    f_tok = f.gather(1, idx) if f.shape[1] else torch.ones(steps.shape, dtype=f.dtype)
    g_tok = g.gather(1, idx) if g.shape[1] else torch.zeros(steps.shape, dtype=g.dtype)
    adv = grp * f_tok.to(grp.dtype) + xi * g_tok.to(grp.dtype)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    n_steps = max(int(exists.sum().item()), 1)
    metrics.update({
        "spae/phi_mean": float(phi[exists].sum().item()) / n_steps,
        "spae/c_sat_mean": float(c_sat[exists].sum().item()) / n_steps,
        "spae/f_mean": float(f[exists].sum().item()) / n_steps if exists.any() else 1.0,
        "spae/g_abs_mean": float(g[exists].abs().sum().item()) / n_steps,
        "spae/steps_mean": float(exists.sum().item()) / max(rewards.shape[0], 1),
    })
    return adv, metrics


@ADVANTAGES.register("spae")
@group_relative
@needs("spae_steps", "spae_potential")
def spae(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    spae_steps: Tensor,
    spae_potential: Tensor,
    alpha: Unit = 0.5,
    xi: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5,
    eps_sat: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] = 0.8,
    normalize: bool = True,
    eps: PositiveEps = 1e-8,
) -> tuple[Tensor, dict[str, float]]:
    """SPAE step-potential advantage (Wu et al. 2026, Step Potential Advantage Estimation, arXiv 2601.03823).

    ``spae_token_advantages`` (saturation penalty f and difference shaping g on the Dr. GRPO advantage),
    then, with ``normalize``, the global z-score ``masked_whiten`` over the valid tokens (mean and
    Bessel-corrected variance, (A - mean) / sqrt(var + eps)). Metrics ``spae/phi_mean``, ``spae/c_sat_mean``,
    ``spae/f_mean``, ``spae/g_abs_mean`` (over the batch's steps), ``spae/steps_mean`` (steps per row) and
    ``frac_reward_zero_std``.
    """
    adv, metrics = spae_token_advantages(rewards, group_ids, response_mask, spae_steps, spae_potential,
                                         alpha=alpha, xi=xi, eps_sat=eps_sat)
    return (masked_whiten(adv, response_mask, eps) if normalize else adv), metrics

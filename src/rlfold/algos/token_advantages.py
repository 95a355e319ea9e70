"""Token-level advantage estimators: returns, REINFORCE++, ReMax and (E)GAE.

Every registered part has the signature
``fn(rewards [N], group_ids [N], response_mask [N, R], *, <needed inputs>, <hyper>)``
returning ``(advantages [N, R], metrics)``. The needed inputs are declared with ``@needs`` and
supplied by the trainer as keyword tensors:

* ``token_rewards`` [N, R]: the sequence reward on the last valid token (minus the per-token KL
  penalty when the KL is in the reward), 0 on masked tokens;
* ``values`` [N, R]: critic value V(s_t) of the state before response token t, 0 on masked tokens;
* ``baseline_rewards`` [N]: reward of the greedy response to the row's prompt (ReMax);
* ``truncated`` [N] bool: the row was cut at the generation limit.

Recursions run backwards over the valid tokens of each row only: a masked position inside a row
(e.g. an observation span) is skipped and the running return / GAE accumulator / next value pass
through it unchanged (verl convention), so the discount counts valid tokens. Advantages are exactly
0 on masked tokens.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, PositiveEps, _check_inputs, masked_whiten
from rlfold.core.masked import masked_mean
from rlfold.core.registry import needs

__all__ = ["discounted_returns", "gae", "gae_targets", "masked_whiten", "reinforce_pp", "remax"]


Unit = Annotated[float, Field(ge=0, le=1)]  # a discount or a GAE lambda


def _float(x: Tensor) -> Tensor:
    x = x.detach()
    return x if x.dtype.is_floating_point else x.float()


def _check_token_input(name: str, x: Tensor, response_mask: Tensor) -> None:
    if x.shape != response_mask.shape:
        raise ValueError(
            f"{name} must have the shape of response_mask {tuple(response_mask.shape)}, "
            f"got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")


def _check_row_input(name: str, x: Tensor, response_mask: Tensor) -> None:
    if x.shape != (response_mask.shape[0],):
        n = response_mask.shape[0]
        raise ValueError(f"{name} must be [N] with N={n}, got {tuple(x.shape)}")


def _check_unit(name: str, x: float) -> None:
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {x}")


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go G_t = r_t + gamma * G_{t+1} over the valid tokens of each row; 0 where masked.

    ``G_t = sum_{s >= t, valid} gamma^(k_s - k_t) r_s`` where k counts valid tokens, so with the
    usual trailing padding the exponent is ``s - t``; masked positions contribute nothing.
    """
    valid = mask.bool()
    r = torch.where(valid, token_rewards, torch.zeros_like(token_rewards))
    out = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        running = torch.where(valid[:, t], r[:, t] + gamma * running, running)
        out[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return out


def gae_targets(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    truncated: Tensor | None,
    *,
    gamma: float,
    lam: float,
    egae: bool = False,
) -> tuple[Tensor, Tensor]:
    """Unwhitened GAE advantages and value targets ``returns = advantages + values``; 0 if masked.

    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1} over the valid tokens.
    The value after the last valid token is 0 for a finished row; with ``egae`` a ``truncated`` row
    bootstraps it as V(s_l) ~= V(s_{l-1}), the value at its last valid token (T-PPO EGAE).
    Called once with the actor's lambda and once with the critic's (VC-PPO decoupled GAE:
    lam=1 and gamma=1 give Monte-Carlo returns independent of V for finished rows).
    """
    valid = mask.bool()
    r = torch.where(valid, token_rewards, torch.zeros_like(token_rewards))
    v = torch.where(valid, values.to(r.dtype), torch.zeros_like(r))
    n, length = r.shape
    next_value = r.new_zeros(n)
    if egae and truncated is not None and length > 0:
        positions = torch.arange(length, device=r.device).expand(n, length)
        last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=1)
        v_last = v.gather(1, last.clamp(min=0)[:, None]).squeeze(1)
        boot = truncated.to(device=r.device).bool() & (last >= 0)
        next_value = torch.where(boot, v_last, next_value)
    acc = r.new_zeros(n)
    adv = torch.zeros_like(r)
    for t in reversed(range(length)):
        m = valid[:, t]
        a = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * acc
        acc = torch.where(m, a, acc)
        next_value = torch.where(m, v[:, t], next_value)
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
    returns = torch.where(valid, adv + v, torch.zeros_like(adv))
    return adv, returns


@ADVANTAGES.register("reinforce_pp")
@needs("token_rewards")
def reinforce_pp(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    token_rewards: Tensor,
    gamma: Unit = 1.0,
    eps: PositiveEps = 1e-8,
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE++ whitened discounted return (Hu 2025, arXiv 2501.03262).

    G_t = sum_{s >= t} gamma^(s-t) r_s over the row's valid tokens (``token_rewards``, which carry
    the in-reward KL penalty when enabled), then ``masked_whiten`` over all valid tokens of the
    batch. ``rewards`` and ``group_ids`` are validated but not used. Metric ``returns_mean``.
    """
    _check_inputs(rewards, group_ids, response_mask)
    _check_token_input("token_rewards", token_rewards, response_mask)
    _check_unit("gamma", gamma)
    returns = discounted_returns(_float(token_rewards), response_mask, gamma)
    metrics = {"returns_mean": float(masked_mean(returns, response_mask.bool()).item())}
    return masked_whiten(returns, response_mask, eps), metrics


@ADVANTAGES.register("remax")
@needs("token_rewards", "baseline_rewards")
def remax(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    token_rewards: Tensor,
    baseline_rewards: Tensor,
    gamma: Unit = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """ReMax greedy-baseline advantage (Li et al. 2023, arXiv 2310.10505).

    A_t = G_t - b_i with G_t the reward-to-go of ``token_rewards`` (discount ``gamma``) and b_i the
    reward of the greedy response to the row's prompt (``baseline_rewards``); no whitening (verl).
    Metric ``baseline_mean``.
    """
    _check_inputs(rewards, group_ids, response_mask)
    _check_token_input("token_rewards", token_rewards, response_mask)
    _check_row_input("baseline_rewards", baseline_rewards, response_mask)
    if not torch.isfinite(baseline_rewards).all():
        raise ValueError("baseline_rewards must be finite")
    _check_unit("gamma", gamma)
    returns = discounted_returns(_float(token_rewards), response_mask, gamma)
    base = _float(baseline_rewards).to(returns.dtype)
    adv = returns - base[:, None]
    adv = torch.where(response_mask.bool(), adv, torch.zeros_like(adv))
    base_mean = float(base.mean().item()) if base.numel() else 0.0
    return adv, {"baseline_mean": base_mean}


@ADVANTAGES.register("gae")
@needs("token_rewards", "values", "truncated")
def gae(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    token_rewards: Tensor,
    values: Tensor,
    truncated: Tensor,
    gamma: Unit = 1.0,
    lam: Unit = 0.95,
    whiten: bool = True,
    egae: bool = False,
    eps: PositiveEps = 1e-8,
) -> tuple[Tensor, dict[str, float]]:
    """PPO GAE (Schulman et al. 2015, arXiv 1506.02438); EGAE from T-PPO (arXiv 2506.15050).

    A_t = delta_t + gamma lam A_{t+1}, delta_t = r_t + gamma V_{t+1} - V_t over the valid tokens
    (see ``gae_targets``); the value after a finished row is 0, and with ``egae`` a truncated row
    bootstraps V(s_l) ~= V(s_{l-1}). With ``whiten`` the advantages are whitened over all valid
    tokens of the batch (verl). The critic computes its own targets with ``gae_targets`` and its own
    lambda (VC-PPO, arXiv 2503.01491). Metrics ``returns_mean`` and ``advantages_mean_raw``.
    """
    _check_inputs(rewards, group_ids, response_mask)
    _check_token_input("token_rewards", token_rewards, response_mask)
    _check_token_input("values", values, response_mask)
    _check_row_input("truncated", truncated, response_mask)
    _check_unit("gamma", gamma)
    _check_unit("lam", lam)
    adv, returns = gae_targets(
        _float(token_rewards),
        _float(values),
        response_mask,
        truncated,
        gamma=gamma,
        lam=lam,
        egae=egae,
    )
    valid = response_mask.bool()
    metrics = {
        "returns_mean": float(masked_mean(returns, valid).item()),
        "advantages_mean_raw": float(masked_mean(adv, valid).item()),
    }
    if whiten:
        adv = masked_whiten(adv, response_mask, eps)
    return adv, metrics

"""Per-token policy-gradient losses (quantities to minimise); aggregation happens elsewhere.

Every part has the signature
``fn(logprobs, old_logprobs, advantages, mask, *, <keyword hyperparameters with defaults>)
-> (per_token_loss [N, R], metrics)``; all tensors are ``[N, R]``. A part declares exactly the
keywords it uses (no ``**kwargs``): the trainer passes only the declared ones, taken from
``clip_low``, ``clip_high``, ``clip_c`` and the user's ``algo.policy_loss_kwargs``.
The per-token loss is zero on masked tokens and is NOT reduced: pass it to an ``Aggregation``
(``rlfold.algos.aggregation``). ``metrics`` holds detached 0-dim tensors, so that logging them does
not force a device synchronisation; the shared names are ``pg_clipfrac``, ``pg_clipfrac_lower``
and ``ppo_kl`` (masked mean of old_logp - logp), each reported only where it means something.

Registered: ``ppo_clip`` (PPO / DAPO clip-higher / dual-clip), ``gspo`` and ``gspo_token``
(sequence-level ratio), ``cispo`` (clipped, stop-gradient IS weight), ``reinforce`` (no ratio)
and ``sapo`` (soft sigmoid gate). Every log-ratio logp - old_logp is clamped to [-20, 20].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.importance import behaviour_log_ratio, bound_weights
from rlfold.core import registry
from rlfold.core.groups import LOG_RATIO_CLAMP
from rlfold.core.masked import masked_mean

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]

POLICY_LOSSES = registry.POLICY_LOSSES

# Option domains (checked when a config loads; the losses keep their own checks for direct calls).
# 1 - clip_low is a lower bound on a ratio (> 0), so clip_low < 1; CISPO's 1.0 means "no lower bound".
ClipLow = Annotated[float, Field(ge=0, lt=1)]
CispoClipLow = Annotated[float, Field(ge=0, le=1)]
ClipHigh = Annotated[float, Field(ge=0)]
DualClip = Annotated[float, Field(gt=1)]
Temperature = Annotated[float, Field(gt=0)]


def _check_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> None:
    shape = tuple(logprobs.shape)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, R], got shape {shape}")
    for name, t in (("old_logprobs", old_logprobs), ("advantages", advantages), ("mask", mask)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have the shape of logprobs {shape}, got {tuple(t.shape)}")


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: ClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    clip_c: DualClip | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) with clip-higher and dual-clip.

    r = exp(clamp(logp - old_logp, -20, 20));
    l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)). ``clip_high > clip_low`` is DAPO's
    Clip-Higher (Yu et al. 2025, arXiv 2503.14476). With ``clip_c`` (> 1), the dual clip of
    Ye et al. 2020 (arXiv 1912.09729) bounds the loss of negative-advantage tokens:
    l = min(l, -A clip_c) where A < 0.
    Metrics: ``pg_clipfrac`` = fraction of valid tokens where the clipped term is the active max;
    ``pg_clipfrac_lower`` = fraction where the dual clip applied; ``ppo_kl`` = masked mean of
    old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low} and {clip_high}")
    _check_dual_clip(clip_c)

    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    loss, clip_active = _clipped_surrogate(advantages, ratio, clip_low, clip_high)
    loss, dual_active = _dual_clip(loss, advantages, clip_c)

    loss = torch.where(mask.bool(), loss, torch.zeros_like(loss))
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": masked_mean(clip_active.to(loss.dtype), mask).detach(),
            "pg_clipfrac_lower": masked_mean(dual_active.to(loss.dtype), mask).detach(),
            "ppo_kl": masked_mean(-log_ratio, mask).detach(),
        }
    return loss, metrics


@POLICY_LOSSES.register("decoupled_ppo")
@registry.needs("behaviour_logprobs")
def decoupled_ppo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    behaviour_logprobs: Tensor,
    clip_low: ClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    cap: Annotated[float, Field(gt=0)] = 2.0,
    mode: Literal["mask", "truncate"] = "mask",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled PPO (Hilton et al. 2022, arXiv 2110.00641; AReaL, arXiv 2505.24298): PPO's clip against the
    proximal policy, times the behaviour importance weight.

    ``old_logprobs`` is the proximal policy (the one the update starts from) and ``behaviour_logprobs`` the
    engine's log-probs of the policy that sampled the row. w = sg(exp(clamp(old - behav, -20, 20))); with
    ``mode: mask`` (AReaL's ``behav_imp_weight_cap``) tokens with w > ``cap`` get weight 0, with ``truncate``
    w is min(w, cap) (truncated IS). l = w * max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)),
    r = exp(clamp(logp - old, -20, 20)). Equal to ``ppo_clip`` times the ``tis`` selection's token weights;
    because it reads the proximal log-probs inside the loss, a one-step update can take them from its own
    forward (``rollout.recompute_logprobs: false``). Metrics: ``pg_clipfrac``, ``ppo_kl`` as ``ppo_clip``;
    ``behav_weight_mean`` (valid tokens), ``behav_capped_frac`` (share of valid tokens above the cap).
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    if tuple(behaviour_logprobs.shape) != tuple(logprobs.shape):
        raise ValueError(f"behaviour_logprobs must have the shape of logprobs {tuple(logprobs.shape)}, got "
                         f"{tuple(behaviour_logprobs.shape)}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    with torch.no_grad():
        log_w = behaviour_log_ratio(old_logprobs, behaviour_logprobs, mask.bool(), "decoupled_ppo")
        w, inside = bound_weights(log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp(), 0.0, cap, mode)
        capped = ~inside  # w > cap: the band's lower end 0 is never crossed
    log_ratio = _log_ratio(logprobs, old_logprobs)
    surrogate, clip_active = _clipped_surrogate(advantages, torch.exp(log_ratio), clip_low, clip_high)
    loss = _masked(surrogate * w.to(surrogate.dtype), mask)
    metrics = {"pg_clipfrac": _fraction(clip_active, mask, loss.dtype), "ppo_kl": _ppo_kl(log_ratio, mask),
               "behav_weight_mean": _fraction(w, mask, loss.dtype),
               "behav_capped_frac": _fraction(capped, mask, loss.dtype)}
    return loss, metrics


SEQ_LOG_RATIO_MAX = 10.0


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    return (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _check_clip(clip_low: float, clip_high: float) -> None:
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low} and {clip_high}")


def _check_dual_clip(clip_c: float | None) -> None:
    if clip_c is not None and not clip_c > 1.0:
        raise ValueError(f"clip_c (dual-clip bound) must be > 1, got {clip_c}")


def _dual_clip(loss: Tensor, adv: Tensor, clip_c: float | None) -> tuple[Tensor, Tensor]:
    """min(loss, -A clip_c) where A < 0 (Ye et al. 2020, arXiv 1912.09729), and where that bound applied;
    ``clip_c=None``: the loss unchanged, no token bounded."""
    if clip_c is None:
        return loss, torch.zeros_like(loss, dtype=torch.bool)
    bound = -adv * clip_c
    active = (adv < 0) & (loss > bound)
    return torch.where(active, bound, loss), active


def _masked(loss: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), loss, torch.zeros_like(loss))


def _ppo_kl(log_ratio: Tensor, mask: Tensor) -> Tensor:
    with torch.no_grad():
        return masked_mean(-log_ratio, mask).detach()


def _fraction(flags: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    with torch.no_grad():
        return masked_mean(flags.to(dtype), mask).detach()


def _clipped_surrogate(adv: Tensor, ratio: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) and where the clipped term is the active max."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _sequence_log_ratio(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """log s_i = mean of the row's valid token log-ratios, capped at 10 ([N]; 0 for empty rows)."""
    return masked_mean(log_ratio, mask, dim=-1).clamp(max=SEQ_LOG_RATIO_MAX)


@POLICY_LOSSES.register("gspo")
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: ClipLow = 3e-4,
    clip_high: ClipHigh = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO sequence-level clipped surrogate (Zheng et al. 2025, arXiv 2507.18071).

    log s_i = (1/|o_i|) sum_t m (logp - old_logp) over the row's valid tokens (token log-ratios
    clamped to [-20, 20], log s_i capped at 10), s_i = exp(log s_i);
    l_i = max(-A_i s_i, -A_i clip(s_i, 1 - clip_low, 1 + clip_high)), with A_i the masked mean of
    the row's advantages (= A_i itself for outcome advantages). l_i is written on every valid token
    of row i, so ``seq-mean-token-mean`` aggregation gives the GSPO objective (1/G) sum_i l_i; other
    aggregations weight sequences by their length. Defaults are the paper's eps (3e-4, 4e-4).
    Metrics: ``pg_clipfrac`` = fraction of SEQUENCES (rows with >= 1 valid token) whose clipped
    term is the active max; ``ppo_kl`` = token-level masked mean of old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    seq_ratio = torch.exp(_sequence_log_ratio(log_ratio, mask))
    seq_adv = masked_mean(advantages, mask, dim=-1).to(seq_ratio.dtype)
    seq_loss, seq_clipped = _clipped_surrogate(seq_adv, seq_ratio, clip_low, clip_high)
    loss = _masked(seq_loss.unsqueeze(-1).expand_as(logprobs), mask)
    rows = mask.bool().any(dim=-1)
    metrics = {
        "pg_clipfrac": _fraction(seq_clipped, rows, loss.dtype),
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics


@POLICY_LOSSES.register("gspo_token")
def gspo_token(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: ClipLow = 3e-4,
    clip_high: ClipHigh = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token, per-token advantages with the sequence ratio (Zheng et al. 2025, arXiv 2507.18071).

    s_{i,t} = sg(s_i) * exp(logp - sg(logp)): its value is GSPO's s_i (log capped at 10) and its
    gradient is s_i * grad logp_{i,t}; l_{i,t} = max(-A_{i,t} s_{i,t}, -A_{i,t} clip(s_{i,t},
    1 - clip_low, 1 + clip_high)). With A_{i,t} = A_i on every token of a row and
    ``seq-mean-token-mean`` aggregation, the gradient equals ``gspo``'s.
    Metrics: ``pg_clipfrac`` = fraction of valid TOKENS whose clipped term is the active max;
    ``ppo_kl`` = masked mean of old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    seq_log_ratio = masked_mean(log_ratio, mask, dim=-1).detach()
    token_log_ratio = seq_log_ratio.unsqueeze(-1) + logprobs - logprobs.detach()
    ratio = torch.exp(token_log_ratio.clamp(max=SEQ_LOG_RATIO_MAX))
    surrogate, clip_active = _clipped_surrogate(advantages, ratio, clip_low, clip_high)
    loss = _masked(surrogate, mask)
    metrics = {
        "pg_clipfrac": _fraction(clip_active, mask, loss.dtype),
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: CispoClipLow = 1.0,
    clip_high: ClipHigh = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO, clipped stop-gradient IS weight (MiniMax-M1, MiniMax 2025, arXiv 2506.13585).

    r = exp(clamp(logp - old_logp, -20, 20)); l = -sg(clip(r, 1 - clip_low, 1 + clip_high)) A logp.
    No token is dropped: the gradient is -clip(r) A grad logp everywhere, and none flows through
    the weight. Defaults: ``clip_low = 1.0`` puts the lower bound at 0, i.e. no lower clip (the paper
    sets eps_low^IS large and tunes only eps_high^IS; verl's example uses clip_ratio_low 10);
    ``clip_high = 0.2`` as in verl's example. Both are relative to 1, like ``ppo_clip`` (TRL's
    ``cispo`` instead uses an absolute cap). Metrics: ``pg_clipfrac`` = fraction of valid tokens
    whose weight was clipped (either side); ``ppo_kl`` = masked mean of old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    low, high = 1.0 - clip_low, 1.0 + clip_high
    weight = ratio.clamp(low, high).detach()
    loss = _masked(-weight * advantages * logprobs, mask)
    metrics = {
        "pg_clipfrac": _fraction((ratio > high) | (ratio < low), mask, loss.dtype),
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics


@POLICY_LOSSES.register("reinforce")
def reinforce(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE / vanilla policy gradient (Williams 1992; Ahmadian et al. 2024, arXiv 2402.14740).

    l = -A logp: no ratio, no clip (verl's ``gpg``); the gradient with respect to logp is -A.
    ``old_logprobs`` only feeds the metric ``ppo_kl`` = masked mean of old_logp - logp, which shows
    how far the update has moved off-policy.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    loss = _masked(-advantages * logprobs, mask)
    return loss, {"ppo_kl": _ppo_kl(_log_ratio(logprobs, old_logprobs), mask)}


@POLICY_LOSSES.register("sapo")
def sapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    tau_pos: Temperature = 1.0,
    tau_neg: Temperature = 1.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO soft-gated surrogate (Soft Adaptive Policy Optimization, Qwen 2025, arXiv 2511.20347).

    r = exp(clamp(logp - old_logp, -20, 20)); f(r) = sigmoid(tau (r - 1)) * 4 / tau with
    tau = tau_pos where A > 0 and tau_neg otherwise; l = -f(r) A. The gate replaces the hard clip:
    f(1) = 2 / tau and f'(1) = 1, so on-policy the gradient is -A like PPO's, and it decays smoothly
    as r leaves 1. Defaults 1.0 / 1.05 as in verl and TRL. Metric: ``ppo_kl`` = masked mean of
    old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    if not (tau_pos > 0 and tau_neg > 0):
        raise ValueError(f"tau_pos and tau_neg must be > 0, got {tau_pos} and {tau_neg}")
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, torch.full_like(ratio, tau_pos), torch.full_like(ratio, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    loss = _masked(-gate * advantages, mask)
    return loss, {"ppo_kl": _ppo_kl(log_ratio, mask)}

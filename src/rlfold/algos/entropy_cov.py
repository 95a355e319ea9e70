"""Clip-Cov and KL-Cov, covariance-targeted policy losses (Cui et al. 2025, arXiv 2505.22617).

"The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models" shows that the
entropy change of a softmax policy under policy gradient follows the covariance between a token's
log-probability and its advantage; a few high-covariance tokens drive the entropy collapse. Both
parts restrict the update of such tokens (policy.md §4):

* ``clip_cov`` (``POLICY_LOSSES``): among the valid tokens whose covariance lies strictly inside
  (``clip_cov_lb``, ``clip_cov_ub``) and that the PPO clip has not already clipped, a random
  max(floor(``clip_cov_ratio`` N), 1) of them lose their gradient (their loss is multiplied by 0);
  every other token keeps the clipped PPO loss (no dual clip).
* ``kl_cov`` (``POLICY_LOSSES``): the unclipped loss -A r on every token, plus
  ``ppo_kl_coef`` |logp - old_logp| on the top max(floor(k N), 1) tokens by covariance.

Cov_t = (logp_t - mean logp) (A_t - mean A), means over the N valid tokens of the call; logp is the
current policy's, detached (the covariance only selects tokens). Both match
``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov`` of verl (core_algos.py, as of
2026-01-29, ported from PRIME-RL/Entropy-Mechanism-of-RL) token for token, including verl's random
draw (see ``clip_cov``), with one difference: like every rlfold policy loss, the log-ratio inside
r = exp(logp - old_logp) is clamped to [-20, 20] (verl does not clamp here); it only matters where
|logp - old_logp| > 20. Aggregate with ``loss_agg: token-mean`` for the papers' loss.

Batch-wide statistics: the means, N and the number of selected tokens are those of one call, i.e.
of the trainer's micro-batch, exactly as verl computes them per micro-batch. The parts are therefore
not micro-batch invariant: ``train.micro_batch_size: 0`` (one call per mini-batch) gives the
statistics of the whole mini-batch. Masked tokens never enter the statistics.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.policy_losses import (
    POLICY_LOSSES,
    CispoClipLow,
    ClipHigh,
    _check_clip,
    _check_inputs,
    _fraction,
    _log_ratio,
    _masked,
    _ppo_kl,
)
from rlfold.core.masked import masked_mean

__all__ = ["clip_cov", "kl_cov", "token_covariance", "resolve_kl_cov_ratio"]

# A fraction of the call's valid tokens (verl asserts > 0).
TokenFraction = Annotated[float, Field(gt=0, le=1)]
# The official code's KL-Cov ``k_percent``: a percentage of the valid tokens.
TokenPercent = Annotated[float, Field(gt=0, le=100)]
NonNegative = Annotated[float, Field(ge=0)]

DEFAULT_CLIP_COV_RATIO = 2e-4
DEFAULT_KL_COV_RATIO = 2e-4
MEAN_EPS = 1e-8  # verl's masked_mean: sum / (count + 1e-8), used by Clip-Cov's centering


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor, *, eps: float = 0.0) -> Tensor:
    """Cov_t = (logp_t - mean logp)(A_t - mean A) on valid tokens, 0 elsewhere ([N, R], no gradient).

    Means are over the valid tokens of ``mask``: sum / (count + eps). Clip-Cov uses eps = 1e-8 (verl's
    ``masked_mean``); KL-Cov's plain mean is eps = 0. Worked example (policy.md §4(e)): A = [1, -1],
    logp = [-0.1, -2.1] give centred values [1, -1] and [1, -1], so Cov = [1, 1]."""
    with torch.no_grad():
        valid = mask.bool()
        logp = logprobs.detach()
        adv = advantages.detach().to(logp.dtype)
        count = valid.to(logp.dtype).sum() + eps
        zero = torch.zeros_like(logp)
        mean_logp = torch.where(valid, logp, zero).sum() / count
        mean_adv = torch.where(valid, adv, zero).sum() / count
        return torch.where(valid, (logp - mean_logp) * (adv - mean_adv), zero)


@POLICY_LOSSES.register("clip_cov")
def clip_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: CispoClipLow = 0.2,
    clip_high: ClipHigh = 0.2,
    clip_cov_ratio: TokenFraction = DEFAULT_CLIP_COV_RATIO,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov: detach a random few high-covariance tokens (Cui et al. 2025, arXiv 2505.22617).

    r = exp(clamp(logp - old_logp, -20, 20)); l1 = -A r; l2 = -A clip(r, 1 - clip_low, 1 + clip_high).
    Candidates: valid tokens with clip_cov_lb < Cov_t < clip_cov_ub (strict) and l2 <= l1 (not
    already clipped), Cov as in ``token_covariance`` with verl's 1e-8 in the means. n_clip =
    max(floor(clip_cov_ratio * N), 1) with N the number of valid tokens; min(n_clip, #candidates) of
    the candidates, drawn uniformly without replacement, get l = 0 (no gradient); all others get
    max(l1, l2). No dual clip (verl's Clip-Cov has none, so ``clip_c`` is not an option).

    The draw is verl's: the candidates in row-major order, permuted by ``torch.randperm`` on the
    process-wide CPU generator, the first n_clip kept; no draw when there is no candidate. The
    policy-loss signature has no generator, so the draw is deterministic given the torch seed (the
    trainer seeds it from ``seed`` and saves it in checkpoints), and under the same seed it selects
    exactly the tokens verl selects.

    Defaults are verl's: clip_cov_ratio 2e-4, band (1, 5), clip 0.2; the paper's scripts set
    ``clip_low = clip_high = 1`` (ratio clamp [0, 2]), hence clip_low may be 1 here.
    Metrics: ``pg_clipfrac`` = fraction of valid tokens clipped by the PPO clip (l2 > l1);
    ``clip_cov_frac`` = fraction of valid tokens detached by Clip-Cov (what verl logs as
    ``pg_clipfrac``); ``ppo_kl`` = masked mean of old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    _check_clip(clip_low, clip_high)
    if not 0.0 < clip_cov_ratio <= 1.0:
        raise ValueError(f"clip_cov_ratio must be in (0, 1], got {clip_cov_ratio!r}")
    if not clip_cov_lb < clip_cov_ub:
        raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got {clip_cov_lb!r} and {clip_cov_ub!r}")

    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    valid = mask.bool()
    with torch.no_grad():
        ppo_clipped = (clipped > unclipped) & valid
        cov = token_covariance(logprobs, advantages, mask, eps=MEAN_EPS)
        candidates = valid & ~ppo_clipped & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        n_valid = float(mask.to(logprobs.dtype).sum())
        n_clip = max(int(clip_cov_ratio * n_valid), 1)
        where = torch.nonzero(candidates)
        keep = torch.ones_like(logprobs)
        if len(where) > 0:
            order = torch.randperm(len(where))  # process-wide CPU generator, as verl
            chosen = where[order[: min(n_clip, len(where))].to(where.device)]
            keep[chosen[:, 0], chosen[:, 1]] = 0.0
    loss = _masked(torch.maximum(unclipped, clipped) * keep, mask)
    metrics = {
        "pg_clipfrac": _fraction(ppo_clipped, mask, loss.dtype),
        "clip_cov_frac": _fraction(keep == 0, mask, loss.dtype),
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics


def resolve_kl_cov_ratio(kl_cov_ratio: float | None, k_percent: float | None) -> float:
    """The fraction k of valid tokens KL-Cov penalises: ``kl_cov_ratio`` (verl's fraction), or the
    official code's ``k_percent`` / 100, or verl's default 2e-4 when neither is given."""
    if kl_cov_ratio is not None and k_percent is not None:
        raise ValueError(
            f"kl_cov: set either kl_cov_ratio (a fraction, verl) or k_percent (a percentage, the official code), "
            f"not both (got {kl_cov_ratio!r} and {k_percent!r})"
        )
    if k_percent is not None:
        if not 0.0 < k_percent <= 100.0:
            raise ValueError(f"kl_cov k_percent must be in (0, 100], got {k_percent!r}")
        return k_percent / 100.0
    if kl_cov_ratio is None:
        return DEFAULT_KL_COV_RATIO
    if not 0.0 < kl_cov_ratio <= 1.0:
        raise ValueError(f"kl_cov_ratio must be in (0, 1], got {kl_cov_ratio!r}")
    return kl_cov_ratio


@POLICY_LOSSES.register("kl_cov")
def kl_cov(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    kl_cov_ratio: TokenFraction | None = None,
    k_percent: TokenPercent | None = None,
    ppo_kl_coef: NonNegative = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov: |logp - old_logp| penalty on the top-covariance tokens (Cui et al. 2025, arXiv 2505.22617).

    r = exp(clamp(logp - old_logp, -20, 20)); l = -A r on every valid token (no ratio clipping), and
    l = -A r + ppo_kl_coef |logp - old_logp| on the top max(floor(k N), 1) valid tokens by Cov
    (N valid tokens; plain means; ``torch.topk`` of the valid tokens in row-major order, on the
    CPU, as verl does, so ties break as in verl). The |.| term uses the unclamped difference.

    The fraction k: ``kl_cov_ratio`` is verl's fraction (default 2e-4 when neither option is set);
    ``k_percent`` is the official code's percentage, k = k_percent / 100 (its 7B script: 0.2, i.e.
    k = 2e-3; 32B: 0.02). Set at most one. ``ppo_kl_coef`` default 1 is the paper's scripts' and
    verl's code fallback (verl's actor YAML says 0.1). ``ppo_kl_coef = 0`` is the unclipped policy
    gradient -A r. Metrics: ``kl_cov_frac`` = fraction of valid tokens penalised; ``ppo_kl_abs`` =
    masked mean of |logp - old_logp| (what verl logs as ``ppo_kl``); ``ppo_kl`` = masked mean of
    old_logp - logp.
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask)
    k = resolve_kl_cov_ratio(kl_cov_ratio, k_percent)
    if not ppo_kl_coef >= 0:
        raise ValueError(f"kl_cov ppo_kl_coef must be >= 0, got {ppo_kl_coef!r}")

    delta = logprobs - old_logprobs
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    pg = -advantages * ratio
    penalised = pg + ppo_kl_coef * delta.abs()
    valid = mask.bool()
    with torch.no_grad():
        selected = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
        flat_index = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
        adv = advantages.detach()[valid].reshape(-1).cpu()
        logp = logprobs.detach()[valid].reshape(-1).cpu()
        if adv.numel() > 0:
            cov = (adv - adv.mean()) * (logp - logp.mean())
            n_top = max(1, int(adv.numel() * k))
            top = torch.topk(cov, n_top, largest=True).indices
            selected[flat_index[top.to(flat_index.device)]] = True
        selected = selected.reshape(valid.shape)
    loss = _masked(torch.where(selected, penalised, pg), mask)
    with torch.no_grad():
        abs_kl = masked_mean(delta.detach().abs(), mask).detach()
    metrics = {
        "kl_cov_frac": _fraction(selected, mask, loss.dtype),
        "ppo_kl_abs": abs_kl,
        "ppo_kl": _ppo_kl(log_ratio, mask),
    }
    return loss, metrics

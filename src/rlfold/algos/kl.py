"""Per-token KL estimators between the policy and a reference, at the sampled tokens.

Every part has the signature ``fn(logprobs, ref_logprobs) -> Tensor`` (same shape as the inputs,
not masked, not reduced: aggregate it with the recipe's ``Aggregation``). The estimators are those
of Schulman, "Approximating KL Divergence" (2020, joschu.net/blog/kl-approx.html), with k = logp -
ref_logp. Suffix ``+`` (straight-through, as in verl) keeps the estimator's value but takes the
gradient of k2, whose gradient k is an unbiased estimate of the gradient of KL(pi || ref).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlfold.core import registry
from rlfold.core.groups import LOG_RATIO_CLAMP

KLFn = Callable[[Tensor, Tensor], Tensor]

KL_ESTIMATORS = registry.KL_ESTIMATORS

K3_CLAMP = 10.0


def _check(logprobs: Tensor, ref_logprobs: Tensor) -> None:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs and ref_logprobs must have the same shape, "
            f"got {tuple(logprobs.shape)} and {tuple(ref_logprobs.shape)}"
        )


@KL_ESTIMATORS.register("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = logp - ref_logp, unbiased but high variance (Schulman 2020, "Approximating KL Divergence")."""
    _check(logprobs, ref_logprobs)
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("abs")
def abs_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """|logp - ref_logp| (verl's `abs`, Sheng et al. 2024, HybridFlow, arXiv 2409.19256)."""
    _check(logprobs, ref_logprobs)
    return (logprobs - ref_logprobs).abs()


@KL_ESTIMATORS.register("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = (logp - ref_logp)^2 / 2, low variance, biased (Schulman 2020, "Approximating KL Divergence")."""
    _check(logprobs, ref_logprobs)
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("low_var_kl")
@KL_ESTIMATORS.register("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = e^l - l - 1, l = ref_logp - logp (Schulman 2020; GRPO, Shao et al. 2024, arXiv 2402.03300).

    As in verl's ``low_var_kl``: l is clamped to [-20, 20] and the result to [-10, 10].
    The estimate is >= 0; its gradient with respect to logp is 1 - e^l (inside the clamps).
    """
    _check(logprobs, ref_logprobs)
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    return kl.clamp(-K3_CLAMP, K3_CLAMP)


def _straight_through(value: Tensor, logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Forward value of ``value``, backward gradient of k2.

    ``k2 - k2.detach()`` is formed first: it is exactly 0 in value, so the result equals ``value``
    bit for bit (``value + k2 - k2`` left to right can round away half an ulp)."""
    grad_part = k2(logprobs, ref_logprobs)
    return value.detach() + (grad_part - grad_part.detach())


@KL_ESTIMATORS.register("k1+")
def k1_st(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Straight-through k1: k1's value, k2's gradient (Schulman 2020 estimators; verl, arXiv 2409.19256)."""
    return _straight_through(k1(logprobs, ref_logprobs), logprobs, ref_logprobs)


@KL_ESTIMATORS.register("k3+")
def k3_st(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Straight-through k3: k3's value, k2's gradient (Schulman 2020 estimators; verl, arXiv 2409.19256)."""
    return _straight_through(k3(logprobs, ref_logprobs), logprobs, ref_logprobs)


@KL_ESTIMATORS.register("abs+")
def abs_st(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Straight-through abs: |k|'s value, k2's gradient (Schulman 2020 estimators; verl, arXiv 2409.19256)."""
    return _straight_through(abs_kl(logprobs, ref_logprobs), logprobs, ref_logprobs)


# ---------------------------------------------------------------------------------------------
# KL in the reward (pure helpers, not estimators): the RLHF penalty of Ziegler et al. 2019 and
# InstructGPT, placed on the token rewards instead of the loss (verl ``use_kl_in_reward``).


def kl_in_reward(scores: Tensor, mask: Tensor, kl: Tensor, coef: float) -> Tensor:
    """Token rewards with a KL penalty (Ziegler et al. 2019, arXiv 1909.08593; Ouyang et al. 2022, arXiv 2203.02155).

    ``scores`` [N] is placed on the last valid token of each row (the highest index where ``mask``
    is 1), ``coef * kl`` is subtracted on every valid token, and masked tokens get 0:
    r_{i,t} = m_{i,t} (1[t = last_i] score_i - coef kl_{i,t}). A row with no valid token is all
    zeros (its score is dropped). ``kl`` [N, R] is a per-token estimate, e.g. ``k1(old_logp,
    ref_logp)``; pass detached tensors, the rewards are not meant to carry gradients.
    """
    if mask.dim() != 2 or tuple(kl.shape) != tuple(mask.shape):
        raise ValueError(
            f"mask and kl must both be [N, R] of the same shape, got {tuple(mask.shape)} and {tuple(kl.shape)}"
        )
    if tuple(scores.shape) != (mask.shape[0],):
        raise ValueError(f"scores must be [N] with N = {mask.shape[0]}, got {tuple(scores.shape)}")
    valid = mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(valid)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).max(dim=-1).values  # [N]
    is_last = valid & (positions == last.unsqueeze(-1))
    dtype = torch.promote_types(scores.dtype, kl.dtype)
    rewards = torch.where(is_last, scores.to(dtype).unsqueeze(-1), torch.zeros((), dtype=dtype, device=kl.device))
    rewards = rewards - coef * kl.to(dtype)
    return torch.where(valid, rewards, torch.zeros_like(rewards))


ADAPTIVE_KL_ERROR_CLIP = 0.2


def adaptive_kl_coef(
    coef: float, observed_kl: float | Tensor, *, target: float, horizon: float, n_steps: int
) -> float:
    """Adaptive KL coefficient, proportional controller (Ziegler et al. 2019, arXiv 1909.08593).

    e = clip(observed_kl / target - 1, -0.2, 0.2); new_coef = coef * (1 + e * n_steps / horizon).
    ``observed_kl`` is the measured KL(pi || ref) of the batch (a float or 0-dim tensor),
    ``n_steps`` the number of samples it covers (verl passes the batch size); verl's defaults
    are target 0.1 and horizon 10000.
    """
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    if not horizon > 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    error = min(max(float(observed_kl) / target - 1.0, -ADAPTIVE_KL_ERROR_CLIP), ADAPTIVE_KL_ERROR_CLIP)
    return float(coef) * (1.0 + error * n_steps / horizon)

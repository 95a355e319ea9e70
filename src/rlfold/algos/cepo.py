"""CEPO (arXiv 2605.19436): token credit from contrastive evidence between a correct- and a wrong-answer teacher.

The same model, given a privileged hint, scores each response token twice: with the gold answer r+ and
with r-, the answer of the lowest-reward rollout of the group. Delta_t = sg(log P+(y_t) - log P-(y_t))
(the trainer input ``cepo_delta``, ``rlfold.trainers.teacher_inputs``) says how much the correct
answer explains the token better than the wrong one. CEPO re-scales the group advantage per token,

    w_t = exp(sign(A_i) Delta_t),   A_hat_{i,t} = A_i [(1 - lam) + lam clip(w_t, 1 - eps_w, 1 + eps_w)],

then trains with the standard clipped PPO surrogate; lam decays linearly, lam0 (1 - step / warmup),
to 0 (plain GRPO from step ``warmup`` on).

The part returns the bracket as ``token_weights``. The bracket is positive (>= 1 - lam (eps_w) > 0), and
for a per-token loss that is positively homogeneous in the advantage, such as ``ppo_clip``
(max(-A r, -A clip(r)), and min(., -A c) for the dual clip), c * l(A) = l(c A) for c > 0: weighting
the token's loss by the bracket is exactly training on CEPO's A_hat. The sign of A_hat is that of A.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.selection import SELECTIONS, Selection, SelectionInput
from rlfold.core.registry import needs

__all__ = ["cepo", "cepo_lambda", "cepo_weights"]

# The paper's script (policy.md §18 (c)): lam0 0.5 decayed to 0 over 25 steps, eps_w 0.2.
LAMBDA0, WARMUP, EPS_W = 0.5, 25, 0.2


def cepo_lambda(step: float, lambda0: float = LAMBDA0, warmup: int = WARMUP) -> float:
    """The mixing weight at ``step``: ``lambda0 (1 - step / warmup)`` clamped at 0 (and at most ``lambda0``)."""
    if warmup < 1:
        raise ValueError(f"cepo warmup must be >= 1 step, got {warmup!r}")
    return lambda0 * min(max(1.0 - float(step) / warmup, 0.0), 1.0)


def cepo_weights(advantages: Tensor, delta: Tensor, lam: float, eps_w: float = EPS_W) -> Tensor:
    """``(1 - lam) + lam clip(exp(sign(A) Delta), 1 - eps_w, 1 + eps_w)`` per token, float, detached."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"cepo lambda must be in [0, 1], got {lam!r}")
    if not 0.0 <= eps_w < 1.0:
        raise ValueError(f"cepo eps_w must be in [0, 1), got {eps_w!r}")
    dtype = torch.promote_types(delta.dtype, torch.float32)
    w = torch.exp(torch.sign(advantages.detach()).to(dtype) * delta.detach().to(dtype))
    return (1.0 - lam) + lam * w.clamp(1.0 - eps_w, 1.0 + eps_w)


@SELECTIONS.register("cepo")
@needs("cepo_delta", "train_step")
def cepo(
    inp: SelectionInput,
    *,
    cepo_delta: Tensor,
    train_step: Tensor,
    generator: torch.Generator | None = None,
    lambda0: Annotated[float, Field(ge=0, le=1)] = LAMBDA0,
    warmup: Annotated[int, Field(ge=1)] = WARMUP,
    eps_w: Annotated[float, Field(ge=0, lt=1)] = EPS_W,
) -> Selection:
    """CEPO token weights (1 - lam) + lam clip(exp(sign(A) Delta), 1 - eps_w, 1 + eps_w) (arXiv 2605.19436).

    ``cepo_delta`` [N, R]: Delta_t = log P+(y_t) - log P-(y_t) of the correct- and wrong-answer teachers
    (0 where r- = r+, i.e. no wrong answer in the group: the weights are then 1, plain GRPO).
    ``train_step`` [N]: the step index; lam = ``lambda0`` (1 - step / ``warmup``) clamped at 0.
    ``token_weights`` multiply the per-token policy loss: with ``ppo_clip`` that equals scaling the
    token's advantage by the weight (CEPO's A_hat; see the module docstring). Padding gets weight 1
    (Delta is 0 there). Metrics: ``selection/cepo_lambda``, ``selection/cepo_weight_mean`` and
    ``selection/cepo_delta_abs_mean`` (over valid tokens; 1 and 0 without one).
    """
    del generator
    if tuple(cepo_delta.shape) != tuple(inp.response_mask.shape):
        raise ValueError(f"cepo: cepo_delta must have the shape of response_mask {tuple(inp.response_mask.shape)}, "
                         f"got {tuple(cepo_delta.shape)}")
    step = float(train_step[0].item()) if train_step.numel() else 0.0
    if not math.isfinite(step):
        raise ValueError(f"cepo: train_step must be finite, got {step!r}")
    valid = inp.response_mask.detach() != 0
    delta = torch.where(valid, cepo_delta.detach(), torch.zeros_like(cepo_delta))
    if not torch.isfinite(delta).all():
        bad = torch.nonzero(~torch.isfinite(delta))[:5].tolist()
        raise ValueError(f"cepo: cepo_delta must be finite on valid tokens; non-finite at [row, token] {bad}")
    lam = cepo_lambda(step, lambda0, warmup)
    weights = cepo_weights(inp.advantages, delta, lam, eps_w)
    n_valid = int(valid.sum().item())
    metrics = {
        "selection/cepo_lambda": lam,
        "selection/cepo_weight_mean": float(weights[valid].double().mean()) if n_valid else 1.0,
        "selection/cepo_delta_abs_mean": float(delta[valid].double().abs().mean()) if n_valid else 0.0,
    }
    return Selection(token_weights=weights, metrics=metrics)

"""PIPO / PIRL layback replay (Policy Improvement RL, arXiv 2604.00860), registered as replay part ``pipo``.

After each update the new batch's mean reward mu_t is compared with the last K batch means:
rho = mean(history), sigma = population std(history) (sigma < eps: 1), xi_t = (mu_t - rho) / sigma. The
coefficient is C = xi_t if xi_t >= 0 else loss_scale_neg * xi_t. The previous batch (cached with its
old log-probs) is trained on once more with advantages C * A~, where per prompt group
A~_i = G * Abar_i / sum_j |Abar_j| (Abar_i: token mean of row i's advantage; G: the group's rows).
A batch that improved on the history reinforces the previous update; one that fell behind it undoes
a little of it (``loss_scale_neg``).

The history holds the means of the K batches *before* the current one (mu_t is appended after xi_t
is computed). The math is in the three functions below; ``Pipo`` only keeps the history and the
cached batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.replay import REPLAYS, ReplayableBatch


def progress_score(history: Sequence[float], mu: float, eps: float = 1e-6) -> float:
    """xi = (mu - mean(history)) / std(history), population std, 1 when below ``eps`` (PIPO, arXiv 2604.00860)."""
    if not history:
        raise ValueError("progress_score needs at least one earlier batch mean")
    n = len(history)
    rho = sum(history) / n
    sigma = math.sqrt(sum((h - rho) ** 2 for h in history) / n)
    return (mu - rho) / (sigma if sigma >= eps else 1.0)


def layback_coef(xi: float, loss_scale_neg: float) -> float:
    """C = xi if xi >= 0 else loss_scale_neg * xi (PIPO, arXiv 2604.00860)."""
    return xi if xi >= 0 else loss_scale_neg * xi


def rescale_group_advantages(advantages: Tensor, mask: Tensor, group_ids: Tensor) -> Tensor:
    """A~_i = G * Abar_i / sum_{j in group} |Abar_j|, broadcast over row i's tokens (PIPO, arXiv 2604.00860).

    Abar_i is the mean of row i's advantage over its tokens in ``mask`` (0 for a row without any); G is
    the number of rows of the group. A group whose rows all have Abar = 0 gets 0. Returns [N, R], 0
    outside ``mask``."""
    m = mask.float()
    counts = m.sum(dim=1)
    abar = (advantages.float() * m).sum(dim=1) / counts.clamp(min=1.0)
    abar = torch.where(counts > 0, abar, torch.zeros_like(abar))
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    size = torch.zeros(n_groups).index_add_(0, inverse, torch.ones_like(abar))
    total = torch.zeros(n_groups).index_add_(0, inverse, abar.abs())
    denom = total[inverse]
    scaled = torch.where(denom > 0, size[inverse] * abar / denom.clamp(min=1e-30), torch.zeros_like(abar))
    return (scaled[:, None] * m).to(advantages.dtype)


@REPLAYS.register("pipo")
class Pipo:
    """PIPO layback: replay the previous batch with a signed, standardised coefficient (arXiv 2604.00860).

    Defaults are the paper's training scripts': window K=8, loss_scale_neg=0.1 (the config default of
    the code is 0.0: a batch that fell behind then replays nothing), min_steps_before_layback=8.
    """

    def __init__(self, window: Annotated[int, Field(ge=1)] = 8,
                 loss_scale_neg: Annotated[float, Field(ge=0)] = 0.1,
                 min_steps_before_layback: Annotated[int, Field(ge=0)] = 8,
                 eps: Annotated[float, Field(gt=0)] = 1e-6) -> None:
        self.window, self.loss_scale_neg = window, loss_scale_neg
        self.min_steps, self.eps = min_steps_before_layback, eps
        self.history: list[float] = []              # the last ``window`` batch means, oldest first
        self.previous: ReplayableBatch | None = None  # the batch trained on at the last update

    def after_update(self, prep: Any, batch_reward_mean: float,
                     step: int) -> tuple[Any | None, dict[str, float]]:
        previous, self.previous = self.previous, prep
        history = list(self.history)
        self.history = (history + [float(batch_reward_mean)])[-self.window:]
        if not history:
            return None, {"replay/pipo_active": 0.0}
        xi = progress_score(history, float(batch_reward_mean), self.eps)
        coef = layback_coef(xi, self.loss_scale_neg)
        active = previous is not None and step >= self.min_steps and coef != 0
        metrics = {"replay/pipo_xi": xi, "replay/pipo_coef": coef, "replay/pipo_active": float(active)}
        if not active:
            return None, metrics
        if previous.group_ids is None or previous.old_logprobs is None:
            raise RuntimeError("the pipo replay needs the cached batch's group ids and old log-probs, but the "
                               "batch was prepared without them")
        adv = coef * rescale_group_advantages(previous.advantages, previous.loss_mask, previous.group_ids)
        return replace(previous, advantages=adv), metrics

    def state_dict(self) -> dict[str, Any]:
        """The history of batch means and the cached batch as it is (the online step saves it as plain data)."""
        return {"history": list(self.history), "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [float(x) for x in state["history"]]
        self.previous = state.get("previous")


__all__ = ["Pipo", "layback_coef", "progress_score", "rescale_group_advantages"]

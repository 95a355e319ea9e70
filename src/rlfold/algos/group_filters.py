"""Group filters (the ``GROUP_FILTERS`` registry): which prompt groups of a generation round a step keeps.

A filter is ``fn(inp: GroupFilterInput, *, <options>) -> keep [N] bool`` (a row is kept when its
whole group is), or a ``Kept`` (the mask and metrics to log); the collector applies the filters in
order while it generates, and refills with new prompts until the step has B groups or
``algo.max_gen_batches`` rounds were spent. A filter declared ``@needs("state")`` gets a ``state``
dict of its own that persists across rounds and steps and is saved in every checkpoint (a
curriculum that adapts from step to step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from rlfold.core import registry
from rlfold.core.groups import group_index
from rlfold.core.options import group_relative

GROUP_FILTERS = registry.GROUP_FILTERS


@dataclass(frozen=True)
class GroupFilterInput:
    """One generation round as the filters see it: scores after shaping, accuracy, group of each row."""

    scores: Tensor      # [N] total reward of each row (unscorable rows hold their group's mean)
    accuracy: Tensor    # [N] the accuracy reward of each row (NaN: unscorable)
    group_ids: Tensor   # [N] rows with the same id answer the same prompt
    step: int = 0       # the training step the round belongs to
    round: int = 0      # the generation round within the step (0: the first)
    metrics: Mapping[str, float] = field(default_factory=dict)  # the scorer's metrics of the round (shaping/...)


@dataclass(frozen=True)
class Kept:
    """A filter's answer with metrics: ``keep`` [N] bool, and scalars the step logs (the last round's)."""

    keep: Tensor
    metrics: dict[str, float]


def filter_groups(scores: Tensor, group_ids: Tensor) -> Tensor:
    """Rows whose group has at least 2 rows with scores not all equal (exact test max != min)."""
    if scores.dim() != 1:
        raise ValueError(f"filter_groups: scores must be 1-D [N], got shape {tuple(scores.shape)}")
    if tuple(group_ids.shape) != tuple(scores.shape):
        raise ValueError(
            f"filter_groups: group_ids must have the shape of scores {tuple(scores.shape)}, "
            f"got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"filter_groups: group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if scores.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    if scores.dtype == torch.bool:
        scores = scores.to(torch.int64)
    if scores.dtype.is_floating_point and torch.isnan(scores).any():
        bad = torch.nonzero(torch.isnan(scores)).flatten()[:10].tolist()
        raise ValueError(f"filter_groups: scores must not be NaN; NaN at rows {bad}")
    inv, n_groups = group_index(group_ids)
    zeros = torch.zeros(n_groups, dtype=scores.dtype, device=scores.device)
    r_max = zeros.scatter_reduce(0, inv, scores, "amax", include_self=False)[inv]
    r_min = zeros.scatter_reduce(0, inv, scores, "amin", include_self=False)[inv]
    count = torch.bincount(inv, minlength=n_groups)[inv]
    return (count >= 2) & (r_max != r_min)


@GROUP_FILTERS.register("dynamic_sampling")
@group_relative
def dynamic_sampling(inp: GroupFilterInput, *, metric: Literal["acc", "reward"] = "acc") -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476): drop groups whose ``metric`` is constant.

    All-correct or all-wrong groups give GRPO advantages of exactly 0 and carry no signal.
    ``metric="acc"`` judges by the accuracy reward (unscorable rows count as 0), ``"reward"`` by the
    total score after shaping.
    """
    if metric not in ("acc", "reward"):
        raise ValueError(f"dynamic_sampling: metric must be 'acc' or 'reward', got {metric!r}")
    values = torch.nan_to_num(inp.accuracy, nan=0.0) if metric == "acc" else torch.nan_to_num(inp.scores, nan=0.0)
    return filter_groups(values, inp.group_ids)


__all__ = ["GROUP_FILTERS", "GroupFilterInput", "Kept", "dynamic_sampling", "filter_groups"]

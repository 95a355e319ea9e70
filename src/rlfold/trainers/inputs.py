"""Batch inputs the trainer supplies to parts that declare them with ``@needs`` (values, baselines, ...).

A provider is ``fn(trainer, ctx) -> Tensor``. Registering a new provider here (or from a user's
``imports`` module) makes a new input available to every part without touching the trainer loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlfold.core.registry import Registry
from rlfold.core.types import Prompt, RolloutBatch

INPUTS: Registry = Registry("trainer input")


@dataclass
class StepContext:
    """What one step has produced so far, for the input providers."""

    prompts: list[Prompt]         # [N] prompt of each row
    roll: RolloutBatch
    scores: Tensor                # [N] weighted reward sum
    rewards: Tensor               # [N] scores minus the in-reward KL (if any)
    token_rewards: Tensor         # [N, R]
    group_ids: Tensor             # [N]
    cache: dict[str, Any] = field(default_factory=dict)


Provider = Callable[[Any, StepContext], Tensor]


@INPUTS.register("token_rewards")
def _token_rewards(trainer: Any, ctx: StepContext) -> Tensor:
    return ctx.token_rewards


@INPUTS.register("truncated")
def _truncated(trainer: Any, ctx: StepContext) -> Tensor:
    return ctx.roll.truncated


@INPUTS.register("values")
def _values(trainer: Any, ctx: StepContext) -> Tensor:
    if trainer.critic is None:
        raise RuntimeError("the advantage part needs 'values' but the run has no critic")
    if "values" not in ctx.cache:
        ctx.cache["values"] = trainer.critic.values(ctx.roll)
    return ctx.cache["values"]


@INPUTS.register("baseline_rewards")
def _greedy_baseline(trainer: Any, ctx: StepContext) -> Tensor:
    """ReMax baseline: the reward of one greedy response per prompt, broadcast to the prompt's rows."""
    if "baseline_rewards" not in ctx.cache:
        ctx.cache["baseline_rewards"] = trainer.greedy_rewards(ctx.prompts, ctx.group_ids)
    return ctx.cache["baseline_rewards"]


def provide(names: tuple[str, ...], trainer: Any, ctx: StepContext) -> dict[str, Tensor]:
    """The named inputs, each from its registered provider."""
    return {name: INPUTS.get(name)(trainer, ctx) for name in names}


def first_rows(group_ids: Tensor) -> Tensor:
    """Index of the first row of each group, in group order of first appearance."""
    seen: dict[int, int] = {}
    for i, g in enumerate(group_ids.tolist()):
        seen.setdefault(g, i)
    return torch.tensor(list(seen.values()), dtype=torch.long)

"""Batch inputs supplied to parts that declare them with ``@needs`` (values, baselines, ...).

A provider is ``fn(ctx: StepContext) -> Tensor``, registered in ``INPUTS`` under the input's name.
Registering one (here or from a user's ``imports`` module) makes a new input available to every part
without touching the online step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlfold.core.groups import first_rows
from rlfold.core.registry import Registry
from rlfold.core.types import Prompt, RolloutBatch

INPUTS: Registry = Registry("trainer input")


@dataclass
class StepContext:
    """What one step has produced so far, and the step's collaborators, for the input providers."""

    step: int
    prompts: list[Prompt]         # [N] prompt of each row
    roll: RolloutBatch
    scores: Tensor                # [N] weighted reward sum
    rewards: Tensor               # [N] scores minus the in-reward KL (if any)
    token_rewards: Tensor         # [N, R]
    group_ids: Tensor             # [N]
    collector: Any = None         # the step's RolloutCollector (more rollouts: ReMax's greedy baseline)
    critic: Any = None            # the step's Critic, if the recipe has one
    per_fn: dict[str, Tensor] = field(default_factory=dict)  # [N] raw score of each reward function, recipe order
    cache: dict[str, Any] = field(default_factory=dict)


Provider = Callable[[StepContext], Tensor]


@INPUTS.register("token_rewards")
def _token_rewards(ctx: StepContext) -> Tensor:
    return ctx.token_rewards


@INPUTS.register("reward_columns")
def _reward_columns(ctx: StepContext) -> Tensor:
    """[N, F] the raw score of each reward function of the recipe, column j = the j-th of ``rewards:``."""
    if not ctx.per_fn:
        raise RuntimeError("a part needs 'reward_columns' but the step has no per-function scores")
    return torch.stack([v.to(torch.float64) for v in ctx.per_fn.values()], dim=1)


@INPUTS.register("truncated")
def _truncated(ctx: StepContext) -> Tensor:
    return ctx.roll.truncated


@INPUTS.register("values")
def _values(ctx: StepContext) -> Tensor:
    """V(s_t) of the run's critic at every response position."""
    if ctx.critic is None:
        raise RuntimeError("a part needs 'values' but the run has no critic")
    if "values" not in ctx.cache:
        ctx.cache["values"] = ctx.critic.values(ctx.roll)
    return ctx.cache["values"]


@INPUTS.register("baseline_rewards")
def _greedy_baseline(ctx: StepContext) -> Tensor:
    """ReMax baseline (arXiv 2310.10505): the reward of one greedy response per prompt, broadcast to its rows."""
    if "baseline_rewards" not in ctx.cache:
        firsts = first_rows(ctx.group_ids)
        uniq = [ctx.prompts[i] for i in firsts.tolist()]
        greedy = ctx.collector.params.model_copy(update={"temperature": 0.0, "n": 1})
        _, scored = ctx.collector.generate_and_score(uniq, greedy, torch.arange(len(uniq)), ctx.step,
                                                     "baseline", ctx.step)
        by_group = dict(zip(ctx.group_ids[firsts].tolist(), scored.scores.tolist()))
        ctx.cache["baseline_rewards"] = torch.tensor([by_group[g] for g in ctx.group_ids.tolist()],
                                                     dtype=torch.float32)
    return ctx.cache["baseline_rewards"]


def provide(names: tuple[str, ...], ctx: StepContext) -> dict[str, Tensor]:
    """The named inputs, each from its registered provider."""
    return {name: INPUTS.get(name)(ctx) for name in names}


__all__ = ["INPUTS", "Provider", "StepContext", "provide"]

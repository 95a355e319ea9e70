"""Build the engines of a run from the ``rollout`` config section (the only place that wraps engines)."""

from __future__ import annotations

from typing import Any

from rlfold.core.registry import ENGINES, ENVIRONMENTS
from rlfold.rollout.base import Engine, EngineContext
from rlfold.rollout.multi_turn import MultiTurnEngine


def build_engine(rollout: Any, ctx: EngineContext) -> Engine:
    """The training engine: ``rollout.engine`` with its options, inside the multi-turn engine when
    ``rollout.env`` names an environment."""
    engine = ENGINES.get(rollout.engine)(ctx, **rollout.engine_kwargs)
    if rollout.env is None:
        return engine
    env = ENVIRONMENTS.get(rollout.env.name)(**rollout.env.kwargs)
    return MultiTurnEngine(engine, ctx.tokenizer, env, max_turns=rollout.max_turns, turn_budget=rollout.turn_budget)


def build_eval_engine(rollout: Any, ctx: EngineContext) -> Engine:
    """The held-out evaluation engine: ``rollout.eval_engine``, single turn whatever the training engine does."""
    return ENGINES.get(rollout.eval_engine)(ctx, **rollout.eval_engine_kwargs)


__all__ = ["build_engine", "build_eval_engine"]

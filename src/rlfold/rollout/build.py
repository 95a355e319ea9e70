"""Build the engines of a run from the ``rollout`` config section (the only place that wraps engines)."""

from __future__ import annotations

from typing import Any

from rlfold.core.registry import ENGINES, ENVIRONMENTS, FOLLOWUPS
from rlfold.rollout.base import Engine, EngineContext
from rlfold.rollout.followup import FollowupEngine
from rlfold.rollout.multi_turn import MultiTurnEngine


def build_engine(rollout: Any, ctx: EngineContext, ray: Any = None) -> Engine:
    """The training engine: ``rollout.engine`` with its options (in ``ray.num_rollout_workers`` Ray actors when
    ``ray``, a ``RayConfig``, asks for them), inside the multi-turn engine when ``rollout.env`` names an environment,
    asking ``rollout.followup`` after each response when one is set."""
    if ray is not None and ray.num_rollout_workers > 0:
        engine = ENGINES.get("ray_actors")(ctx, engine=rollout.engine, engine_kwargs=rollout.engine_kwargs,
                                    workers=ray.num_rollout_workers, cluster=ray)
    else:
        engine = ENGINES.get(rollout.engine)(ctx, **rollout.engine_kwargs)
    if rollout.env is not None:
        engine = multi_turn(engine, rollout, ctx)
    return with_followup(engine, rollout)


def with_followup(engine: Engine, rollout: Any) -> Engine:
    """``engine`` asking ``rollout.followup`` after every response (unchanged when none is set)."""
    f = rollout.followup
    return engine if f is None else FollowupEngine(engine, FOLLOWUPS.get(f.name)(**f.kwargs))


def multi_turn(engine: Engine, rollout: Any, ctx: EngineContext) -> MultiTurnEngine:
    """``engine`` inside the multi-turn engine running ``rollout.env``."""
    env = ENVIRONMENTS.get(rollout.env.name)(**rollout.env.kwargs)
    return MultiTurnEngine(engine, ctx.tokenizer, env, max_turns=rollout.max_turns, turn_budget=rollout.turn_budget,
                           workers=rollout.env_workers)


def build_eval_engine(rollout: Any, ctx: EngineContext, multi: bool = False) -> Engine:
    """The held-out evaluation engine: ``rollout.eval_engine``, single turn unless ``multi`` (``eval.multi_turn``)
    wraps it in the multi-turn engine with the training environment."""
    engine = ENGINES.get(rollout.eval_engine)(ctx, **rollout.eval_engine_kwargs)
    return with_followup(multi_turn(engine, rollout, ctx) if multi and rollout.env is not None else engine, rollout)


def build_engines(rollout: Any, ctx: EngineContext, ray: Any = None, eval_multi_turn: bool = False
                  ) -> tuple[Engine, Engine]:
    """The training and evaluation engines. One instance serves both when they name the same engine with the
    same options and either the rollout is single-turn or evaluation is multi-turn too (an engine with weights
    of its own, e.g. vLLM, then holds its memory and takes each weight update once)."""
    train = build_engine(rollout, ctx, ray)
    same = ((ray is None or ray.num_rollout_workers == 0) and (rollout.env is None or eval_multi_turn)
            and rollout.eval_engine == rollout.engine and rollout.eval_engine_kwargs == rollout.engine_kwargs)
    return train, train if same else build_eval_engine(rollout, ctx, eval_multi_turn)


__all__ = ["build_engine", "build_engines", "build_eval_engine"]

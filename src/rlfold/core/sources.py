"""Where the parts a configuration names are defined (``rlfold recipes --source``)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from rlfold.core.registry import (
    ADVANTAGES, AGGREGATIONS, ENGINES, ENVIRONMENTS, GROUP_FILTERS, KL_ESTIMATORS, POLICY_LOSSES, REWARDS, SAMPLERS,
    PREFERENCE_LOSSES, REPLAYS, REWARD_HEADS, SELECTIONS, SHAPINGS, TASKS, TRAINERS, Registry,
)


def _relative(path: Path, line: int) -> str:
    parts = path.parts
    rel = Path(*parts[parts.index("rlfold"):]) if "rlfold" in parts else path
    return f"{rel}:{line}"


def source_of(obj: Any, name: str | None = None) -> str:
    """``rlfold/module.py:line`` where a registered part is defined (its registration decorator, or for a
    part that is a value rather than a function, e.g. an ``Aggregation``, the line that names it)."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        fn = next((v for v in vars(obj).values() if inspect.isfunction(v)), None) if hasattr(obj, "__dict__") else None
        module = inspect.getmodule(fn) if fn is not None else None
        path = Path(inspect.getsourcefile(module)) if module is not None else None
        if path is None:
            return "<unknown>"
        lines = path.read_text(encoding="utf-8").splitlines()
        line = next((i for i, text in enumerate(lines, 1) if name and f'"{name}"' in text), 1)
        return _relative(path, line)
    target = inspect.unwrap(obj)
    try:
        path = Path(inspect.getsourcefile(target) or "?")
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return "<unknown>"
    return _relative(path, line)


def recipe_parts_with_sources(cfg: Any) -> list[tuple[str, str, str]]:
    """``(role, name, module:line)`` for every registered part the configuration uses."""
    a, r = cfg.algo, cfg.rollout
    named: list[tuple[str, str, Registry]] = [
        ("trainer", cfg.trainer, TRAINERS), ("task", cfg.task.name, TASKS),
        ("sampler", cfg.train.sampler.name, SAMPLERS), ("engine", r.engine, ENGINES),
        ("eval engine", r.eval_engine, ENGINES),
    ]
    if r.env is not None:
        named.append(("environment", r.env.name, ENVIRONMENTS))
    named += [("reward", x.name, REWARDS) for x in cfg.rewards]
    if cfg.accuracy_reward not in {x.name for x in cfg.rewards}:
        named.append(("accuracy reward", cfg.accuracy_reward, REWARDS))
    if cfg.trainer == "preference":  # the offline trainer uses no RL algorithm part, one preference loss
        named.append(("preference loss", cfg.preference.loss, PREFERENCE_LOSSES))
    elif cfg.trainer == "reward_modeling":
        named.append(("reward-model head", cfg.reward_modeling.head, REWARD_HEADS))
    elif cfg.trainer == "online":
        named += [("shaping", x.name, SHAPINGS) for x in cfg.shaping]
        named += [("group filter", x.name, GROUP_FILTERS) for x in a.group_filters]
        named += [("advantage", a.advantage, ADVANTAGES), ("policy loss", a.policy_loss, POLICY_LOSSES),
                  ("aggregation", a.loss_agg, AGGREGATIONS)]
        if a.kl_coef:
            named.append(("kl estimator", a.kl_estimator, KL_ESTIMATORS))
        named += [("selection", x.name, SELECTIONS) for x in a.selection]
        if a.replay is not None:
            named.append(("replay part", a.replay.name, REPLAYS))
    return [(role, name, source_of(reg.get(name), name)) for role, name, reg in named]


__all__ = ["recipe_parts_with_sources", "source_of"]

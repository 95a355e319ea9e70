"""The reward an environment gave: a SkyRL-Gym or ``verifiers`` environment scores its own episodes.

Adapted environments return their reward with the episode (``rlfold.envs.skyrl_gym``: each step's
reward, summed over the episode; ``rlfold.rollout.verifiers_engine``: the trace's weighted reward), and
the engine puts it in the row's extras (``env/reward``). This reward passes it on to the reward layer
through the ``rollout_extras`` scoring input, so it weighs and mixes with any other reward function.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

ENV_REWARD_KEY = "env/reward"
ENV_ERRORS_KEY = "env/errors"


@REWARDS.register("env_reward")
@needs("rollout_extras")
def env_reward(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    rollout_extras: Sequence[dict[str, Any]],
    key: str = ENV_REWARD_KEY,
    errors_key: str = ENV_ERRORS_KEY,
) -> list[float | None]:
    """The environment's own reward of each episode: the row's extra ``key`` (``env/reward``).

    None (unscorable: counted in ``reward/env_reward/none`` and given its group's mean) where the row
    has no such extra, its value is not a finite number, or its environment failed (``errors_key`` > 0).
    """
    out: list[float | None] = []
    for row in rollout_extras:
        value = row.get(key)
        failed = row.get(errors_key, 0)
        try:
            v = None if value is None else float(value)
        except (TypeError, ValueError):
            v = None
        if v is None or not math.isfinite(v) or float(failed or 0) > 0:
            out.append(None)
        else:
            out.append(v)
    return out


__all__ = ["ENV_ERRORS_KEY", "ENV_REWARD_KEY", "env_reward"]

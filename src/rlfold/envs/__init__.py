"""Environments the model talks to between turns (``rlfold.core.contracts.Environment``).

Importing this package registers the built-in environments in ``ENVIRONMENTS``; the generic
multi-turn engine (``rlfold.rollout.multi_turn``) runs any of them over any engine.
"""

from rlfold.core.registry import ENVIRONMENTS
from rlfold.envs.multi_attempt import MultiAttemptEnv

__all__ = ["ENVIRONMENTS", "MultiAttemptEnv"]

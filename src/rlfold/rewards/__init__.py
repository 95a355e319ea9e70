"""Rewards: verifiers and format checks, combined by weight."""

from rlfold.rewards.base import REWARDS, RewardFn, score_batch
from rlfold.rewards import arith as _arith  # noqa: F401  (registers exact_match, format)
from rlfold.rewards import length as _length  # noqa: F401  (registers soft_overlong)

__all__ = ["REWARDS", "RewardFn", "score_batch"]

"""Rewards: verifiers, format checks, code execution, shaping parts and reward models, combined by weight."""

from rlfold.rewards.base import REWARDS, RewardFn, ScoreResult, score_batch, score_rewards
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput
from rlfold.rewards import (  # noqa: F401  (importing registers the parts)
    arith as _arith,
    calibration as _calibration,
    code as _code,
    formats as _formats,
    length as _length,
    length_shaping as _length_shaping,
    math as _math,
    multi_attempt as _multi_attempt,
    qa as _qa,
    reflection_shaping as _reflection_shaping,
    reward_models as _reward_models,
)

__all__ = ["REWARDS", "SHAPINGS", "RewardFn", "ScoreResult", "Shaped", "ShapingInput", "score_batch", "score_rewards"]

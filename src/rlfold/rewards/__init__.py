"""Rewards: verifiers, format checks, code execution, shaping parts and reward models, combined by weight."""

from rlfold.rewards.base import REWARDS, RewardFn, ScoreResult, score_batch, score_rewards
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput

# Importing a module registers its parts. The order is the registration order from before the
# reward modules were split (it breaks ties between equally close names in ``Registry.get``'s hint).
from rlfold.rewards import (  # noqa: F401,E402
    arith as _arith,
    calibration as _calibration,
    multi_attempt as _multi_attempt,
    code as _code,
    formats as _formats,
    length as _length,
    length_shaping as _length_shaping,
    math as _math,
    qa as _qa,
    arlcp as _arlcp,
    decs_shaping as _decs_shaping,
    redundancy as _redundancy,
    crf as _crf,
    hackable as _hackable,
    reward_models as _reward_models,
    reward_heads as _reward_heads,
    env_reward as _env_reward,
    search as _search,
    search_retrieval as _search_retrieval,
    search_rubric as _search_rubric,
    aggregation as _aggregation,
    empo as _empo,
    choice as _choice,
)

__all__ = ["REWARDS", "SHAPINGS", "RewardFn", "ScoreResult", "Shaped", "ShapingInput", "score_batch", "score_rewards"]

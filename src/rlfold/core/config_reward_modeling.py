"""Configuration of the reward-model trainer (``trainer: reward_modeling``); its data is ``preference.*``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RewardModelingConfig(_Strict):
    """A Bradley-Terry reward model trained on the ``preference`` dataset, saved as a sequence classifier."""

    center_coef: float = Field(0.0, ge=0, description="weight of the centring penalty (r_c + r_r)^2 (Eisenstein et "
                                                      "al.; TRL's center_rewards_coefficient, 0.01 recommended)")


__all__ = ["RewardModelingConfig"]

"""Configuration of the reward-model trainer (``trainer: reward_modeling``); its data is ``preference.*``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class RewardModelingConfig(_Strict):
    """A Bradley-Terry reward model trained on the ``preference`` dataset, saved as a sequence classifier."""

    head: str = Field("last_token", min_length=1, description="registered reward-model head: last_token (one output "
                                                           "read at the last token, TRL's RewardTrainer) or sentence "
                                                           "(Qiu et al. 2025: per-sentence R(end) - R(start), "
                                                           "attention-weighted); recorded in the saved config.json so "
                                                           "the reward_model reward scores with it")
    center_coef: float = Field(0.0, ge=0, description="weight of the centring penalty (r_c + r_r)^2 (Eisenstein et "
                                                      "al.; TRL's center_rewards_coefficient, 0.01 recommended)")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="label smoothing a of the BT loss: -(1-a) log "
                                                                   "sigma(d - m) - a log sigma(m - d) (Secrets of RLHF "
                                                                   "II)")
    use_margin: bool = Field(True, description="subtract the dataset's per-pair margin column (preference."
                                               "margin_key) from r_c - r_r, as TRL's RewardTrainer does")
    list_pairs: Literal["all", "best_worst"] = Field(
        "all", description="pairs a ranked list (lists data) trains on: every pair of responses with different "
                           "scores (InstructGPT's K-choose-2), or only its best vs its worst response")
    ensemble: int = Field(0, ge=0, description="reward models per fold trained first to measure each training "
                                               "pair's preference strength (mean and std of r_c - r_r over them); "
                                               "0: none. flip_fraction, flip_below and adaptive_margin need it")
    folds: int = Field(2, ge=1, description="cross-fitting folds of that ensemble: each pair is scored by members "
                                            "that never trained on it (1: every member trains on every pair, as "
                                            "Secrets of RLHF II)")
    member_steps: int = Field(0, ge=0, description="optimiser steps of each ensemble member (0: train.steps); the "
                                                   "members use train.prompts_per_step and train.lr")
    flip_fraction: float = Field(0.0, ge=0, lt=1, description="swap chosen and rejected of this fraction of the "
                                                               "training pairs, those of lowest preference strength "
                                                               "(Secrets of RLHF II flips ~20%)")
    flip_below: float | None = Field(None, description="also flip every pair whose preference strength (mean r_c - r_r "
                                                      "over the ensemble) is below this value (None: only "
                                                      "flip_fraction)")
    adaptive_margin: float = Field(0.0, ge=0, description="scale s of the adaptive margin m = s * strength subtracted "
                                                          "from r_c - r_r (Secrets of RLHF II); 0: off")

    @model_validator(mode="after")
    def _strength_needs_ensemble(self) -> "RewardModelingConfig":
        wants = [k for k, on in (("flip_fraction", self.flip_fraction > 0), ("flip_below", self.flip_below is not None),
                                 ("adaptive_margin", self.adaptive_margin > 0)) if on]
        if wants and self.ensemble < 1:
            raise ValueError(f"reward_modeling.{wants[0]} needs the preference strength of an ensemble: set "
                             "reward_modeling.ensemble to 1 or more (members)")
        return self


__all__ = ["RewardModelingConfig"]

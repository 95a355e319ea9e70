"""Configuration of the Q♯ trainer (``trainer: guided_decoding``, Zhou et al., arXiv 2502.20548)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GuidanceConfig(_Strict):
    """A value model of π_ref's success probability, trained online, that tilts π_ref at decoding time."""

    eta: float = Field(0.25, ge=1e-3, description="KL coefficient η of the guided policy π_ref·exp(Q*/η): a token's "
                                                  "logit rises by log(1 + p(e^{1/η} - 1)), at most 1/η (smaller η: "
                                                  "stronger guidance, further from π_ref; η -> inf: π_ref itself)")
    rollin: Literal["guided", "reference"] = Field(
        "guided", description="who writes the prefix before the switch point: the current guided policy (Q♯'s "
                              "aggregated online data, the states it visits) or π_ref (plain Monte-Carlo regression "
                              "of π_ref's value); the rest of every response is π_ref's, so its reward labels p")
    buffer_rows: int = Field(2048, ge=1, description="rows of the aggregated dataset the value model trains on (the "
                                                     "newest are kept); a row is a response with its switch point "
                                                     "and reward")
    updates_per_step: int = Field(4, ge=1, description="value-model optimiser steps per step, each on batch_rows rows "
                                                       "drawn from the aggregated dataset")
    batch_rows: int = Field(64, ge=1, description="rows per value-model optimiser step (train.micro_batch_size splits "
                                                  "them)")


__all__ = ["GuidanceConfig"]

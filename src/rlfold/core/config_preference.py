"""Configuration of the offline preference trainer (``trainer: preference``) and its datasets."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticPreferenceConfig(_Strict):
    """How a synthetic preference dataset is sampled when no file is given (``trainers.preference_synth``)."""

    samples: int = Field(4, ge=2, description="responses sampled per training prompt from the reference policy")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of those responses")
    prompts: int = Field(0, ge=0, description="training prompts used (0: every prompt of the task's train split)")
    selection: Literal["best_worst", "rejection_sampling"] = Field(
        "best_worst", description="which two responses form a pair: a top-scored vs a bottom-scored one, or RSO's "
                                  "statistical rejection sampling from pi_ref * exp(r / rso_beta) first")
    rso_beta: float = Field(0.5, gt=0, description="RSO's sampling temperature beta (large: plain samples; small: "
                                                    "best-of-N)")
    flip_fraction: float = Field(0.0, ge=0, lt=1, description="share of pairs whose labels are swapped (marked "
                                                               "flipped; poisoned-data experiments)")


class PreferenceConfig(_Strict):
    """Offline preference optimisation: the loss, its beta, the log-prob reduction and the datasets."""

    loss: str = Field("dpo", description="registered preference loss (dpo, ipo, kto, simpo, lipo_lambda, ...: "
                                         "docs/preference.md)")
    loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the loss (its "
                                                                          "signature's keywords besides beta)")
    beta: Optional[float] = Field(
        None, gt=0, description="the loss's beta (DPO's KL strength; IPO's tau; SimPO's beta; CPL's alpha); None: the "
                                "loss's own default from its paper (DPO 0.1, SimPO 2.5, SPPO 0.001, ...)")
    logp_reduction: Literal["sum", "mean"] = Field(
        "sum", description="sequence log-prob the loss sees: the sum over completion tokens (DPO's definition) or "
                           "that sum over the completion length (length-normalised)")
    train_file: Optional[str] = Field(
        None, description="preference dataset (JSONL, .parquet, .csv, .json or a save_to_disk directory); None: a "
                          "synthetic dataset sampled from the reference policy and scored by the run's rewards")
    held_out_file: Optional[str] = Field(
        None, description="held-out preference dataset for rewards/accuracies (None: held_out_fraction of the "
                          "training examples)")
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training examples held out when "
                                                                   "held_out_file is None")
    kind: Literal["auto", "pairs", "lists", "unpaired"] = Field(
        "auto", description="row kind of the dataset (auto: from the first row's fields)")
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="a bad row (chosen equals rejected, empty completion, a one-item list, a prompt longer "
                             "than the model's context): stop with its file and line, or skip it and count it")
    prompt_key: str = Field("prompt", min_length=1, description="column of the prompt (a string or chat messages)")
    chosen_key: str = Field("chosen", min_length=1, description="column of the chosen completion (pairs)")
    rejected_key: str = Field("rejected", min_length=1, description="column of the rejected completion (pairs)")
    responses_key: str = Field("responses", min_length=1, description="column of a ranked list's responses (lists)")
    scores_key: str = Field("scores", min_length=1, description="column of a ranked list's scores (lists)")
    completion_key: str = Field("completion", min_length=1, description="column of the completion (unpaired)")
    label_key: str = Field("label", min_length=1, description="column of the desirable (true) / undesirable (false) "
                                                              "label (unpaired)")
    margin_key: str = Field("margin", min_length=1, description="optional column of a per-pair margin")
    max_length: int = Field(0, ge=0, description="most prompt + completion tokens of a sequence (0: the model's "
                                                 "max_position_embeddings); a longer example is a bad row")
    reference_update_every: int = Field(
        0, ge=0, description="steps between reference refreshes to the current policy (DNO's iterations: each "
                             "iterate's reference is the previous one); 0: the initial policy throughout")
    online_samples: int = Field(4, ge=2, description="policy samples per prompt for a loss that needs online "
                                                     "samples (HyPO's KL term, RLOO baseline)")
    win_rate_samples: int = Field(4, ge=1, description="responses per held-out prompt (temperature 1) compared with "
                                                       "the reference policy's by the ground-truth reward")
    synthetic: SyntheticPreferenceConfig = Field(
        default_factory=SyntheticPreferenceConfig, description="how the synthetic dataset is sampled (train_file "
                                                               "None)")


__all__ = ["PreferenceConfig", "SyntheticPreferenceConfig"]

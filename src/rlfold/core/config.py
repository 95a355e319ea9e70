"""Run configuration: pydantic models with ranges and registered-part checks (loading: ``config_loader``)."""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from rlfold.core.registry import (
    ADVANTAGES, AGGREGATIONS, COLLECTORS, CONFIDENCE_PARSERS, ENGINES, ENVIRONMENTS, FOLLOWUPS, GROUP_FILTERS,
    KL_ESTIMATORS, POLICY_LOSSES, PREFERENCE_LOSSES, REGULARIZERS, REPLAYS, REWARD_AGGREGATORS, REWARD_HEADS, REWARDS, SAMPLERS, SELECTIONS,
    SHAPINGS, TASKS, TRACKERS, TRAINERS, needed_inputs, reward_check,
)
from rlfold.core.errors import dotted
from rlfold.core.config_preference import PreferenceConfig
from rlfold.core.config_guidance import GuidanceConfig
from rlfold.core.config_reward_modeling import RewardModelingConfig
from rlfold.core.options import is_group_relative, literal_choices
from rlfold.core.suggest import closest

class LocatedValueError(ValueError):
    """A validation error located at ``loc`` (raised by model validators, which pydantic places at the root)."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(_Strict):
    """LoRA adapters on the policy (Hu et al. 2021, arXiv 2106.09685), through peft (``rlfold[lora]``)."""

    r: int = Field(16, ge=1, le=4096, description="rank of each adapter (the inner dimension of B A)")
    alpha: float = Field(32.0, gt=0, description="scaling numerator: the update is (alpha / r) B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input (0 keeps training and rollout "
                                                        "forwards equal)")
    target_modules: Optional[list[str]] = Field(
        None, min_length=1, description="names of the linear modules that get adapters (None: the attention and MLP "
                                        "projections q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
                                        "that the model has)")
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="biases trained with the adapters: none, all, or those of the adapted modules")


class ModelConfig(_Strict):
    path: str = Field("tiny-arith", min_length=1, description="HF causal-LM directory, or the name of a shipped model")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the policy, reference model and critic are loaded in (bfloat16/float16 halve "
                               "memory on accelerators that support them; float32 on CPU)")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where the policy (and the reference, critic and hf engines built from it) lives: auto (cuda if "
                    "available, else cpu), cpu, cuda or cuda:N")
    disable_dropout: bool = Field(True, description="zero dropout in the policy so training and rollout forwards agree")
    forward: Literal["lean", "transformers"] = Field(
        "lean", description="lean: rlfold's lean forward (models/lean.py) for Qwen2/Llama/Mistral models it can run "
                            "exactly (no adapters, default rotary embedding, no sliding window; not under fsdp2): "
                            "attention as two batched products, LM head on the response only, a preallocated KV "
                            "cache in the hf engine; transformers: always the model's own forward")
    lora: Optional[LoraConfig] = Field(
        None, description="train LoRA adapters instead of every weight (None: full fine-tuning); the KL reference is "
                          "then the same module with its adapters disabled")


# The task options build_task passes from TaskConfig's own fields (not settable through task.kwargs).
TASK_FIELDS = ("levels", "train_size", "held_out_size", "held_out_fraction", "seed", "train_file", "held_out_file",
               "columns")


class TaskConfig(_Strict):
    name: str = Field("arith", description="registered task name")
    levels: list[int] = Field(
        default_factory=lambda: [2], description="arith difficulty levels to mix (1: one-digit +, 2: two-digit +, "
                                                 "3: two-digit -, 4: three-digit +)")
    train_size: int = Field(
        0, ge=0, description="training problems, shared equally between the levels (0: all; level 4 is too large "
                             "to enumerate and gives 50,000 sampled problems)")
    held_out_size: int = Field(
        200, ge=1, description="generated held-out problems, shared equally between the levels (ignored with "
                               "held_out_file; eval.size caps how many are evaluated)")
    held_out_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of each level's problems reserved for the held-out split, chosen by a "
                                     "hash of the prompt text so train and held-out never overlap")
    train_file: Optional[str] = Field(
        None, description="dataset of prompt/answer rows (replaces generated data): JSONL, .parquet, .csv, .json or a "
                          "save_to_disk directory (all but JSONL need rlfold[data])")
    held_out_file: Optional[str] = Field(
        None, description="dataset of prompt/answer rows for evaluation (replaces the generated held-out split); "
                          "formats as train_file")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="options of the registered task beyond the fields above (search_qa: "
                                          "memory_fraction, num_entities)")
    prompt_key: str = Field("prompt", min_length=1, description="dataset column holding the prompt text")
    answer_key: str = Field("answer", min_length=1, description="dataset column holding the gold answer")
    messages_key: str = Field(
        "messages", min_length=1, description="dataset column holding chat messages (a list of {role: "
                                              "system|user|assistant, content}); used instead of the prompt column")
    system_prompt: Optional[str] = Field(
        None, description="system message put before every prompt's chat messages (needs a chat template)")
    chat_template: bool = Field(
        True, description="encode prompts with the tokenizer's chat template when it has one (false: plain text)")
    allow_unknown_chars: bool = Field(
        False, description="train although some prompt characters map to the tokenizer's unknown token (the model "
                           "cannot read them); by default such prompts are an error naming them")


class RewardSpec(_Strict):
    name: str = Field(description="registered reward function (exact_match, format, math_verify, ...)")
    weight: float = Field(1.0, description="multiplier of this function's score in the summed reward (0: scored and "
                                           "logged as reward/<name>/mean, but not trained on)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the reward function")


class AggregationSpec(_Strict):
    name: str = Field("weighted_sum", description="registered reward aggregator (weighted_sum, gated): how the "
                                                  "scores of rewards[] combine into one reward per rollout")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the reward aggregator")


class SelectionSpec(_Strict):
    name: str = Field(description="registered selection part (mask_truncated, top_entropy, pf_ppo, tis, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the selection part")


class ReplaySpec(_Strict):
    name: str = Field(description="registered replay part (pipo): after the update, a batch to train on once more")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the replay part")


class RegularizerSpec(_Strict):
    name: str = Field(description="registered sequence-level regulariser (chi2_occupancy, ...)")
    coef: float = Field(ge=0, description="coefficient of the regulariser's penalty in the loss (0: logged only)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the regulariser")


class ShapingSpec(_Strict):
    name: str = Field(description="registered reward-shaping part (hapo, dler, arlcp, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the reward-shaping part")


class GroupFilterSpec(_Strict):
    name: str = Field(description="registered group filter (dynamic_sampling, ...): which prompt groups a step keeps")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the group filter")


class SamplerSpec(_Strict):
    name: str = Field("uniform", description="registered prompt sampler (uniform, domain_mix, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the prompt sampler")


class EnvSpec(_Strict):
    name: str = Field(description="registered environment (multi_attempt, ...): the rollout becomes multi-turn")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the environment")


class FollowupSpec(_Strict):
    name: str = Field(description="registered follow-up question (shuffled_options, ...) asked after every response")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the follow-up")


class RolloutConfig(_Strict):
    engine: str = Field("hf", description="registered rollout engine that generates the training rollouts (hf, vllm, "
                                             "vllm_server: docs/engines.md)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the engine")
    eval_engine: str = Field("hf", description="registered engine for held-out evaluation (single turn, no env)")
    eval_engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the eval engine")
    env: Optional[EnvSpec] = Field(
        None, description="environment the model talks to between turns (None: single-turn generation)")
    followup: Optional[FollowupSpec] = Field(
        None, description="a second question asked greedily after every response, training and evaluation alike "
                          "(ACRE's re-ask with shuffled options); its answers reach rewards as rollout_extras and "
                          "evaluation as val/<task>/<extra>/mean, and are never trained on (None: none)")
    max_turns: int = Field(
        16, ge=1, description="multi-turn rollouts: model turns per episode at most (the environment may end sooner)")
    env_workers: int = Field(
        8, ge=1, description="multi-turn rollouts: threads stepping the environments of one turn at once (tool calls of "
                             "different episodes overlap; 1: one after another)")
    turn_budget: Literal["total", "per_turn"] = Field(
        "total", description="multi-turn rollouts: max_new_tokens bounds all model turns of an episode together, "
                             "or each turn")
    recompute_logprobs: Optional[bool] = Field(
        None, description="recompute old log-probs with the trainer before the update (None: when the engine does "
                          "not share the trainer's weights or train.mixed_precision is bf16, except that an update "
                          "of one optimiser step (ppo_epochs 1, one mini-batch) on rows the shared engine just "
                          "sampled, with no reference, regulariser, selection part, replay part or advantage "
                          "reading old log-probs, takes them from its own forward, detached: exact, and one forward "
                          "fewer; false with an async_mode: such a one-step update takes the proximal log-probs "
                          "from its own forward, with decoupled_ppo weighting by the behaviour log-probs)")
    async_mode: str = Field(
        "sync", description="registered rollout collector: sync (on-policy), one_step (the rollouts of step k "
                            "generated with step k-1's weights while it updates) or bounded (up to max_staleness "
                            "versions old); the asynchronous ones need an engine with weights of its own "
                            "(docs/engines.md)")
    max_staleness: int = Field(
        1, ge=1, description="async_mode bounded: the most policy versions a trained row may lag the trainer "
                             "(one_step: 1)")
    n: int = Field(8, ge=1, description="samples per prompt (G)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the training rollouts (1: the "
                                                       "policy's own distribution; 0: greedy, no spread in a group)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the most likely tokens up to this "
                                                       "probability mass (1: off)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens only (0: off)")
    max_new_tokens: int = Field(8, ge=1, description="response length limit in tokens (multi-turn: see turn_budget); "
                                                      "also the default of algo.loss_agg_max_len and "
                                                      "eval.max_new_tokens, and the limit shaping parts measure")
    stop_strings: list[str] = Field(default_factory=list, description="end a response once its text contains one of "
                                                                      "these strings (the text so far is kept)")
    stop_token_ids: list[int] = Field(default_factory=list, description="token ids that end a response, besides eos")
    ignore_eos: bool = Field(False, description="sample past eos up to max_new_tokens (benchmarks)")


class AlgoConfig(_Strict):
    advantage: str = Field("grpo", description="registered advantage estimator")
    advantage_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the advantage")
    policy_loss: str = Field("ppo_clip", description="registered per-token policy loss")
    policy_loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the policy loss")
    clip_low: Optional[float] = Field(
        None, ge=0, description="eps_low of the policy loss (None: the loss's own default, 0.2 for ppo_clip, "
                                "3e-4 for gspo); an error for a loss without it")
    clip_high: Optional[float] = Field(
        None, ge=0, description="eps_high of the policy loss (None: the loss's own default); an error for a loss "
                                "without it")
    clip_c: Optional[float] = Field(
        None, gt=1, description="dual-clip constant for negative advantages (None: the loss's default, off for "
                                "ppo_clip); an error for a loss without it")
    loss_agg: str = Field(
        "seq-mean-token-mean", description="registered loss aggregation: how per-token losses become one number "
                                           "(seq-mean-token-mean, token-mean, seq-mean-token-sum-norm, ...)")
    loss_agg_max_len: Optional[int] = Field(
        None, ge=1, description="L_max of constant-length aggregations (default: rollout.max_new_tokens)")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient (0: no reference model)")
    kl_estimator: str = Field(
        "k3", description="registered per-token KL estimator (k1, k2, k3, low_var_kl, ...), used by both kl_in "
                          "modes; only with kl_coef > 0")
    kl_in: Literal["loss", "reward"] = Field("loss", description="KL as a loss term, or subtracted from the reward")
    kl_ctrl: Literal["fixed", "adaptive"] = Field("fixed", description="fixed coefficient, or adaptive (Ziegler et al.)")
    kl_target: float = Field(0.1, gt=0, description="adaptive KL: target KL per token")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL: horizon in samples")
    entropy_coef: float = Field(0.0, description="entropy bonus: loss -= entropy_coef * aggregated entropy")
    sft_coef: float = Field(0.0, ge=0, description="weight of an NLL loss on the task's demonstrations")
    selection: list[SelectionSpec] = Field(default_factory=list, description="selection parts, applied in order")
    regularizers: list[RegularizerSpec] = Field(
        default_factory=list, description="sequence-level regularisers added to the loss beside KL (chi2_occupancy: "
                                          "docs/regularizers.md); one needing the reference builds it")
    group_filters: list[GroupFilterSpec] = Field(
        default_factory=list, description="group filters, applied in order while collecting: a prompt group "
                                          "that any filter rejects is dropped and more prompts are generated")
    replay: Optional[ReplaySpec] = Field(
        None, description="replay part run after each update (pipo: replay the previous batch; None: no replay)")
    max_gen_batches: int = Field(
        4, ge=1, description="with group filters: generation rounds per step at most (then train on what passed)")
    allow_no_signal: bool = Field(
        False, description="run a group-relative advantage or group filter (grpo, rloo, dynamic_sampling, ...) "
                           "although rollout.n=1 or greedy sampling (temperature 0, top_k 1) leaves it no learning "
                           "signal; by default such a config is an error")

    def policy_loss_options(self) -> dict[str, Any]:
        """Keyword options for the policy loss: the clip fields that are set, then ``policy_loss_kwargs``."""
        clips = {k: getattr(self, k) for k in CLIP_FIELDS if getattr(self, k) is not None}
        return {**clips, **self.policy_loss_kwargs}


CLIP_FIELDS = ("clip_low", "clip_high", "clip_c")


class CriticConfig(_Strict):
    """The value model, used when the advantage part needs ``values`` (PPO with GAE)."""

    model: Literal["separate", "shared"] = Field(
        "separate", description="a separate value model, or a value head on the policy backbone")
    path: Optional[str] = Field(None, description="backbone to initialise a separate critic from (default: model.path)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of a separate critic, and of a shared "
                                                   "critic's head during pretrain_steps")
    vf_coef: float = Field(0.5, ge=0, description="value-loss weight in the joint loss (shared critic)")
    cliprange_value: Optional[float] = Field(0.5, gt=0, description="value clipping around the old values (None: off)")
    gamma: float = Field(1.0, ge=0, le=1, description="discount of the critic's GAE targets")
    lam: float = Field(
        0.95, ge=0, le=1, description="GAE lambda of the critic's targets (VC-PPO decouples it from the actor's: 1.0)")
    egae: bool = Field(
        False, description="T-PPO EGAE targets: a truncated row bootstraps from its last value, and the critic "
                           "learns from finished rows only")
    pretrain_steps: int = Field(0, ge=0, description="VC-PPO value pretraining steps on the fixed initial policy")


class TrainConfig(_Strict):
    steps: int = Field(100, ge=1, description="RL steps of the run (each: prompts_per_step x rollout.n rollouts, "
                                               "then the update)")
    prompts_per_step: int = Field(16, ge=1, description="B prompts per step")
    ppo_epochs: int = Field(1, ge=1, description="passes over each step's batch, for the policy and a separate critic "
                                                  "(1: on-policy; more reuse the rollouts under the clipped ratio)")
    mini_batch_size: int = Field(0, ge=0, description="sequences per optimiser step (0: the whole batch)")
    micro_batch_size: int = Field(0, ge=0, description="sequences per forward/backward (0: the mini-batch)")
    micro_batch_tokens: int = Field(
        0, ge=0, description="length-bucketed micro-batches: rows sorted by length, each micro-batch at most this many "
                             "padded tokens (rows x longest row; a longer row goes alone); 0: fixed micro_batch_size")
    mixed_precision: Literal["none", "bf16"] = Field(
        "none", description="bf16: forward/backward under bf16 autocast with float32 parameters and optimiser "
                            "(needs model.dtype=float32); none: compute in model.dtype")
    gradient_checkpointing: bool = Field(
        False, description="recompute decoder activations in the backward pass (less memory, about 1/3 more compute)")
    peak_tflops: Optional[float] = Field(
        None, gt=0, description="peak TFLOP/s of the device for perf/mfu (None: looked up for known GPUs; on CPU "
                                "perf/mfu is logged only when this is set)")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the policy (and of a shared critic's head)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the policy and critic optimisers")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW (beta1, beta2) of the policy and critic optimisers, each in [0, 1)")
    warmup_steps: int = Field(0, ge=0, description="optimiser steps of linear warm-up")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="policy learning rate after warm-up: constant, or cosine/linear decay to "
                                "min_lr_ratio x lr over the run's optimiser steps")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="final learning rate of the cosine/linear schedule, as a "
                                                              "fraction of lr (unused by constant)")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm per optimiser step (policy and "
                                                     "separate critic)")
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many non-finite steps in a row")
    strategy: Literal["single", "ddp", "fsdp2"] = Field(
        "single", description="how the update uses several processes: single (one process), ddp or fsdp2 "
                              "(under torchrun or rlfold train --nproc N; every rank runs the driver)")
    sampler: SamplerSpec = Field(
        default_factory=SamplerSpec, description="how training prompts are drawn (uniform epochs by default)")

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"beta{i + 1}={b!r} must be in [0, 1) (AdamW's moving-average factors; "
                                 f"e.g. the default (0.9, 0.999)), got betas={list(betas)}")
        return betas


class CheckpointConfig(_Strict):
    every: int = Field(50, ge=0, description="steps between checkpoints (0: only at the end)")
    keep: int = Field(2, ge=1, description="most recent checkpoints kept under checkpoints/ (older ones are deleted; "
                                            "the final model is also written to final/)")


class LogConfig(_Strict):
    samples_per_step: int = Field(4, ge=0, description="rollouts per step written to samples.jsonl, spread over the "
                                                        "batch (0: none)")
    progress: bool = Field(True, description="show the progress bar (turn off when logging to a file)")
    trackers: list[str] = Field(
        default_factory=list, description="experiment trackers that get every metrics.jsonl row and the samples: "
                                          "tensorboard (RUN/tb), wandb (offline, RUN/wandb), trackio (RUN/trackio)")
    project: str = Field("rlfold", min_length=1, description="project name the trackers file the run under")
    run_name: Optional[str] = Field(None, min_length=1, description="run name in the trackers (None: the run "
                                                                    "directory's name)")

    @field_validator("trackers")
    @classmethod
    def _trackers_once(cls, trackers: list[str]) -> list[str]:
        twice = [t for i, t in enumerate(trackers) if t in trackers[:i]]
        if twice:
            raise ValueError(f"tracker {twice[0]!r} is listed twice; name each tracker once, got {trackers}")
        return trackers


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="steps between held-out evaluations (0: before and after only)")
    size: int = Field(200, ge=1, description="held-out prompts evaluated: the first ones of the task's held-out split")
    pass_k: int = Field(4, ge=1, description="samples per prompt (at temperature 1) for the unbiased pass@k metric")
    max_new_tokens: Optional[int] = Field(
        None, ge=1, description="response length limit of evaluation (None: rollout.max_new_tokens)")
    multi_turn: bool = Field(
        False, description="evaluate whole episodes in rollout.env (tool agents, whose answers need the tool); "
                           "false: single-turn answers")
    group_key: Optional[str] = Field(
        None, min_length=1, description="dataset column (Prompt.meta) to break held-out accuracy down by: "
                                        "val/<task>/acc/<value> per value (e.g. kind: knowledge vs memory questions)")
    confidence: Optional[str] = Field(
        None, min_length=1, description="confidence parser (registered) reading the confidence each greedy answer "
                                        "states, for val/<task>/ece (10 equal-width bins), val/<task>/brier and "
                                        "val/<task>/confidence_invalid (unreadable ones count as 0.5); None: not "
                                        "measured")
    kl_to_reference: bool = Field(
        False, description="also measure val/<task>/kl_ref: KL(pi || pi_ref) of the sampled pass@k responses, the "
                           "sum over their tokens of log pi - log pi_ref (nats per response), pi_ref the base model; "
                           "costs one reference forward per evaluation")


class RayConfig(_Strict):
    """Ray: rollout and reward workers as actors (the trainer stays in the driver process)."""

    address: Optional[str] = Field(None, min_length=1, description="cluster to join with ray.init(address=...) "
                                   "('auto' or host:port); None: start a local cluster on loopback, stopped at the end")
    num_rollout_workers: int = Field(1, ge=0, description="rollout actors the training engine is split over (0: the "
                                                          "engine stays in the driver process)")
    num_reward_workers: int = Field(0, ge=0, description="reward actors the reward functions score in (0: in the "
                                                         "driver process)")
    cpus_per_rollout_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each rollout actor")
    gpus_per_rollout_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves for each rollout actor (> 0: "
                                                                  "its model copy lives on cuda)")
    cpus_per_reward_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each reward actor")
    threads_per_worker: int = Field(0, ge=0, description="torch CPU threads in each actor (0: the driver's count)")
    placement: Optional[Literal["pack", "strict_pack", "spread", "strict_spread"]] = Field(
        None, description="placement-group strategy for each role's actors, one bundle per actor (pack / "
                          "strict_pack colocate GPU workers on one node); None: no placement group")
    num_cpus: int = Field(2, ge=1, description="CPUs of a local cluster rlfold starts (address None)")
    num_gpus: int = Field(0, ge=0, description="GPUs of a local cluster rlfold starts (address None)")
    object_store_mb: int = Field(200, ge=80, description="object-store memory of a local cluster rlfold starts, MiB")
    log_to_driver: bool = Field(False, description="print the actors' stdout/stderr in the driver")

    @model_validator(mode="after")
    def _fits_local_cluster(self) -> "RayConfig":
        """A local cluster too small for the workers would make them wait forever: refuse it up front."""
        if self.address is not None:
            return self
        cpus = (self.num_rollout_workers * self.cpus_per_rollout_worker
                + self.num_reward_workers * self.cpus_per_reward_worker)
        gpus = self.num_rollout_workers * self.gpus_per_rollout_worker
        for kind, need, have in (("cpus", cpus, self.num_cpus), ("gpus", gpus, self.num_gpus)):
            if need > have + 1e-9:
                raise LocatedValueError(("ray", f"num_{kind}"), (
                    f"the workers need {need:g} {kind.upper()[:-1]}s (workers x {kind}_per_*_worker) but the local "
                    f"cluster has ray.num_{kind}={have}; raise ray.num_{kind}, lower the per-worker {kind} or the "
                    "worker counts"))
        return self


class RunConfig(_Strict):
    """A full run: model, task, rewards, rollout, algorithm parts, optimisation, logging."""

    name: str = Field("run", description="run name (the default run directory starts with it)")
    trainer: str = Field("online", description="registered trainer step the run loop calls: online (RL), "
                                               "preference (DPO family), reward_modeling (Bradley-Terry), "
                                               "guided_decoding (Q♯: value-guided decoding of the reference)")
    imports: list[str] = Field(
        default_factory=list,
        description="Python modules or .py files imported before validation, to register custom parts",
    )
    seed: int = Field(0, description="run seed: global RNGs, training-prompt order, rollout and selection seeds (the "
                                     "generated held-out prompts do not depend on it)")
    run_dir: Optional[str] = Field(None, description="output directory (default runs/<name>-<time>)")
    threads: int = Field(0, ge=0, description="torch CPU threads of the process (0: torch default, one per core); a "
                                             "small CPU forward (an update under 2e9 multiply-adds, a small model's "
                                             "decode step) runs on one thread either way, which is faster there")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy model: where it is loaded from, "
                                                                        "in which dtype")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the task: training and held-out prompts with "
                                                                     "verifiable answers")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="exact_match"), RewardSpec(name="format", weight=0.1)],
        description="reward functions, combined by reward_aggregation (default: summed by weight) into each "
                    "rollout's reward (at least one)",
    )
    reward_aggregation: AggregationSpec = Field(
        default_factory=AggregationSpec, description="how the reward functions' scores combine into one reward, "
                                                     "before the shaping parts (gated: constraints gate objectives)")
    accuracy_reward: str = Field("exact_match", description="reward whose mean is logged as acc/mean")
    reward_errors: Literal["raise", "none"] = Field(
        "raise", description="a reward function that raises: stop the run, or score that sample None (unscorable)")
    shaping: list[ShapingSpec] = Field(default_factory=list, description="reward-shaping parts, applied in order")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="rollout generation: engines, sampling, samples per prompt, "
                                                   "multi-turn environment")
    algo: AlgoConfig = Field(
        default_factory=AlgoConfig, description="the RL algorithm: advantage, policy loss, aggregation, KL, "
                                                "regularisers, selection, group filters")
    critic: CriticConfig = Field(default_factory=CriticConfig, description="the value model (built only when the "
                                                                           "advantage needs values, e.g. gae)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation: steps, batch sizes, optimiser, "
                                                                        "learning-rate schedule, prompt sampler")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoint cadence and "
                                                                                       "retention")
    log: LogConfig = Field(default_factory=LogConfig, description="what is logged besides metrics.jsonl")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="held-out evaluation: cadence, size, pass@k, "
                                                                     "length limit")
    ray: Optional[RayConfig] = Field(None, description="run rollout and reward workers as Ray actors (None: "
                                                       "everything in this process)")
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig, description="offline preference optimisation (trainer: preference) and the "
                                                      "preference dataset of trainer: reward_modeling")
    reward_modeling: RewardModelingConfig = Field(
        default_factory=RewardModelingConfig, description="the reward-model objective (trainer: reward_modeling)")
    guidance: GuidanceConfig = Field(
        default_factory=GuidanceConfig, description="value-guided decoding of π_ref (trainer: guided_decoding, Q♯): the value "
                                                  "model's data and updates, and the guidance strength η")

    @model_validator(mode="after")
    def _check_parts(self) -> "RunConfig":
        checks = [
            (("task", "name"), self.task.name, TASKS),
            (("trainer",), self.trainer, TRAINERS),
            (("rollout", "engine"), self.rollout.engine, ENGINES),
            (("rollout", "eval_engine"), self.rollout.eval_engine, ENGINES),
            (("rollout", "async_mode"), self.rollout.async_mode, COLLECTORS),
            (("train", "sampler", "name"), self.train.sampler.name, SAMPLERS),
            (("algo", "advantage"), self.algo.advantage, ADVANTAGES),
            (("algo", "policy_loss"), self.algo.policy_loss, POLICY_LOSSES),
            (("algo", "loss_agg"), self.algo.loss_agg, AGGREGATIONS),
            (("algo", "kl_estimator"), self.algo.kl_estimator, KL_ESTIMATORS),
            (("accuracy_reward",), self.accuracy_reward, REWARDS),
            (("reward_aggregation", "name"), self.reward_aggregation.name, REWARD_AGGREGATORS),
            (("preference", "loss"), self.preference.loss, PREFERENCE_LOSSES),
            (("reward_modeling", "head"), self.reward_modeling.head, REWARD_HEADS),
        ] + [(("rewards", i, "name"), r.name, REWARDS) for i, r in enumerate(self.rewards)] \
          + [(("algo", "selection", i, "name"), s.name, SELECTIONS) for i, s in enumerate(self.algo.selection)] \
          + [(("algo", "regularizers", i, "name"), r.name, REGULARIZERS) for i, r in enumerate(self.algo.regularizers)] \
          + [(("shaping", i, "name"), s.name, SHAPINGS) for i, s in enumerate(self.shaping)] \
          + [(("algo", "group_filters", i, "name"), f.name, GROUP_FILTERS) for i, f in enumerate(self.algo.group_filters)] \
          + ([(("algo", "replay", "name"), self.algo.replay.name, REPLAYS)] if self.algo.replay else []) \
          + ([(("rollout", "env", "name"), self.rollout.env.name, ENVIRONMENTS)] if self.rollout.env else []) \
          + ([(("rollout", "followup", "name"), self.rollout.followup.name, FOLLOWUPS)] if self.rollout.followup
             else []) \
          + ([(("eval", "confidence"), self.eval.confidence, CONFIDENCE_PARSERS)] if self.eval.confidence else []) \
          + [(("log", "trackers", i), t, TRACKERS) for i, t in enumerate(self.log.trackers)]
        for loc, value, registry in checks:
            if value not in registry:
                close = closest(value, registry.names())
                hint = f"; did you mean {close!r}?" if close else ""
                raise LocatedValueError(loc, f"unknown {registry.kind} {value!r}{hint} (known: {', '.join(registry.names())})")
        if not self.rewards:
            raise LocatedValueError(("rewards",), "at least one reward function is required")
        a = self.algo
        check_part_options(("algo", "advantage_kwargs"), "advantage estimator", a.advantage, ADVANTAGES.get(a.advantage),
                      a.advantage_kwargs, n_positional=3)
        loss_fn = POLICY_LOSSES.get(a.policy_loss)
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", a.policy_loss, loss_fn,
                      a.policy_loss_kwargs, n_positional=4)
        for key in CLIP_FIELDS:
            if getattr(a, key) is None:
                continue
            if key in a.policy_loss_kwargs:
                raise LocatedValueError(("algo", key), f"{key} is set both as algo.{key} and in "
                                                       "algo.policy_loss_kwargs; set it once")
            check_part_options(("algo",), "policy loss", a.policy_loss, loss_fn, {key: getattr(a, key)}, n_positional=4)
        for i, spec in enumerate(a.group_filters):
            check_part_options(("algo", "group_filters", i, "kwargs"), "group filter", spec.name,
                          GROUP_FILTERS.get(spec.name), spec.kwargs, n_positional=1)
        check_part_options(("train", "sampler", "kwargs"), "prompt sampler", self.train.sampler.name,
                      SAMPLERS.get(self.train.sampler.name), self.train.sampler.kwargs, n_positional=1,
                      reserved=("seed",))
        check_part_options(("task", "kwargs"), "task", self.task.name, TASKS.get(self.task.name), self.task.kwargs,
                      n_positional=0, reserved=TASK_FIELDS)
        if self.rollout.env is not None:
            check_part_options(("rollout", "env", "kwargs"), "environment", self.rollout.env.name,
                          ENVIRONMENTS.get(self.rollout.env.name), self.rollout.env.kwargs, n_positional=0)
        elif self.eval.multi_turn:
            raise LocatedValueError(("eval", "multi_turn"), "eval.multi_turn runs held-out episodes in rollout.env, "
                                                             "but rollout.env is not set")
        if self.rollout.followup is not None:
            check_part_options(("rollout", "followup", "kwargs"), "follow-up question", self.rollout.followup.name,
                               FOLLOWUPS.get(self.rollout.followup.name), self.rollout.followup.kwargs, n_positional=0)
        for i, spec in enumerate(a.selection):
            check_part_options(("algo", "selection", i, "kwargs"), "selection part", spec.name, SELECTIONS.get(spec.name),
                          spec.kwargs, n_positional=1, reserved=("generator",))
        for i, spec in enumerate(a.regularizers):
            check_part_options(("algo", "regularizers", i, "kwargs"), "regulariser", spec.name,
                               REGULARIZERS.get(spec.name), spec.kwargs, n_positional=0)
        if a.replay is not None:
            check_part_options(("algo", "replay", "kwargs"), "replay part", a.replay.name, REPLAYS.get(a.replay.name),
                               a.replay.kwargs, n_positional=0)
        for key in ("engine", "eval_engine"):
            check_part_options(("rollout", f"{key}_kwargs"), "rollout engine", getattr(self.rollout, key),
                          ENGINES.get(getattr(self.rollout, key)), getattr(self.rollout, f"{key}_kwargs"),
                          n_positional=1)
        for i, spec in enumerate(self.shaping):
            check_part_options(("shaping", i, "kwargs"), "reward-shaping part", spec.name, SHAPINGS.get(spec.name),
                          spec.kwargs, n_positional=1, reserved=("state",))
        for i, spec in enumerate(self.rewards):
            check_part_options(("rewards", i, "kwargs"), "reward function", spec.name, REWARDS.get(spec.name),
                          spec.kwargs, n_positional=3)
        agg = self.reward_aggregation
        aggregator = REWARD_AGGREGATORS.get(agg.name)
        check_part_options(("reward_aggregation", "kwargs"), "reward aggregator", agg.name, aggregator, agg.kwargs,
                           n_positional=1)
        check = reward_check(aggregator)
        problem = check([(r.name, r.weight) for r in self.rewards], **agg.kwargs) if check is not None else None
        if problem is not None:
            raise LocatedValueError(("reward_aggregation", "kwargs", *problem[0]), problem[1])
        pref = self.preference
        if "beta" in pref.loss_kwargs:
            raise LocatedValueError(("preference", "loss_kwargs", "beta"), "beta is set by preference.beta; set it "
                                                                            "there, not in preference.loss_kwargs")
        check_part_options(("preference", "loss_kwargs"), "preference loss", pref.loss, PREFERENCE_LOSSES.get(pref.loss),
                      pref.loss_kwargs, n_positional=1, reserved=("beta",))
        if pref.logp_reduction == "mean" and getattr(PREFERENCE_LOSSES.get(pref.loss), "reads_lengths", False):
            raise LocatedValueError(("preference", "logp_reduction"), (
                f"preference loss {pref.loss!r} normalises by the completion lengths itself and needs summed "
                "log-probs; preference.logp_reduction=mean would divide twice. Set preference.logp_reduction=sum"))
        self._check_signal()
        return self

    def _check_signal(self) -> None:
        """A group-relative part (``@group_relative``) needs several different samples per prompt."""
        if self.algo.allow_no_signal:
            return
        r = self.rollout
        parts = [("advantage", self.algo.advantage, ADVANTAGES.get(self.algo.advantage),
                  "gives every sample of a group the same advantage, exactly 0")]
        parts += [("group filter", f.name, GROUP_FILTERS.get(f.name),
                   "rejects every group (its samples never differ), so each step trains on groups without signal")
                  for f in self.algo.group_filters]
        parts += [("reward-shaping part", sp.name, SHAPINGS.get(sp.name),
                   "gives every sample of a group the same reward, so the group-relative advantage is 0")
                  for sp in self.shaping]
        opt_out = "set algo.allow_no_signal=true to run it anyway"
        for what, name, part, effect in parts:
            if not is_group_relative(part):
                continue
            if r.n == 1:
                raise LocatedValueError(("rollout", "n"), (
                    f"rollout.n=1 with the group-relative {what} {name!r}: it compares the samples of each "
                    "prompt with each other, and one sample per prompt leaves nothing to compare with, so there "
                    "is no group-relative learning signal. Use rollout.n >= 2"
                    + (", or an advantage that needs no group (reinforce_pp, remax, gae)" if what == "advantage"
                       else "") + f"; {opt_out}"))
            if r.temperature == 0 or r.top_k == 1:
                key = "temperature" if r.temperature == 0 else "top_k"
                raise LocatedValueError(("rollout", key), (
                    f"rollout.{key}={getattr(r, key)} samples greedily, so the {r.n} samples of a prompt are "
                    f"identical and score the same: the group-relative {what} {name!r} {effect}, and there is "
                    "no learning signal. Sample with rollout.temperature > 0 (1: the policy's own distribution) "
                    f"and rollout.top_k 0 (off) or >= 2; {opt_out}"))


def check_part_options(loc: tuple[Any, ...], kind: str, name: str, fn: Any, given: dict[str, Any], *,
                       n_positional: int, reserved: tuple[str, ...] = ()) -> None:
    """Every key of ``given`` must be a keyword option of part ``fn`` (after its positional tensors),
    every value must fit the option's annotation, and every option without a default must be given.

    Inputs the part declares with ``@needs`` are supplied by the trainer, so they are not options.
    A value is validated strictly (no coercion: the part receives exactly what the recipe wrote) with
    ``pydantic.TypeAdapter`` of the annotation, so a part states an option's domain once, in its
    signature (``Literal[...]``, ``Annotated[float, Field(gt=0, lt=1)]``), and the same check refuses a
    bad value at config load.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    skip = set(needed_inputs(fn)) | set(reserved)
    options = {p.name: p for p in params[n_positional:]
               if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               and p.name not in skip}
    accepted = list(options)
    for key in given:
        if key not in accepted:
            close = closest(key, accepted)
            hint = f"did you mean {close!r}? " if close else ""
            raise LocatedValueError(
                (*loc, key),
                f"{kind} {name!r} takes no option {key!r}; {hint}"
                f"it accepts: {', '.join(accepted) or 'no options (set ' + '.'.join(map(str, loc)) + '={})'}",
            )
    missing = [k for k, p in options.items() if p.default is inspect.Parameter.empty and k not in given]
    if missing:
        raise LocatedValueError(
            loc, f"{kind} {name!r} needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                 f"(no default); set {', '.join(f'{dotted(loc)}.{k}' for k in missing)}")
    hints = _option_hints(fn)
    for key, value in given.items():
        ann = hints.get(key)
        if ann is None:
            continue
        problem = _value_problem(ann, value)
        if problem is not None:
            sep = "" if problem.startswith(":") else " "
            raise LocatedValueError((*loc, key), f"{kind} {name!r}: option {key}={value!r}{sep}{problem}")


def _option_hints(fn: Any) -> dict[str, Any]:
    """The evaluated annotations (``Annotated`` kept) of ``fn``'s parameters; ``__init__``'s for a class.

    Parts use ``from __future__ import annotations``, so the annotations are strings resolved in the
    part's module; one that cannot be resolved is left out (its option's name is still checked)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - one unresolvable annotation: resolve the others one by one
        pass
    out: dict[str, Any] = {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    for key, ann in getattr(target, "__annotations__", {}).items():
        try:
            out[key] = typing.get_type_hints(_Probe(ann), namespace, include_extras=True)["x"]
        except Exception:  # noqa: BLE001
            continue
    return out


class _Probe:
    """An object whose only annotation is ``ann``, so ``get_type_hints`` resolves one annotation."""

    def __init__(self, ann: Any) -> None:
        self.__annotations__ = {"x": ann}


_ADAPTERS: dict[Any, TypeAdapter | None] = {}
_OPTION_CONFIG = ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


def _adapter(ann: Any) -> TypeAdapter | None:
    key = repr(ann)
    if key not in _ADAPTERS:
        try:
            _ADAPTERS[key] = TypeAdapter(ann, config=_OPTION_CONFIG)
        except Exception:  # noqa: BLE001 - an annotation pydantic cannot validate (a class of its own)
            _ADAPTERS[key] = None
    return _ADAPTERS[key]


def _value_problem(ann: Any, value: Any) -> str | None:
    """Why ``value`` does not fit annotation ``ann`` (None if it does): the constraint it breaks, the
    choices of a ``Literal``, the item of a list that breaks it."""
    adapter = _adapter(ann)
    if adapter is None:
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        errors = exc.errors()
    else:
        return None
    # In a union (``float | None``, ``str | Callable``) every branch reports; a constraint broken by
    # a value of the right type says more than "should be callable".
    specific = [e for e in errors if not e["type"].endswith("_type") and e["type"] not in ("none_required",
                                                                                           "is_instance_of")]
    errors = specific or errors
    reasons: list[str] = []
    for err in errors:
        if err["type"] == "literal_error":
            choices = literal_choices(ann)
            reason = f"is not one of {', '.join(map(repr, choices))}" if choices else err["msg"]
        elif err["type"] == "value_error":
            reason = ": " + err["msg"].removeprefix("Value error, ")
        else:
            reason = re.sub(r"^\w+ should ", "must ", err["msg"]).replace(" after validation", "")
        where = _item_path(value, tuple(err["loc"]))
        reason = f"(item {where} = {_item(value, err['loc'])!r}) {reason.removeprefix(': ')}" if where else reason
        if reason not in reasons:
            reasons.append(reason)
    if len(reasons) > 1 and all(r.startswith("must be ") for r in reasons):
        return "must be " + " or ".join(r.removeprefix("must be ") for r in reasons)
    return " or ".join(reasons)


def _walk(value: Any, loc: tuple[Any, ...]) -> tuple[str, Any]:
    """The part of ``loc`` that indexes into ``value`` (union branch tags are skipped) and the item."""
    path, cur = "", value
    for part in loc:
        if isinstance(part, int) and isinstance(cur, (list, tuple)) and 0 <= part < len(cur):
            path, cur = f"{path}[{part}]", cur[part]
        elif isinstance(cur, dict) and part in cur:
            path, cur = f"{path}[{part!r}]", cur[part]
    return path, cur


def _item_path(value: Any, loc: tuple[Any, ...]) -> str:
    return _walk(value, loc)[0]


def _item(value: Any, loc: Any) -> Any:
    return _walk(value, tuple(loc))[1]

"""Run configuration: pydantic models with ranges and registered-part checks (loading: ``config_loader``)."""

from __future__ import annotations

import inspect
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlfold.core.registry import (
    ADVANTAGES, AGGREGATIONS, ENGINES, KL_ESTIMATORS, POLICY_LOSSES, REWARDS, SELECTIONS, SHAPINGS, TASKS, needed_inputs,
)
from rlfold.core.suggest import closest

class LocatedValueError(ValueError):
    """A validation error located at ``loc`` (raised by model validators, which pydantic places at the root)."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    path: str = Field("tiny-arith", min_length=1, description="HF causal-LM directory, or the name of a shipped model")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    disable_dropout: bool = Field(True, description="zero dropout in the policy so training and rollout forwards agree")


class TaskConfig(_Strict):
    name: str = Field("arith", description="registered task name")
    levels: list[int] = Field(default_factory=lambda: [2], description="arith difficulty levels (1-4)")
    train_size: int = Field(0, ge=0, description="training problems (0: all; levels 1-3 are enumerated)")
    held_out_size: int = Field(200, ge=1)
    held_out_fraction: float = Field(0.1, gt=0, lt=1)
    train_file: Optional[str] = Field(None, description="JSONL with prompt/answer rows (replaces generated data)")
    held_out_file: Optional[str] = None


class RewardSpec(_Strict):
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword options of the reward function")


class SelectionSpec(_Strict):
    name: str = Field(description="registered selection part (mask_truncated, top_entropy, pf_ppo, tis, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ShapingSpec(_Strict):
    name: str = Field(description="registered reward-shaping part (hapo, dler, arlcp, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DynamicSamplingConfig(_Strict):
    enabled: bool = Field(False, description="DAPO dynamic sampling: drop groups whose scores are all equal, refill")
    metric: Literal["acc", "reward"] = Field("acc", description="score whose within-group variance decides")
    max_gen_batches: int = Field(4, ge=1, description="generation rounds per step at most (then train on what qualified)")


class RolloutConfig(_Strict):
    engine: str = "hf"
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="options of the engine (multi_attempt: attempts, feedback)")
    n: int = Field(8, ge=1, description="samples per prompt (G)")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(8, ge=1)
    stop_strings: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = Field(False, description="sample past eos up to max_new_tokens (benchmarks)")


class AlgoConfig(_Strict):
    advantage: str = "grpo"
    advantage_kwargs: dict[str, Any] = Field(default_factory=dict)
    policy_loss: str = "ppo_clip"
    policy_loss_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keywords of the policy loss")
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.2, ge=0)
    clip_c: Optional[float] = Field(None, gt=1, description="dual-clip constant for negative advantages")
    loss_agg: str = "seq-mean-token-mean"
    loss_agg_max_len: Optional[int] = Field(
        None, ge=1, description="L_max of constant-length aggregations (default: rollout.max_new_tokens)")
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient (0: no reference model)")
    kl_estimator: str = "k3"
    kl_in: Literal["loss", "reward"] = Field("loss", description="KL as a loss term, or subtracted from the reward")
    kl_ctrl: Literal["fixed", "adaptive"] = Field("fixed", description="fixed coefficient, or adaptive (Ziegler et al.)")
    kl_target: float = Field(0.1, gt=0, description="adaptive KL: target KL per token")
    kl_horizon: int = Field(10000, ge=1, description="adaptive KL: horizon in samples")
    entropy_coef: float = Field(0.0, description="entropy bonus: loss -= entropy_coef * aggregated entropy")
    sft_coef: float = Field(0.0, ge=0, description="weight of an NLL loss on the task's demonstrations")
    selection: list[SelectionSpec] = Field(default_factory=list, description="selection parts, applied in order")
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)


class CriticConfig(_Strict):
    """The value model, used when the advantage part needs ``values`` (PPO with GAE)."""

    model: Literal["separate", "shared"] = Field(
        "separate", description="a separate value model, or a value head on the policy backbone")
    path: Optional[str] = Field(None, description="backbone to initialise a separate critic from (default: model.path)")
    lr: float = Field(1e-3, gt=0, description="critic learning rate (separate critic)")
    vf_coef: float = Field(0.5, ge=0, description="value-loss weight in the joint loss (shared critic)")
    cliprange_value: Optional[float] = Field(0.5, gt=0, description="value clipping around the old values (None: off)")
    lam: Optional[float] = Field(
        None, ge=0, le=1, description="GAE lambda of the critic targets (None: the actor's; 1.0: VC-PPO)")
    pretrain_steps: int = Field(0, ge=0, description="VC-PPO value pretraining steps on the fixed initial policy")


class TrainConfig(_Strict):
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(16, ge=1, description="B prompts per step")
    ppo_epochs: int = Field(1, ge=1)
    mini_batch_size: int = Field(0, ge=0, description="sequences per optimiser step (0: the whole batch)")
    micro_batch_size: int = Field(0, ge=0, description="sequences per forward/backward (0: the mini-batch)")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0, description="optimiser steps of linear warm-up")
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    max_nonfinite_steps: int = Field(3, ge=1, description="stop after this many non-finite steps in a row")
    domain_weights: Optional[dict[str, float]] = Field(
        None, description="adaptive domain sampling (Apriel): target share per domain, the domain of a prompt "
                          "being meta[domain_key]; None: uniform over the training prompts")
    domain_key: str = Field("domain", description="prompt meta field naming its domain (arith: 'level')")


class CheckpointConfig(_Strict):
    every: int = Field(50, ge=0, description="steps between checkpoints (0: only at the end)")
    keep: int = Field(2, ge=1)


class LogConfig(_Strict):
    samples_per_step: int = Field(4, ge=0)
    progress: bool = True


class EvalConfig(_Strict):
    every: int = Field(0, ge=0, description="steps between held-out evaluations (0: before and after only)")
    size: int = Field(200, ge=1)
    pass_k: int = Field(4, ge=1)
    max_new_tokens: Optional[int] = Field(None, ge=1)


class RunConfig(_Strict):
    """A full run: model, task, rewards, rollout, algorithm parts, optimisation, logging."""

    name: str = "run"
    imports: list[str] = Field(
        default_factory=list,
        description="Python modules or .py files imported before validation, to register custom parts",
    )
    seed: int = 0
    run_dir: Optional[str] = Field(None, description="output directory (default runs/<name>-<time>)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch default)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="exact_match"), RewardSpec(name="format", weight=0.1)]
    )
    accuracy_reward: str = Field("exact_match", description="reward whose mean is logged as acc/mean")
    reward_errors: Literal["raise", "none"] = Field(
        "raise", description="a reward function that raises: stop the run, or score that sample None (unscorable)")
    shaping: list[ShapingSpec] = Field(default_factory=list, description="reward-shaping parts, applied in order")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_parts(self) -> "RunConfig":
        checks = [
            (("task", "name"), self.task.name, TASKS),
            (("rollout", "engine"), self.rollout.engine, ENGINES),
            (("algo", "advantage"), self.algo.advantage, ADVANTAGES),
            (("algo", "policy_loss"), self.algo.policy_loss, POLICY_LOSSES),
            (("algo", "loss_agg"), self.algo.loss_agg, AGGREGATIONS),
            (("algo", "kl_estimator"), self.algo.kl_estimator, KL_ESTIMATORS),
            (("accuracy_reward",), self.accuracy_reward, REWARDS),
        ] + [(("rewards", i, "name"), r.name, REWARDS) for i, r in enumerate(self.rewards)] \
          + [(("algo", "selection", i, "name"), s.name, SELECTIONS) for i, s in enumerate(self.algo.selection)] \
          + [(("shaping", i, "name"), s.name, SHAPINGS) for i, s in enumerate(self.shaping)]
        for loc, value, registry in checks:
            if value not in registry:
                close = closest(value, registry.names())
                hint = f"; did you mean {close!r}?" if close else ""
                raise LocatedValueError(loc, f"unknown {registry.kind} {value!r}{hint} (known: {', '.join(registry.names())})")
        if not self.rewards:
            raise LocatedValueError(("rewards",), "at least one reward function is required")
        a = self.algo
        _check_kwargs(("algo", "advantage_kwargs"), "advantage estimator", a.advantage, ADVANTAGES.get(a.advantage),
                      a.advantage_kwargs, n_positional=3)
        _check_kwargs(("algo", "policy_loss_kwargs"), "policy loss", a.policy_loss, POLICY_LOSSES.get(a.policy_loss),
                      a.policy_loss_kwargs, n_positional=4)
        for i, spec in enumerate(a.selection):
            _check_kwargs(("algo", "selection", i, "kwargs"), "selection part", spec.name, SELECTIONS.get(spec.name),
                          spec.kwargs, n_positional=1, reserved=("generator",))
        if self.rollout.engine_kwargs:
            _check_kwargs(("rollout", "engine_kwargs"), "rollout engine", self.rollout.engine,
                          ENGINES.get(self.rollout.engine), self.rollout.engine_kwargs, n_positional=2,
                          reserved=("verifier",))
        for i, spec in enumerate(self.shaping):
            _check_kwargs(("shaping", i, "kwargs"), "reward-shaping part", spec.name, SHAPINGS.get(spec.name),
                          spec.kwargs, n_positional=1, reserved=("state",))
        for i, spec in enumerate(self.rewards):
            if spec.kwargs:
                _check_kwargs(("rewards", i, "kwargs"), "reward function", spec.name, REWARDS.get(spec.name),
                              spec.kwargs, n_positional=3)
        return self


def _check_kwargs(loc: tuple[Any, ...], kind: str, name: str, fn: Any, given: dict[str, Any], *,
                  n_positional: int, reserved: tuple[str, ...] = ()) -> None:
    """Every key of ``given`` must be a keyword option of part ``fn`` (after its positional tensors).

    Inputs the part declares with ``@needs`` are supplied by the trainer, so they are not options.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    skip = set(needed_inputs(fn)) | set(reserved)
    accepted = [p.name for p in params[n_positional:]
                if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                and p.name not in skip]
    for key in given:
        if key not in accepted:
            close = closest(key, accepted)
            hint = f"did you mean {close!r}? " if close else ""
            raise LocatedValueError(
                (*loc, key),
                f"{kind} {name!r} takes no option {key!r}; {hint}"
                f"it accepts: {', '.join(accepted) or 'no options (set ' + '.'.join(map(str, loc)) + '={})'}",
            )

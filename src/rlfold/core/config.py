"""Run configuration: pydantic models loaded from YAML plus ``key=value`` overrides, validated before anything runs."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlfold.core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    path: str = Field("tiny-arith", description="HF causal-LM directory, or the name of a shipped model")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class TaskConfig(_Strict):
    name: str = Field("arith", description="registered task name")
    levels: list[int] = Field(default_factory=lambda: [2], description="arith difficulty levels (1-4)")
    held_out_size: int = Field(200, ge=1)
    held_out_fraction: float = Field(0.1, gt=0, lt=1)
    train_file: Optional[str] = Field(None, description="JSONL with prompt/answer rows (replaces generated data)")
    held_out_file: Optional[str] = None


class RewardSpec(_Strict):
    name: str
    weight: float = 1.0


class RolloutConfig(_Strict):
    engine: str = "hf"
    n: int = Field(8, ge=1, description="samples per prompt (G)")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(8, ge=1)
    stop_strings: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)


class AlgoConfig(_Strict):
    advantage: str = "grpo"
    advantage_kwargs: dict[str, Any] = Field(default_factory=dict)
    policy_loss: str = "ppo_clip"
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.2, ge=0)
    clip_c: Optional[float] = Field(None, gt=1, description="dual-clip constant for negative advantages")
    loss_agg: str = "seq-mean-token-mean"
    kl_coef: float = Field(0.0, ge=0, description="KL-to-reference coefficient in the loss (0: no reference model)")
    kl_estimator: str = "k3"


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
    seed: int = 0
    run_dir: Optional[str] = Field(None, description="output directory (default runs/<name>-<time>)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch default)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="exact_match"), RewardSpec(name="format", weight=0.1)]
    )
    accuracy_reward: str = Field("exact_match", description="reward whose mean is logged as acc/mean")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_parts(self) -> "RunConfig":
        # Imported here: the algos/rewards layers register parts on import.
        from rlfold.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
        from rlfold.rewards import REWARDS

        checks = [
            ("algo.advantage", self.algo.advantage, ADVANTAGES),
            ("algo.policy_loss", self.algo.policy_loss, POLICY_LOSSES),
            ("algo.loss_agg", self.algo.loss_agg, AGGREGATIONS),
            ("algo.kl_estimator", self.algo.kl_estimator, KL_ESTIMATORS),
            ("accuracy_reward", self.accuracy_reward, REWARDS),
        ] + [(f"rewards[{i}].name", r.name, REWARDS) for i, r in enumerate(self.rewards)]
        for key, value, registry in checks:
            if value not in registry:
                close = difflib.get_close_matches(value, registry.names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{key}: unknown {registry.kind} {value!r}{hint} (known: {', '.join(registry.names())})")
        if not self.rewards:
            raise ValueError("rewards: at least one reward function is required")
        return self


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the model that contains location ``loc``."""
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or [])]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
            lines.append(f"  {key}: unknown key{hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
            lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    if not key or any(not k for k in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sub-dicts); validation happens afterwards."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe, apply overrides and validate; every problem is reported with its key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: the top level must be a mapping")
        data = loaded or {}
        data.pop("description", None)
        data.pop("paper", None)
        source = str(p)
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None

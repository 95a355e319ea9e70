"""Run configuration: pydantic models loaded from YAML plus ``key=value`` overrides, validated before anything runs."""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlfold.core.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as YAML 1.2 does (PyYAML's YAML 1.1 rules need ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# Names other libraries (TRL, verl) use for our keys; suggested when someone types them.
_ALIASES = {
    "learning_rate": "lr", "num_generations": "n", "max_steps": "steps", "total_steps": "steps",
    "max_completion_length": "max_new_tokens", "max_tokens": "max_new_tokens", "beta": "kl_coef",
    "max_grad_norm": "grad_clip", "epsilon": "clip_low", "epsilon_high": "clip_high",
    "per_device_train_batch_size": "micro_batch_size", "batch_size": "prompts_per_step",
}


def closest(word: str, candidates: list[str]) -> str | None:
    """The valid name the user most likely meant: same name in other case, a known alias, the name with a
    prefix or suffix added (``lr_rate`` -> ``lr``), else the closest spelling; ``None`` if nothing is close."""
    if not candidates:
        return None
    low = word.lower()
    for c in candidates:
        if c.lower() == low:
            return c
    if _ALIASES.get(low) in candidates:
        return _ALIASES[low]
    affixed = [c for c in candidates if low.startswith(c.lower() + "_") or low.endswith("_" + c.lower())]
    if affixed:
        return max(affixed, key=len)
    close = difflib.get_close_matches(word, candidates, n=1)
    return close[0] if close else None


class _PartError(ValueError):
    """A validation error located at ``loc`` (raised by model validators, which pydantic places at the root)."""

    def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    path: str = Field("tiny-arith", min_length=1, description="HF causal-LM directory, or the name of a shipped model")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


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


class RolloutConfig(_Strict):
    engine: str = "hf"
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
            (("algo", "advantage"), self.algo.advantage, ADVANTAGES),
            (("algo", "policy_loss"), self.algo.policy_loss, POLICY_LOSSES),
            (("algo", "loss_agg"), self.algo.loss_agg, AGGREGATIONS),
            (("algo", "kl_estimator"), self.algo.kl_estimator, KL_ESTIMATORS),
            (("accuracy_reward",), self.accuracy_reward, REWARDS),
        ] + [(("rewards", i, "name"), r.name, REWARDS) for i, r in enumerate(self.rewards)]
        for loc, value, registry in checks:
            if value not in registry:
                close = closest(value, registry.names())
                hint = f"; did you mean {close!r}?" if close else ""
                raise _PartError(loc, f"unknown {registry.kind} {value!r}{hint} (known: {', '.join(registry.names())})")
        if not self.rewards:
            raise _PartError(("rewards",), "at least one reward function is required")
        self._check_advantage_kwargs(ADVANTAGES.get(self.algo.advantage))
        return self

    def _check_advantage_kwargs(self, fn: Any) -> None:
        """Every ``algo.advantage_kwargs`` key must be a keyword of the advantage part (after its 3 tensors)."""
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        accepted = [p.name for p in params[3:]
                    if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        for key in self.algo.advantage_kwargs:
            if key not in accepted:
                close = closest(key, accepted)
                hint = f"did you mean {close!r}? " if close else ""
                raise _PartError(
                    ("algo", "advantage_kwargs", key),
                    f"advantage estimator {self.algo.advantage!r} takes no option {key!r}; {hint}"
                    f"it accepts: {', '.join(accepted) or 'no options (set algo.advantage_kwargs={})'}",
                )


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


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("rewards", 0, "name")`` -> ``rewards[0].name``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Line number (1-based) of every key and list item of a YAML document, by location."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*path, str(k.value))] = k.start_mark.line + 1
                walk(v, (*path, str(k.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    walk(root, ())
    return lines


def _origin(loc: tuple[Any, ...], origins: dict[tuple[Any, ...], str], source: str,
            lines: dict[tuple[Any, ...], int]) -> str:
    """Where the value at ``loc`` came from: the override that set it, or the file and line."""
    key = tuple(map(str, loc))
    best: tuple[int, str] | None = None
    for path, item in origins.items():
        spath = tuple(map(str, path))
        n = min(len(spath), len(key))
        if n and spath[:n] == key[:n] and (best is None or len(spath) >= best[0]):
            best = (len(spath), item)
    if best is not None:
        return f"override {best[1]!r}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]}"
    return ""


def _format_errors(exc: ValidationError, source: str, origins: dict[tuple[Any, ...], str] | None = None,
                   lines: dict[tuple[Any, ...], int] | None = None) -> str:
    out = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _PartError):
            loc, msg = cause.loc, str(cause)
        elif err["type"] == "extra_forbidden":
            close = closest(str(loc[-1]), _fields_at(loc))
            msg = f"unknown key; did you mean {_dotted((*loc[:-1], close))!r}?" if close else "unknown key"
            if not close and _fields_at(loc):
                msg += f" (valid keys here: {', '.join(_fields_at(loc))})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] != "value_error":
                msg += f" (got {err.get('input')!r})"
        where = _origin(loc, origins or {}, source, lines or {})
        out.append(f"  {_dotted(loc)}{f' ({where})' if where else ''}: {msg}")
    return "\n".join(out)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = re.sub(r"\[(\d+)\]", r".\1", key.strip())  # rewards[0].weight == rewards.0.weight
    if not key or any(not k for k in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key (expected key=value, e.g. train.lr=1e-4)")
    try:
        value = _yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({problem})") from None
    return key.split("."), value


def _list_index(node: list[Any], k: str, item: str, where: str) -> int:
    if not k.isdigit():
        raise ConfigError(f"override {item!r}: {where} is a list; index it by position, e.g. {where}.0")
    if int(k) >= len(node):
        raise ConfigError(f"override {item!r}: {where} has {len(node)} item(s), so there is no index {k}")
    return int(k)


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    origins: dict[tuple[Any, ...], str] | None = None) -> dict[str, Any]:
    """Set dotted keys in a nested dict (creating sub-dicts; ``rewards.0.weight`` indexes a list);
    validation happens afterwards. ``origins`` receives each set location and the override that set it."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        path: list[Any] = []
        for k in keys[:-1]:
            if isinstance(node, list):
                k = _list_index(node, k, item, _dotted(tuple(path)))
                child = node[k]
            else:
                child = node.get(k)
                if child is None:
                    child = node[k] = {}
            path.append(k)
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {item!r}: {_dotted(tuple(path))} is a value ({child!r}), not a section")
            node = child
        last: Any = keys[-1]
        if isinstance(node, list):
            last = _list_index(node, last, item, _dotted(tuple(path)))
        node[last] = value
        if origins is not None:
            origins[(*path, last)] = item
    return data


def import_plugins(items: list[Any]) -> None:
    """Import user modules (dotted names or ``.py`` paths) whose import registers custom parts."""
    import importlib
    import importlib.util
    import sys

    if not isinstance(items, list):
        raise ConfigError(f"imports: expected a list of modules or .py files, got {items!r}")
    for item in items:
        item = str(item)
        try:
            if item.endswith(".py"):
                path = Path(item).resolve()
                if not path.is_file():
                    raise ConfigError(f"imports: file {item} does not exist")
                name = f"rlfold_plugin_{path.stem}"
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            raise ConfigError(f"imports: importing {item!r} failed: {type(exc).__name__}: {exc}") from exc


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe, apply overrides and validate; every problem is reported with its key."""
    data: dict[str, Any] = {}
    source = "defaults"
    lines: dict[tuple[Any, ...], int] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            loaded = _yaml_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: config file is not valid YAML ({problem})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {p}: the top level must be a mapping of keys (train:, model:, ...), "
                f"got a {type(loaded).__name__}"
            )
        data = loaded or {}
        data.pop("description", None)
        data.pop("paper", None)
        source = str(p)
        lines = _key_lines(text)
    origins: dict[tuple[Any, ...], str] = {}
    data = apply_overrides(data, overrides or [], origins)
    import_plugins(data.get("imports") or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, origins, lines)) from None

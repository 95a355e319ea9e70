"""Reward interface: batch callables over (prompt, completion, finish reason) returning a score per sample."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from rlfold.core.errors import RewardError
from rlfold.core import registry
from rlfold.core.registry import needed_inputs
from rlfold.core.types import Prompt

RewardFn = Callable[[Sequence[Prompt], Sequence[str], Sequence[str]], Sequence[float]]

REWARDS = registry.REWARDS


def _locate_failure(name: str, fn: RewardFn, prompts, completions, finishes, exc: Exception,
                    kwargs: dict[str, Any], extra: dict[str, Any]) -> RewardError:
    """Re-run ``fn`` sample by sample to name the one that raises."""
    for i, (p, c, f) in enumerate(zip(prompts, completions, finishes)):
        try:
            fn([p], [c], [f], **kwargs, **{k: v[i : i + 1] for k, v in extra.items()})
        except Exception as inner:  # noqa: BLE001 - any error of user code is reported
            return RewardError(
                f"reward function {name!r} raised {type(inner).__name__}: {inner} "
                f"on sample {i} (prompt {p.text!r}, completion {c!r})"
            )
    return RewardError(f"reward function {name!r} raised {type(exc).__name__}: {exc} on the batch")


# What ``score_rewards`` supplies to a function that ``@needs`` it; any other needed name is a dataset column.
# ``rollout_extras``: one dict per sample, that row's values of the engine's ``RolloutBatch.extras``
# (``turns``, ``env/<key>`` of an environment, e.g. the ``env/reward`` an adapted environment returned).
SCORING_INPUTS = ("response_lengths", "rollout_extras")


def extras_rows(extras: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``RolloutBatch.extras`` as one dict per row (each key's value at that row), the ``rollout_extras`` input."""
    return [{k: v[i] for k, v in extras.items()} for i in range(n)]


def needed_columns(fn: RewardFn) -> list[str]:
    """The dataset columns a reward function declares with ``@needs`` (its needs beyond ``SCORING_INPUTS``)."""
    return [k for k in needed_inputs(fn) if k not in SCORING_INPUTS]


def dataset_column(name: str, key: str, prompts: Sequence[Prompt], provided: Sequence[str]) -> list[Any]:
    """The dataset column ``key`` a reward function ``@needs``: one value per sample (``Prompt.meta[key]``,
    None where a prompt has no such column); an error naming what exists when no prompt has it."""
    metas = [p.meta if isinstance(p.meta, dict) else {} for p in prompts]
    if metas and not any(key in m for m in metas):
        columns = sorted({k for m in metas for k in m})
        raise RewardError(
            f"reward function {name!r} needs {key!r}, which is neither an input the trainer provides "
            f"({', '.join(provided)}) nor a column of the dataset (its extra columns: {', '.join(columns) or 'none'}); "
            "check task.prompt_key / task.answer_key and the column names of the data")
    return [m.get(key) for m in metas]


@dataclass
class ScoreResult:
    """What scoring a batch produced.

    ``total`` [N]: weighted sum over the reward functions; NaN where every function returned None
    (the sample is unscorable). ``per_fn``: each function's raw scores (NaN where it returned None;
    for a per-token reward, the sum over its tokens). ``token_scores`` [N, R] or None: the weighted
    per-token rewards of functions that returned a list per sample (position j = response token j).
    ``metrics``: ``reward/<name>/none`` and ``reward/<name>/errors`` counts.
    """

    total: torch.Tensor
    per_fn: dict[str, torch.Tensor]
    token_scores: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _as_score(name: str, s: Any, i: int, prompts, completions) -> float | list[float] | None:
    if s is None:
        return None
    if isinstance(s, (list, tuple)) or (isinstance(s, torch.Tensor) and s.dim() == 1):
        vals = [float(x) for x in s]
        if not all(math.isfinite(v) for v in vals):
            raise RewardError(f"reward function {name!r} returned a non-finite per-token reward on sample {i} "
                              f"(prompt {prompts[i].text!r}, completion {completions[i]!r})")
        return vals
    try:
        v = float(s)
    except Exception:  # noqa: BLE001 - TypeError, ValueError, or a tensor's RuntimeError
        raise RewardError(
            f"reward function {name!r} returned {s!r} (not a number) on sample {i} "
            f"(prompt {prompts[i].text!r}, completion {completions[i]!r})"
        ) from None
    if not math.isfinite(v):
        raise RewardError(
            f"reward function {name!r} returned {s!r} on sample {i} "
            f"(prompt {prompts[i].text!r}, completion {completions[i]!r}); rewards must be finite (or None)"
        )
    return v


def score_rewards(
    specs: Sequence[tuple[str, float] | tuple[str, float, dict[str, Any]]],
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    response_lengths: torch.Tensor | None = None,
    on_error: str = "raise",
    rollout_extras: Sequence[dict[str, Any]] | None = None,
) -> ScoreResult:
    """Score a batch with the named reward functions (see ``ScoreResult``).

    A spec is ``(name, weight)`` or ``(name, weight, kwargs)``. A function that declares
    ``@needs("response_lengths")`` also receives the token count of each completion, one that declares
    ``@needs("rollout_extras")`` each row's engine extras (``extras_rows``); any other name it
    ``@needs`` is a dataset column, passed as one value per sample (``dataset_column``). A function
    returns one entry per sample: a float, None (unscorable), or a list of per-token floats. If it
    raises, ``on_error="raise"`` stops with a ``RewardError`` naming the function and the failing
    sample; ``on_error="none"`` scores the failing samples None and counts them.
    """
    if on_error not in ("raise", "none"):
        raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float64)
    any_scored = torch.zeros(n, dtype=torch.bool)
    per_fn: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    token_rows: dict[int, list[float]] = {}
    available = dict(zip(SCORING_INPUTS, (response_lengths, rollout_extras)))
    for spec in specs:
        name, weight = spec[0], spec[1]
        kwargs = dict(spec[2]) if len(spec) > 2 else {}
        fn = REWARDS.get(name)
        extra = {}
        for key in needed_inputs(fn):
            if key not in available:
                extra[key] = dataset_column(name, key, prompts, list(available))
                continue
            if available.get(key) is None:
                raise RewardError(f"reward function {name!r} needs {key!r}, which the caller did not provide")
            extra[key] = available[key]
        errors = 0
        try:
            returned = fn(prompts, completions, finishes, **kwargs, **extra)
        except Exception as exc:  # noqa: BLE001 - any error of user code is reported
            if on_error == "raise":
                raise _locate_failure(name, fn, prompts, completions, finishes, exc, kwargs, extra) from exc
            returned = []
            for i in range(n):
                try:
                    returned.append(fn([prompts[i]], [completions[i]], [finishes[i]], **kwargs,
                                       **{k: v[i : i + 1] for k, v in extra.items()})[0])
                except Exception:  # noqa: BLE001
                    returned.append(None)
                    errors += 1
        try:
            scores = list(returned)
        except TypeError:
            raise RewardError(
                f"reward function {name!r} returned {type(returned).__name__}; expected a sequence of {n} floats "
                "(one score per sample)"
            ) from None
        if len(scores) != n:
            raise RewardError(
                f"reward function {name!r} returned {len(scores)} scores for {n} samples; expected one score per sample"
            )
        values = torch.full((n,), float("nan"), dtype=torch.float32)
        for i, raw in enumerate(scores):
            v = _as_score(name, raw, i, prompts, completions)
            if v is None:
                continue
            if isinstance(v, list):
                row = token_rows.setdefault(i, [])
                row.extend([0.0] * (len(v) - len(row)))
                for j, x in enumerate(v):
                    row[j] += weight * x
                v = sum(v)
            values[i] = v
            total[i] += weight * v
            any_scored[i] = True
        per_fn[name] = values
        metrics[f"reward/{name}/none"] = float(torch.isnan(values).sum())
        if on_error == "none":
            metrics[f"reward/{name}/errors"] = float(errors)
    total = torch.where(any_scored, total, torch.full_like(total, float("nan"))).float()
    token_scores = None
    if token_rows:
        width = max(len(r) for r in token_rows.values())
        token_scores = torch.zeros(n, width)
        for i, r in token_rows.items():
            token_scores[i, : len(r)] = torch.tensor(r)
    return ScoreResult(total, per_fn, token_scores, metrics)


def score_batch(
    specs: Sequence[tuple[str, float] | tuple[str, float, dict[str, Any]]],
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    response_lengths: torch.Tensor | None = None,
    rollout_extras: Sequence[dict[str, Any]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, per_fn)`` of ``score_rewards`` for callers that need only the scalar scores."""
    res = score_rewards(specs, prompts, completions, finishes, response_lengths, rollout_extras=rollout_extras)
    return res.total, res.per_fn

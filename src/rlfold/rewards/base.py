"""Reward interface: batch callables over (prompt, completion, finish reason) returning a score per sample."""

from __future__ import annotations

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


def score_batch(
    specs: Sequence[tuple[str, float] | tuple[str, float, dict[str, Any]]],
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    response_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the named reward functions, and each function's raw scores by name.

    A spec is ``(name, weight)`` or ``(name, weight, kwargs)``. A function that declares
    ``@needs("response_lengths")`` also receives the token count of each completion.
    """
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    per_fn: dict[str, torch.Tensor] = {}
    available = {"response_lengths": response_lengths}
    for spec in specs:
        name, weight = spec[0], spec[1]
        kwargs = dict(spec[2]) if len(spec) > 2 else {}
        fn = REWARDS.get(name)
        extra = {}
        for key in needed_inputs(fn):
            if available.get(key) is None:
                raise RewardError(f"reward function {name!r} needs {key!r}, which the caller did not provide")
            extra[key] = available[key]
        try:
            returned = fn(prompts, completions, finishes, **kwargs, **extra)
        except Exception as exc:  # noqa: BLE001
            raise _locate_failure(name, fn, prompts, completions, finishes, exc, kwargs, extra) from exc
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
        floats = []
        for i, s in enumerate(scores):
            try:
                floats.append(float(s))
            except Exception:  # noqa: BLE001 - TypeError, ValueError, or a tensor's RuntimeError
                raise RewardError(
                    f"reward function {name!r} returned {s!r} (not a number) on sample {i} "
                    f"(prompt {prompts[i].text!r}, completion {completions[i]!r})"
                ) from None
        values = torch.tensor(floats, dtype=torch.float32)
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise RewardError(
                f"reward function {name!r} returned {scores[i]!r} on sample {i} "
                f"(prompt {prompts[i].text!r}, completion {completions[i]!r}); rewards must be finite"
            )
        per_fn[name] = values
        total += weight * values
    return total, per_fn

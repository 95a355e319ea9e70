"""Held-out evaluation: greedy accuracy, unbiased pass@k and mean response length."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rewards import score_batch
from rlfold.rewards.base import extras_rows
from rlfold.rollout import SamplingParams, requests_for


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, Codex)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    engine,
    prompts: Sequence[Prompt],
    reward: str,
    k: int = 4,
    max_new_tokens: int = 8,
    seed: int = 1234,
    batch_size: int = 256,
    group_key: str | None = None,
) -> dict[str, float]:
    """``acc`` (greedy), ``pass@k`` (k samples at temperature 1) and ``length`` (greedy tokens).

    A multi-turn engine's per-episode extras (``turns``, ``tools/calls``, ...) of the greedy episodes are
    averaged as ``<key>/mean``. With ``group_key``, the greedy accuracy and those means are also given per
    value of that dataset column, as ``acc/<value>`` and ``<key>/mean/<value>``."""
    correct, lengths, passes = 0.0, 0.0, 0.0
    greedy = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    sampled = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, n=k)
    per_row: dict[str, list[float]] = {"acc": []}
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        roll = engine.generate(requests_for(chunk), greedy, derive_seed(seed, "eval", start, 0))
        scores, _ = score_batch([(reward, 1.0)], chunk, roll.response_texts, roll.finish_reasons,
                                rollout_extras=extras_rows(roll.extras, roll.size))
        correct += float(scores.sum())
        per_row["acc"] += [float(x) for x in scores]
        for key, values in roll.extras.items():
            if isinstance(values, list) and len(values) == len(chunk) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                per_row.setdefault(f"{key}/mean", []).extend(float(v) for v in values)
        lengths += float(roll.response_mask.sum())
        roll = engine.generate(requests_for(chunk), sampled, derive_seed(seed, "eval", start, 1))
        reps = [p for p in chunk for _ in range(k)]
        scores, _ = score_batch([(reward, 1.0)], reps, roll.response_texts, roll.finish_reasons,
                                rollout_extras=extras_rows(roll.extras, roll.size))
        for c in (scores.view(len(chunk), k) > 0.5).sum(1).tolist():
            passes += pass_at_k(k, int(c), k)
    n = len(prompts)
    out = {"acc": correct / n, f"pass@{k}": passes / n, "length": lengths / n}
    out.update({key: sum(v) / len(v) for key, v in per_row.items() if key != "acc" and len(v) == n})
    if group_key is not None:
        groups = [str(p.meta.get(group_key)) if isinstance(p.meta, dict) else "None" for p in prompts]
        for g in sorted(set(groups)):
            rows = [i for i, x in enumerate(groups) if x == g]
            for key, v in per_row.items():
                if len(v) == n:
                    out[f"{key}/{g}"] = sum(v[i] for i in rows) / len(rows)
    return out

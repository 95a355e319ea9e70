"""Held-out evaluation: greedy accuracy, unbiased pass@k, mean response length and, for answers that state a
confidence, expected calibration error and Brier score."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rlfold.core.registry import CONFIDENCE_PARSERS
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


# The probability given to a greedy answer whose confidence cannot be read (no parser match, or out of range)
# in ``ece`` and ``brier``: the uninformative 0.5. How often that happens is reported as ``confidence_invalid``.
INVALID_CONFIDENCE = 0.5


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error with ``bins`` equal-width bins (Guo et al. 2017, arXiv 1706.04599).

    ECE = sum_b (n_b / N) |acc_b - conf_b|, where bin b holds the p in [b/bins, (b+1)/bins) (the last bin
    also holds p = 1), acc_b is the mean correctness and conf_b the mean confidence of its samples.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness values")
    if not confidences:
        raise ValueError("expected_calibration_error needs at least one sample")
    p = torch.tensor([float(x) for x in confidences], dtype=torch.float64)
    y = torch.tensor([float(x) for x in correct], dtype=torch.float64)
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"confidences must lie in [0, 1], got {p.tolist()}")
    which = torch.clamp(torch.floor(p * bins + 1e-9).long(), max=bins - 1)  # 1e-9: (1 - 0.7) * 10 = 2.99..96 -> bin 3
    n = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, torch.ones_like(p))
    acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, y)
    conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, p)
    return float((acc - conf).abs().sum() / len(p))  # sum_b (n_b/N) |acc_b/n_b - conf_b/n_b|


def brier_score(confidences: Sequence[float], correct: Sequence[float]) -> float:
    """Brier score (Brier 1950): mean (p - correct)^2 over the samples (0 is perfect; always saying 0.5 gives 0.25)."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness values")
    if not confidences:
        raise ValueError("brier_score needs at least one sample")
    p = torch.tensor([float(x) for x in confidences], dtype=torch.float64)
    y = torch.tensor([float(x) for x in correct], dtype=torch.float64)
    return float(((p - y) ** 2).mean())


def calibration_metrics(stated: Sequence[float | None], correct: Sequence[float]) -> dict[str, float]:
    """``ece``, ``brier`` and ``confidence_invalid`` (share of answers whose confidence could not be read; those
    count as ``INVALID_CONFIDENCE`` in the other two) from stated probabilities (None: unreadable)."""
    p = [INVALID_CONFIDENCE if s is None else float(s) for s in stated]
    return {"ece": expected_calibration_error(p, correct), "brier": brier_score(p, correct),
            "confidence_invalid": sum(s is None for s in stated) / len(stated)}


def evaluate(
    engine,
    prompts: Sequence[Prompt],
    reward: str,
    k: int = 4,
    max_new_tokens: int = 8,
    seed: int = 1234,
    batch_size: int = 256,
    group_key: str | None = None,
    confidence: str | None = None,
    reference: Any = None,
) -> dict[str, float]:
    """``acc`` (greedy), ``pass@k`` (k samples at temperature 1) and ``length`` (greedy tokens).

    With ``confidence`` (a registered confidence parser, ``eval.confidence``), the greedy completions'
    stated confidences are read by it and scored against their correctness (accuracy reward > 0.5):
    ``ece``, ``brier`` and ``confidence_invalid`` (``calibration_metrics``).

    A multi-turn engine's per-episode extras (``turns``, ``tools/calls``, ...) of the greedy episodes are
    averaged as ``<key>/mean``. With ``group_key``, the greedy accuracy and those means are also given per
    value of that dataset column, as ``acc/<value>`` and ``<key>/mean/<value>``.

    With ``reference`` (a ``trainers.reference.Reference``), ``kl_ref`` is KL(π ‖ π_ref) per response,
    estimated on the k samples (drawn from π itself, at temperature 1) as the mean over them of
    Σ_t log π(y_t) − log π_ref(y_t), with the engine's exact policy log-probs."""
    read = CONFIDENCE_PARSERS.get(confidence) if confidence is not None else None
    stated: list[float | None] = []
    correct, lengths, passes, kl_sum = 0.0, 0.0, 0.0, 0.0
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
        if read is not None:
            stated += [read(text) for text in roll.response_texts]
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
        if reference is not None:
            mask = roll.response_mask.float()
            kl_sum += float(((roll.policy_logprobs - reference.logprobs(roll).to(mask.device)) * mask).sum())
    n = len(prompts)
    out = {"acc": correct / n, f"pass@{k}": passes / n, "length": lengths / n}
    if reference is not None:
        out["kl_ref"] = kl_sum / (n * k)
    out.update({key: sum(v) / len(v) for key, v in per_row.items() if key != "acc" and len(v) == n})
    if read is not None:
        out.update(calibration_metrics(stated, [float(x > 0.5) for x in per_row["acc"]]))
    if group_key is not None:
        groups = [str(p.meta.get(group_key)) if isinstance(p.meta, dict) else "None" for p in prompts]
        for g in sorted(set(groups)):
            rows = [i for i, x in enumerate(groups) if x == g]
            for key, v in per_row.items():
                if len(v) == n:
                    out[f"{key}/{g}"] = sum(v[i] for i in rows) / len(rows)
    return out

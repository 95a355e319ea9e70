"""Win rate against the reference policy, judged by a known ground-truth reward.

On held-out task prompts, S responses per prompt are sampled at temperature 1 from the policy and were
sampled the same way from the reference policy (once, before training; the same seeds). Sample j of
the policy meets sample j of the reference: a win counts 1, a tie 1/2, a loss 0; the win rate is the
mean over prompts and samples (0.5 before any update, where the two policies are the same). The
greedy win rate compares one greedy response of each (the DPO paper reports win rates across sampling
temperatures; these are its two ends). The ground truth is the run's weighted reward functions, which
know each prompt's gold answer.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rewards import score_batch
from rlfold.rollout import SamplingParams, requests_for


def sample_scores(engine: Any, prompts: Sequence[Prompt], rewards: Sequence[tuple[str, float, dict[str, Any]]],
                  samples: int, max_new_tokens: int, seed: int, temperature: float = 1.0, accuracy: str | None = None,
                  batch_size: int = 256) -> dict[str, Tensor]:
    """``score`` [P, S]: ground-truth scores of S samples per prompt; ``accuracy`` [P, S] the named reward's
    scores (when given); ``length`` [P, S] response tokens."""
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, n=samples)
    out: dict[str, list[Tensor]] = {"score": [], "length": [], "accuracy": []}
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        roll = engine.generate(requests_for(chunk), params, derive_seed(seed, "win_rate", start))
        reps = [p for p in chunk for _ in range(samples)]
        specs = list(rewards) + ([(accuracy, 0.0, {})] if accuracy is not None else [])
        total, per_fn = score_batch(specs, reps, roll.response_texts, roll.finish_reasons)
        out["score"].append(total.view(len(chunk), samples))
        out["length"].append(roll.response_mask.sum(-1).float().view(len(chunk), samples))
        if accuracy is not None:
            out["accuracy"].append(per_fn[accuracy].view(len(chunk), samples))
    return {k: torch.cat(v) for k, v in out.items() if v}


def win_rate(policy_scores: Tensor, reference_scores: Tensor) -> dict[str, float]:
    """``win_rate`` (ties count 1/2), ``win_frac``, ``tie_frac`` and the two mean scores."""
    if policy_scores.shape != reference_scores.shape:
        raise ValueError(f"score shapes differ: {tuple(policy_scores.shape)} vs {tuple(reference_scores.shape)}")
    wins = (policy_scores > reference_scores).float()
    ties = (policy_scores == reference_scores).float()
    return {"win_rate": float((wins + 0.5 * ties).mean()), "win_frac": float(wins.mean()),
            "tie_frac": float(ties.mean()), "score": float(policy_scores.mean()),
            "reference_score": float(reference_scores.mean())}


__all__ = ["sample_scores", "win_rate"]

"""A synthetic preference dataset with a known ground-truth reward.

For each training prompt of a task, sample K responses from a policy (the reference model: "on-policy
preference data", as UltraFeedback-style pipelines build it) and score each with the run's reward
functions, which know the gold answer: that weighted sum is the ground truth. Rows are what
``tasks.preference_data`` reads:

- ``pairs``: one response of the highest score (chosen) and one of the lowest (rejected), each drawn
  at random among the tied; a prompt whose samples all score the same gives no pair (counted);
  ``rejection_sampling`` selection (Liu et al., RSO, arXiv 2309.06657) instead draws the pair from the responses that
  statistical rejection sampling accepts, so pairs follow pi_sft * exp(r / beta);
- ``lists``: the distinct responses with their scores (ranked lists; at least two distinct scores);
- ``unpaired``: each distinct response, labelled desirable when it gets the top score of the reward.

``flip_fraction`` swaps chosen and rejected of that share of the pairs (seeded) and marks them
``"flipped": true`` -- the poisoned labels the data audit and the flip-aware reward models are
measured against. Every row keeps the gold ``answer`` and the two scores, for inspection.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Literal, Sequence

import torch
from tqdm.auto import tqdm

from rlfold.algos.preference.rso import rso_accept

from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rewards import score_batch
from rlfold.rollout import SamplingParams, requests_for

Selection = Literal["best_worst", "rejection_sampling"]


def synthesize(engine: Any, prompts: Sequence[Prompt], rewards: Sequence[tuple[str, float, dict[str, Any]]], *,
               kind: Literal["pairs", "lists", "unpaired"] = "pairs", samples: int = 4, max_new_tokens: int = 8,
               temperature: float = 1.0, seed: int = 0, selection: Selection = "best_worst", rso_beta: float = 0.5,
               flip_fraction: float = 0.0, batch_size: int = 256,
               progress: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """Rows of a synthetic preference dataset of ``kind`` and the count of prompts that gave no row, by reason."""
    if samples < 2:
        raise ValueError(f"synthetic preferences need at least 2 samples per prompt, got {samples}")
    if not 0.0 <= flip_fraction < 1.0:
        raise ValueError(f"flip_fraction must be in [0, 1), got {flip_fraction}")
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, n=samples)
    rng = random.Random(derive_seed(seed, "preference_synth"))
    rows: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    bar = tqdm(total=len(prompts), desc="synthetic preferences", disable=not progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        roll = engine.generate(requests_for(chunk), params, derive_seed(seed, "preference_synth", start))
        reps = [p for p in chunk for _ in range(samples)]
        total, _ = score_batch(list(rewards), reps, roll.response_texts, roll.finish_reasons)
        for i, p in enumerate(chunk):
            texts = roll.response_texts[i * samples : (i + 1) * samples]
            scores = total[i * samples : (i + 1) * samples].tolist()
            row = _row(p, texts, scores, kind, selection, rso_beta, rng, dropped)
            if row is not None:
                rows.append(row)
        bar.update(len(chunk))
    bar.close()
    if kind == "pairs" and flip_fraction > 0:
        flip = random.Random(derive_seed(seed, "preference_flip"))
        for row in rows:
            if flip.random() < flip_fraction:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
                row["chosen_score"], row["rejected_score"] = row["rejected_score"], row["chosen_score"]
                row["flipped"] = True
    return rows, dropped


def _row(p: Prompt, texts: list[str], scores: list[float], kind: str, selection: Selection, rso_beta: float,
         rng: random.Random, dropped: Counter) -> dict[str, Any] | None:
    """The row of one prompt's samples, or None (counted in ``dropped``)."""
    seen: dict[str, float] = {}
    for t, s in zip(texts, scores):
        if t.strip():
            seen.setdefault(t, s)
    if len(seen) < 2:
        dropped["fewer than 2 distinct non-empty responses"] += 1
        return None
    uniq, vals = list(seen), list(seen.values())
    if max(vals) == min(vals):
        dropped["all responses scored the same"] += 1
        return None
    base: dict[str, Any] = {"prompt": p.text, "answer": p.answer}
    if kind == "lists":
        return {**base, "responses": uniq, "scores": vals}
    if kind == "unpaired":
        top = max(vals)
        i = rng.randrange(len(uniq))
        return {**base, "completion": uniq[i], "label": vals[i] == top, "score": vals[i]}
    if selection == "rejection_sampling":
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        pool = rso_accept(torch.tensor(vals, dtype=torch.float64), rso_beta, max(2, len(uniq) // 2), gen)
        hi = max(vals[i] for i in pool)
        lo = min(vals[i] for i in pool)
        if hi == lo:
            dropped["rejection sampling accepted responses of one score only"] += 1
            return None
    else:
        pool, hi, lo = list(range(len(uniq))), max(vals), min(vals)
    c = rng.choice([i for i in pool if vals[i] == hi])
    r = rng.choice([i for i in pool if vals[i] == lo])
    return {**base, "chosen": uniq[c], "rejected": uniq[r], "chosen_score": vals[c], "rejected_score": vals[r],
            "flipped": False}


__all__ = ["Selection", "synthesize"]

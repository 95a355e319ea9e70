"""CRF: the conciseness reward function R^o [1 + alpha c (s + d)] (arXiv 2511.09158), a shaping part.

See ``rlfold.rewards.shaping`` for the interface; a row is correct when ``inp.correct >= 0.5``.

The conciseness scorer is pluggable: ``CONCISENESS_SCORERS`` holds
``(completion, prompt, *, length, max_len) -> c in [0.1, 1]`` functions; the ``scorer`` option
takes a registered name or, from Python, the callable itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.groups import group_index
from rlfold.core.options import registered
from rlfold.core.registry import Registry
from rlfold.core.types import Prompt
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput, correct_mask, resolve_part

__all__ = ["CONCISENESS_SCORERS", "crf", "crf_rewards", "length_ratio"]

CONCISENESS_SCORERS: Registry = Registry("conciseness scorer")


@CONCISENESS_SCORERS.register("length_ratio")
def length_ratio(completion: str, prompt: Prompt, *, length: int, max_len: int) -> float:
    """Default conciseness proxy c = clip(1 - L / max_len, 0.1, 1) with L the response token length.

    The paper's conciseness reward model (a 3B CRM trained on Qwen2.5-72B judgements) is not
    available; a scorer backed by such a model ignores ``length`` and ``max_len``.
    """
    return min(1.0, max(0.1, 1.0 - length / max_len))


def crf_rewards(outcome: Tensor, conciseness: Tensor, difficulty: Tensor, s: float, alpha: float = 0.5) -> Tensor:
    """R_hat = R^o [1 + alpha c (s + d)] elementwise."""
    return outcome * (1.0 + alpha * conciseness * (s + difficulty))


@SHAPINGS.register("crf")
def crf(
    inp: ShapingInput,
    *,
    state: dict,
    alpha: Annotated[float, Field(ge=0)] = 0.5,
    scorer: Annotated[str, registered(CONCISENESS_SCORERS)] | Callable[..., float] = "length_ratio",
    anneal: Literal["constant", "linear"] = "constant",
    anneal_steps: Annotated[int, Field(gt=0)] | None = None,
    outcome: Literal["scores", "correct"] = "scores",
) -> Shaped:
    """CRF conciseness reward function (arXiv 2511.09158): R_hat = R^o [1 + alpha c (s + d)].

    R^o is the outcome reward: the incoming ``inp.scores`` (``outcome="scores"``) or the verifier
    0/1 ``inp.correct`` (``outcome="correct"``), so R^o = 0 gives 0 whatever c. c in [0.1, 1] comes
    from ``scorer(completion, prompt, length=L, max_len=max_len)`` (a name in
    ``CONCISENESS_SCORERS`` or a callable), clipped to [0.1, 1]; default ``length_ratio``
    (c = clip(1 - L/max_len, 0.1, 1)) because the paper's 3B CRM is not available.

    Not public, chosen here: s (annealing) is 1 with ``anneal="constant"`` or
    s = max(0, 1 - step / anneal_steps) with ``anneal="linear"`` (``inp.step``); the difficulty
    d = 1 - (solve rate of the row's group, from ``inp.correct``); alpha = 0.5. The paper's exact
    s, d_q and alpha were not found (only a reviewer's summary of the formula). State unused.
    Metrics ``shaping/crf/{conciseness_mean, difficulty_mean, anneal_s, bonus_mean}``.
    """
    if alpha < 0:
        raise ValueError(f"crf needs alpha >= 0, got {alpha}")
    if anneal == "constant":
        s = 1.0
    elif anneal == "linear":
        if anneal_steps is None or anneal_steps <= 0:
            raise ValueError("crf anneal='linear' needs anneal_steps > 0")
        s = max(0.0, 1.0 - inp.step / anneal_steps)
    else:
        raise ValueError(f"crf anneal must be 'constant' or 'linear', got {anneal!r}")
    if outcome == "scores":
        r_o = inp.scores.detach().float()
    elif outcome == "correct":
        r_o = torch.nan_to_num(inp.correct.detach().float(), nan=0.0)
    else:
        raise ValueError(f"crf outcome must be 'scores' or 'correct', got {outcome!r}")
    score_fn = resolve_part(CONCISENESS_SCORERS, scorer)
    lengths = inp.lengths.tolist()
    raw = [float(score_fn(t, p, length=int(n), max_len=inp.max_len))
           for t, p, n in zip(inp.completions, inp.prompts, lengths)]
    if not all(math.isfinite(x) for x in raw):
        raise ValueError("crf conciseness scorer returned a non-finite value")
    conc = torch.tensor(raw, dtype=torch.float32).clamp(0.1, 1.0)
    ok = correct_mask(inp).float()
    inv, n_groups = group_index(inp.group_ids)
    solved = torch.zeros(n_groups).index_add(0, inv, ok)
    count = torch.zeros(n_groups).index_add(0, inv, torch.ones_like(ok))
    difficulty = 1.0 - (solved / count.clamp(min=1))[inv]
    scores = crf_rewards(r_o, conc, difficulty, s, alpha)
    n = scores.numel()
    metrics = {
        "shaping/crf/conciseness_mean": float(conc.mean().item()) if n else 0.0,
        "shaping/crf/difficulty_mean": float(difficulty.mean().item()) if n else 0.0,
        "shaping/crf/anneal_s": s,
        "shaping/crf/bonus_mean": float((scores - r_o).mean().item()) if n else 0.0,
    }
    return Shaped(scores=scores, metrics=metrics)

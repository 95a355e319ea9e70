"""DECS token rewards around the necessary reasoning prefix (arXiv 2509.25827), a shaping part.

Pair it with the ``decs`` advantage estimator (``rlfold.algos.decs``). See ``rlfold.rewards.shaping``
for the interface; a row is correct when ``inp.correct >= 0.5``; the thinking segment and the
mapping of characters to tokens are those of ``rlfold.rewards.text_spans``.

The NRP detector is pluggable: ``NRP_DETECTORS`` holds ``(completion, gold) -> char index | None``
functions; the ``detector`` option takes a registered name or, from Python, the callable itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from pydantic import Field

from rlfold.core.options import registered
from rlfold.core.registry import Registry
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput, correct_mask, resolve_part, valid_columns
from rlfold.rewards.text_spans import think_span, token_counts

__all__ = ["NRP_DETECTORS", "decs", "decs_post_nrp_value", "first_chunk_with_answer"]

NRP_DETECTORS: Registry = Registry("NRP detector")


@NRP_DETECTORS.register("first_chunk_with_answer")
def first_chunk_with_answer(completion: str, gold: str, *,
                            separators: Sequence[str] = ("\n", ". ")) -> int | None:
    """Rule-based NRP detector: end of the first chunk that contains the gold answer string.

    The text is cut after every occurrence of a separator (longest separator first where several
    match at one position); a chunk keeps its trailing separator. Returns the exclusive character
    index where that chunk ends (separator included), or None if no chunk contains ``gold.strip()``
    verbatim (case-sensitive substring test on the chunk without its separator) or the gold answer
    is empty. A stand-in for the paper's judge LM (pixas/DECS_NRP_DETECTOR): equivalent forms of
    the answer (1/2 vs \\frac{1}{2}) are not recognised.
    """
    gold = gold.strip()
    seps = sorted({s for s in separators if s}, key=len, reverse=True)
    if not gold:
        return None
    start = 0
    boundaries = ([(m.start(), m.end()) for m in re.finditer("|".join(map(re.escape, seps)), completion)]
                  if seps else [])
    for sep_start, sep_end in boundaries + [(len(completion), len(completion))]:
        if gold in completion[start:sep_start]:
            return sep_end
        start = sep_end
    return None


def decs_post_nrp_value(length: float, max_len: float, r_plus: float = 1.1, r_zero: float = 1.0) -> float:
    """DECS reward of a thinking token after the NRP: r_0 - (r_+ - r_0) L_i / L_max."""
    return r_zero - (r_plus - r_zero) * length / max_len


@SHAPINGS.register("decs")
def decs(
    inp: ShapingInput,
    *,
    state: dict,
    r_plus: float = 1.1,
    r_zero: float = 1.0,
    detector: Annotated[str, registered(NRP_DETECTORS)] | Callable[..., int | None] = "first_chunk_with_answer",
    detector_options: dict | None = None,
    think_tags: Annotated[Sequence[str], Field(min_length=2, max_length=2)] | None = ("<think>", "</think>"),
) -> Shaped:
    """DECS decoupled token-level reward (Lu et al., arXiv 2509.25827, Eqs. 8-9).

    NRP: ``detector(thinking_text, gold, **detector_options)`` (a name in ``NRP_DETECTORS`` or a
    callable) returns the character index where the necessary reasoning prefix ends; K* is the last
    response token that starts before it (see ``token_counts``). Per valid token j of row i:

    correct:   r_ij = r_+                                if j <= K* or token j is outside the
                                                            thinking segment (answer part)
               r_ij = r_0 - (r_+ - r_0) L_i / L_max      otherwise (thinking token after the NRP)
    incorrect: r_ij = 0

    with L_i = ``inp.lengths`` (tokens) and L_max = ``inp.max_len``. Choices where the paper is
    silent or differs: a correct row whose detector finds no NRP is treated as all NRP (every token
    r_+); without ``</think>`` the whole text is the thinking segment, and the stop token that
    ends it counts as answer (r_+: penalising it would penalise stopping right after the NRP, the
    behaviour DECS rewards); ``think_tags=None`` disables tag handling; masked (padding) tokens get 0 (the paper's r_+ on padding never reaches the loss).
    ``scores`` = r_+ * correct (the sequence reward that token-free consumers and metrics see);
    ``token_rewards`` [N, R] is what the trainer uses; pair it with the ``decs`` advantage
    (per-position group normalisation). The κ data
    curriculum (easy-prompt share) is a sampler concern and not part of this reward; its input R_m
    is reported as ``shaping/decs/nrp_ratio``. State unused. Metrics ``shaping/decs/{nrp_found,
    nrp_ratio, post_nrp_tokens_mean, token_reward_mean}`` (the first three over correct rows).
    """
    if inp.max_len <= 0:
        raise ValueError(f"decs needs max_len > 0, got {inp.max_len}")
    detect = resolve_part(NRP_DETECTORS, detector)
    options = dict(detector_options or {})
    ok = correct_mask(inp).tolist()
    n_rows = len(inp.completions)
    mask, cols = valid_columns(inp, n_rows)
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32)
    found, ratios, post_counts = [], [], []
    for i in range(n_rows):
        if not ok[i]:
            continue
        text = inp.completions[i]
        n_tok = int(cols[i].numel())
        row = torch.full((n_tok,), float(r_plus))
        t0, t1 = think_span(text, think_tags)
        nrp = detect(text[t0:t1], inp.prompts[i].answer, **options)
        found.append(nrp is not None)
        n_nrp = n_tok
        if nrp is not None:
            ids = inp.response_ids[i, cols[i]].tolist() if inp.response_ids is not None else None
            end_char = min(max(t0 + int(nrp), t0), t1)
            # without </think> the thinking segment is the whole text; a stop token after it is not
            # thinking (it ends the answer), so stopping right after the NRP is never penalised
            n_nrp, n_think_end = token_counts(text, ids, n_tok, inp.tokenizer, [end_char, t1])
            if n_think_end > n_nrp:
                value = decs_post_nrp_value(float(inp.lengths[i]), inp.max_len, r_plus, r_zero)
                row[n_nrp:n_think_end] = value
            post_counts.append(max(0, n_think_end - n_nrp))
        else:
            post_counts.append(0)
        ratios.append(min(n_nrp, n_tok) / n_tok if n_tok else 1.0)
        token_rewards[i, cols[i]] = row
    correct_t = torch.tensor(ok, dtype=torch.float32)
    n_valid = int(mask.sum().item())
    metrics = {
        "shaping/decs/nrp_found": sum(found) / len(found) if found else 0.0,
        "shaping/decs/nrp_ratio": sum(ratios) / len(ratios) if ratios else 0.0,
        "shaping/decs/post_nrp_tokens_mean": sum(post_counts) / len(post_counts) if post_counts else 0.0,
        "shaping/decs/token_reward_mean": float(token_rewards[mask].sum().item()) / n_valid if n_valid else 0.0,
    }
    return Shaped(scores=float(r_plus) * correct_t, token_rewards=token_rewards, metrics=metrics)

"""Internal x external redundancy penalties of "Reconsidering Overthinking" (arXiv 2508.02178), a
shaping part.

See ``rlfold.rewards.shaping`` for the interface; a row is correct when ``inp.correct >= 0.5``; the
chain of thought is the thinking segment of ``rlfold.rewards.text_spans``.

The sentence embedder is pluggable: ``EMBEDDERS`` holds ``(texts) -> Tensor [M, D]`` functions; the
``embedder`` option takes a registered name or, from Python, the callable itself.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.options import registered
from rlfold.core.registry import Registry
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput, correct_mask, resolve_part, sigmoid, valid_columns
from rlfold.rewards.text_spans import split_sentences, think_span, token_counts

__all__ = [
    "EMBEDDERS",
    "external_penalty",
    "first_correct_solution_end",
    "internal_penalty",
    "internal_redundancy",
    "redundancy",
    "redundancy_reward",
    "sigma_k",
    "trigram_embedder",
]

EMBEDDERS: Registry = Registry("sentence embedder")


def _answer_pattern(answer: str) -> re.Pattern[str] | None:
    answer = answer.strip()
    if not answer:
        return None
    before = r"(?<!\w)" + (r"(?<!\d\.)" if answer[0].isdigit() else "")
    after = r"(?!\w)" + (r"(?!\.\d)" if answer[-1].isdigit() else "")
    return re.compile(before + re.escape(answer) + after)


def first_correct_solution_end(text: str, answer: str) -> int | None:
    """End (exclusive char index) of the earliest sentence of ``text`` containing the answer, or None.

    The answer is matched verbatim with word boundaries: not preceded or followed by a word
    character, and for a numeric end not continued by a decimal part (so "12" matches in "x = 12."
    but not in "120" or "12.5"). If the match runs past its sentence, the boundary is the match end.
    """
    pattern = _answer_pattern(answer)
    m = pattern.search(text) if pattern is not None else None
    if m is None:
        return None
    for s, e in split_sentences(text):
        if s <= m.start() < e:
            return max(e, m.end())
    return m.end()


@EMBEDDERS.register("trigram")
def trigram_embedder(texts: Sequence[str], *, dim: int = 1024) -> Tensor:
    """Deterministic character-trigram hashing embedder (no downloads); rows are L2-normalised [M, dim].

    Text is lower-cased, whitespace runs become one space, and one space pads each end. Every
    trigram is hashed with CRC-32: bucket = h mod dim, sign = bit 31 of h (signed feature hashing
    reduces collision bias); weight 1 + log(count). An empty text embeds to the zero vector. A
    lexical proxy for the paper's semantic embedding model (text-embedding-3-large in its analysis;
    the model used during RL is not stated): its similarity scale differs, so register a real
    embedder for faithful IRD values.
    """
    out = torch.zeros(len(texts), dim, dtype=torch.float32)
    for row, text in enumerate(texts):
        norm = " " + " ".join(text.lower().split()) + " "
        counts: dict[str, int] = {}
        for k in range(len(norm) - 2):
            tri = norm[k:k + 3]
            counts[tri] = counts.get(tri, 0) + 1
        for tri, n in counts.items():
            h = zlib.crc32(tri.encode("utf-8"))
            out[row, h % dim] += (1.0 + math.log(n)) * (1.0 if h >> 31 else -1.0)
    return torch.nn.functional.normalize(out, dim=1)


def _windows(sentences: Sequence[str], alpha: float, beta: float) -> list[str]:
    n = len(sentences)
    w = max(1, math.floor(alpha * n + 1e-9))
    t = max(1, math.floor(beta * n + 1e-9))
    return [" ".join(sentences[s:s + w]) for s in range(0, n - w + 1, t)]


def _ird_from_embeddings(emb: Tensor) -> float:
    if emb.shape[0] < 2:
        return 0.0
    emb = emb.float()
    sims = torch.nn.functional.cosine_similarity(emb[:-1], emb[1:], dim=-1, eps=1e-12).clamp(min=0.0)
    return float(sims.mean().item())


def internal_redundancy(sentences: Sequence[str], embed: Callable[[list[str]], Tensor],
                        alpha: float = 0.1, beta: float = 0.05) -> float:
    """IRD of a sentence list: mean over consecutive windows of max(0, cos(e_i, e_{i+1})).

    Window size w = max(1, floor(alpha N)), stride t = max(1, floor(beta N)); windows start at
    0, t, 2t, ... while they fit (trailing sentences that fit no full window are left out); a
    window's text is its sentences joined by spaces. The paper writes IRD = (1/M) sum sim_i; with M
    windows there are M-1 adjacent pairs and we average over those. Fewer than 2 windows: IRD = 0.
    """
    windows = _windows(sentences, alpha, beta)
    if len(windows) < 2:
        return 0.0
    return _ird_from_embeddings(embed(windows))


def sigma_k(x: float, k: float = 20.0, c: float = 0.3) -> float:
    """Shifted steep sigmoid sigma_k(x) = 1 / (1 + exp(-k (x - c)))."""
    return sigmoid(k * (x - c))


def internal_penalty(ird: float, k: float = 20.0, c: float = 0.3) -> float:
    """p_int = [sigma_k(1 - IRD) - sigma_k(0)] / [sigma_k(1) - sigma_k(0)] (1 at IRD 0, 0 at IRD 1)."""
    lo, hi = sigma_k(0.0, k, c), sigma_k(1.0, k, c)
    return (sigma_k(1.0 - ird, k, c) - lo) / (hi - lo)


def external_penalty(erd: float) -> float:
    """p_ext = 1 - ERD."""
    return 1.0 - erd


def redundancy_reward(ird: float, erd: float, correct: bool = True, k: float = 20.0, c: float = 0.3) -> float:
    """r = 1[correct] * p_int(IRD) * p_ext(ERD) (Algorithm 1 of arXiv 2508.02178)."""
    return internal_penalty(ird, k, c) * external_penalty(erd) if correct else 0.0


@SHAPINGS.register("redundancy")
def redundancy(
    inp: ShapingInput,
    *,
    state: dict,
    k: Annotated[float, Field(gt=0)] = 20.0,
    c: float = 0.3,
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.1,
    beta: Annotated[float, Field(gt=0, lt=1)] = 0.05,
    embedder: Annotated[str, registered(EMBEDDERS)] | Callable[[list[str]], Tensor] = "trigram",
    unit: Literal["chars", "tokens"] = "chars",
    think_tags: Annotated[Sequence[str], Field(min_length=2, max_length=2)] | None = ("<think>", "</think>"),
) -> Shaped:
    """Internal x external redundancy penalty (Hong et al., Reconsidering Overthinking, arXiv 2508.02178).

    On the CoT (the thinking segment when the completion has ``</think>``, else the whole text):
    FCS boundary = end of the earliest sentence containing the gold answer
    (``first_correct_solution_end``: regex with word boundaries; sentences by ``split_sentences``).

    ERD = (CoT length after the FCS) / (CoT length), in characters (``unit="chars"``, default) or in
    response tokens (``unit="tokens"``, via ``token_counts``);
    IRD = ``internal_redundancy`` over the sentences of the FCS, windows w = floor(alpha N),
    stride t = floor(beta N) (at least 1; alpha 0.1, beta 0.05 as in the paper's analysis), embedded
    by ``embedder`` (a name in ``EMBEDDERS`` or a callable ``list[str] -> Tensor [M, D]``);
    p_int = [sigma_k(1 - IRD) - sigma_k(0)] / [sigma_k(1) - sigma_k(0)], sigma_k(x) = 1/(1 + e^{-k(x-c)}),
    k = 20, c = 0.3; p_ext = 1 - ERD.

    correct: r = p_int * p_ext;  incorrect: r = 0.  REPLACES the score.

    Choices where the paper is silent: when the answer is not found verbatim in a correct CoT the
    whole CoT is the FCS (ERD = 0; reported as ``fcs_found``); an empty CoT has ERD 0 and IRD 0;
    the default embedder is a hashing proxy, not a semantic model (see ``trigram_embedder``). All
    windows of the batch are embedded in one call. State unused. Metrics
    ``shaping/redundancy/{ird_mean, erd_mean, p_int_mean, fcs_found, reward_mean_correct}`` over
    correct rows.
    """
    if k <= 0:
        raise ValueError(f"redundancy needs k > 0, got {k}")
    if not 0.0 < beta <= alpha < 1.0:
        raise ValueError(f"redundancy needs 0 < beta <= alpha < 1, got alpha={alpha}, beta={beta}")
    if unit not in ("chars", "tokens"):
        raise ValueError(f"redundancy unit must be 'chars' or 'tokens', got {unit!r}")
    embed = resolve_part(EMBEDDERS, embedder)
    ok = correct_mask(inp).tolist()
    n_rows = len(inp.completions)
    cols = valid_columns(inp, n_rows)[1] if unit == "tokens" else None
    erds: dict[int, float] = {}
    found: list[bool] = []
    windows: dict[int, list[str]] = {}
    for i in range(n_rows):
        if not ok[i]:
            continue
        text = inp.completions[i]
        t0, t1 = think_span(text, think_tags)
        cot = text[t0:t1]
        fcs = first_correct_solution_end(cot, inp.prompts[i].answer)
        found.append(fcs is not None)
        fcs = len(cot) if fcs is None else fcs
        if unit == "tokens":
            assert cols is not None
            n_tok = int(cols[i].numel())
            ids = inp.response_ids[i, cols[i]].tolist() if inp.response_ids is not None else None
            a, b, e = token_counts(text, ids, n_tok, inp.tokenizer, [t0, t0 + fcs, t1])
            erds[i] = (e - b) / (e - a) if e > a else 0.0
        else:
            erds[i] = (len(cot) - fcs) / len(cot) if cot else 0.0
        head = cot[:fcs]
        windows[i] = _windows([head[s:e] for s, e in split_sentences(head)], alpha, beta)
    flat = [w for i in windows for w in windows[i]]
    emb = embed(flat) if flat else torch.zeros(0, 1)
    if emb.shape[0] != len(flat):
        raise ValueError(f"embedder returned {emb.shape[0]} rows for {len(flat)} texts")
    scores = torch.zeros(n_rows, dtype=torch.float32)
    irds, pints = [], []
    pos = 0
    for i, wins in windows.items():
        ird = _ird_from_embeddings(emb[pos:pos + len(wins)])
        pos += len(wins)
        p_int = internal_penalty(ird, k, c)
        scores[i] = p_int * external_penalty(erds[i])
        irds.append(ird)
        pints.append(p_int)

    def mean(xs: Sequence[float]) -> float:
        return float(sum(xs) / len(xs)) if xs else 0.0

    metrics = {
        "shaping/redundancy/ird_mean": mean(irds),
        "shaping/redundancy/erd_mean": mean(list(erds.values())),
        "shaping/redundancy/p_int_mean": mean(pints),
        "shaping/redundancy/fcs_found": mean([float(f) for f in found]),
        "shaping/redundancy/reward_mean_correct": mean([float(scores[i]) for i in windows]),
    }
    return Shaped(scores=scores, metrics=metrics)

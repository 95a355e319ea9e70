"""Short-answer QA rewards: SQuAD-normalised exact match, token F1 and cover exact match.

The prediction is the text inside the last ``<answer>...</answer>`` of the completion when it has
one, else the whole completion. The gold answers are ``prompt.meta["answers"]`` when that is a list
(or tuple) of strings, else ``[prompt.answer]``; a sample scores the best match over its golds.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Literal, Sequence

from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower-case, drop punctuation, drop articles a/an/the, collapse spaces.

    Applied in the order of the SQuAD v1.1 evaluation script (Rajpurkar et al. 2016, arXiv 1606.05250).
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer(completion: str) -> str:
    """The text of the last ``<answer>...</answer>`` block (stripped), or the whole completion without one."""
    matches = _ANSWER.findall(completion)
    return matches[-1].strip() if matches else completion


def gold_answers(prompt: Prompt) -> list[str]:
    """``prompt.meta["answers"]`` if it is a non-empty list/tuple, else ``[prompt.answer]``; blank golds dropped."""
    answers = prompt.meta.get("answers") if prompt.meta else None
    if isinstance(answers, (list, tuple)) and answers:
        golds = [str(a) for a in answers]
    else:
        golds = [prompt.answer]
    return [g for g in golds if g.strip()]


def against_golds(prompts: Sequence[Prompt], completions: Sequence[str],
                  score: Callable[[str, list[str]], float]) -> list[float | None]:
    """``score(completion, golds)`` of each sample (``gold_answers`` of its prompt); None where it has no gold."""
    out: list[float | None] = []
    for p, c in zip(prompts, completions):
        golds = gold_answers(p)
        out.append(score(c, golds) if golds else None)
    return out


def f1_score(prediction: str, gold: str) -> tuple[float, float, float]:
    """SQuAD token F1 of one prediction against one gold: ``(f1, precision, recall)`` over normalised tokens.

    Tokens are counted with multiplicity (bag intersection). If either side has no tokens after
    normalisation, F1 = P = R = 1 when both are empty, else 0.
    """
    pred_toks = normalize_answer(prediction).split()
    gold_toks = normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        v = float(pred_toks == gold_toks)
        return v, v, v
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision = same / len(pred_toks)
    recall = same / len(gold_toks)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def cover_match(prediction: str, gold: str, mode: str = "substring") -> bool | None:
    """Whether the prediction covers the gold answer; None if the gold normalises to nothing.

    ``mode="substring"``: the normalised gold is a contiguous substring of the normalised prediction
    (Search-R1's ``subem_check``; note it is character-level, so "cat" is inside "concatenate").
    ``mode="tokens"``: every normalised gold token occurs among the prediction's tokens, in any order
    (R1-Searcher's stage-1 cover-EM).
    """
    g = normalize_answer(gold)
    if not g:
        return None
    p = normalize_answer(prediction)
    if mode == "substring":
        return g in p
    if mode == "tokens":
        pred_toks = set(p.split())
        return all(t in pred_toks for t in g.split())
    raise ValueError(f"cover_exact_match mode must be 'substring' or 'tokens', got {mode!r}")


@REWARDS.register("qa_exact_match")
def qa_exact_match(
    prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]
) -> list[float | None]:
    """SQuAD exact match (Rajpurkar et al. 2016, arXiv 1606.05250), as the outcome reward of Search-R1 (arXiv 2503.09516).

    1.0 if the normalised prediction (``<answer>`` content, else the completion) equals any normalised
    gold answer, else 0.0; None when the prompt has no gold answer.
    """
    def one(c: str, golds: list[str]) -> float:
        pred = extract_answer(c)
        return max(exact_match_score(pred, g) for g in golds)

    return against_golds(prompts, completions, one)


@REWARDS.register("token_f1")
def token_f1(
    prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]
) -> list[float | None]:
    """SQuAD token F1 (Rajpurkar et al. 2016, arXiv 1606.05250), the answer reward of R1-Searcher stage 2 (arXiv 2503.05592).

    F1 = 2PR / (P + R) over normalised tokens with multiplicity, maximised over the gold answers; the
    prediction is the ``<answer>`` content, else the completion. None when the prompt has no gold.
    (R1-Searcher's own F1 also maps "True"/"False" to yes/no and zeroes yes/no/noanswer mismatches;
    this is plain SQuAD F1.)
    """
    def one(c: str, golds: list[str]) -> float:
        pred = extract_answer(c)
        return max(f1_score(pred, g)[0] for g in golds)

    return against_golds(prompts, completions, one)


@REWARDS.register("cover_exact_match")
def cover_exact_match(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    mode: Literal["substring", "tokens"] = "substring",
) -> list[float | None]:
    """Cover exact match, as in R1-Searcher (arXiv 2503.05592) and DeepRetrieval (arXiv 2503.00223).

    1.0 if any normalised gold answer is contained in the normalised prediction (``<answer>`` content,
    else the completion), else 0.0. ``mode="substring"`` (default): contiguous character substring,
    Search-R1's ``subem``; ``mode="tokens"``: every gold token appears among the prediction tokens
    (R1-Searcher stage 1). None when no gold answer survives normalisation (e.g. the gold is "the").
    """
    if mode not in ("substring", "tokens"):
        raise ValueError(f"cover_exact_match mode must be 'substring' or 'tokens', got {mode!r}")
    out: list[float | None] = []
    for p, c in zip(prompts, completions):
        pred = extract_answer(c)
        hits = [cover_match(pred, g, mode) for g in gold_answers(p)]
        hits = [h for h in hits if h is not None]
        out.append(None if not hits else float(any(hits)))
    return out

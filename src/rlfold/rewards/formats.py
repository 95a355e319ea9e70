"""Format rewards for tagged reasoning: DeepSeek-R1 think/answer, R1-Searcher and Search-R1 search traces.

All checks read the completion only (the response), not prompt + response. Where the original code
scored the full string (Search-R1 needs two ``<answer>`` matches because its prompt holds one;
R1-Searcher splits on ``"Assistant: <think>"``) the rule is restated for the response alone.
Multi-turn search rollouts are assumed to put the injected documents into the completion text, as
both papers' rollout loops do.
"""

from __future__ import annotations

import re
from typing import Sequence

from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS
from rlfold.rewards.qa import against_golds, cover_match, exact_match_score, normalize_answer

# ---------------------------------------------------------------------------------------------------
# DeepSeek-R1: <think>...</think><answer>...</answer>
# ---------------------------------------------------------------------------------------------------

_THINK_ANSWER = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_R1_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_think_answer(text: str) -> bool:
    """True iff ``text`` is ``<think>...</think>`` then ``<answer>...</answer>``, only whitespace around
    and between them, and each of the four tags occurs exactly once (contents may be empty)."""
    return all(text.count(t) == 1 for t in _R1_TAGS) and _THINK_ANSWER.fullmatch(text) is not None


@REWARDS.register("think_answer_format")
def think_answer_format(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    prefilled_think: bool = False,
) -> list[float]:
    """DeepSeek-R1 format reward (arXiv 2501.12948): 1 iff the completion is <think>...</think><answer>...</answer>.

    Exactly one of each tag, the think block first, nothing but whitespace before, between and after
    the two blocks; else 0. ``prefilled_think=True`` is for templates whose prompt already ends with
    ``<think>`` (R1-Zero's "Assistant: <think>"): the completion is checked as ``"<think>" + completion``.
    """
    prefix = "<think>" if prefilled_think else ""
    return [1.0 if is_think_answer(prefix + c) else 0.0 for c in completions]


# ---------------------------------------------------------------------------------------------------
# R1-Searcher (arXiv 2503.05592)
# ---------------------------------------------------------------------------------------------------

# The seven retrieval markers whose counts must agree: the query pair, the document pair, the document
# pair followed by the newline the system writes, and the first numbered document "(1)".
R1_SEARCHER_MARKERS = (
    "<|begin_of_query|>",
    "<|end_of_query|>",
    "<|begin_of_documents|>",
    "<|end_of_documents|>",
    "<|begin_of_documents|>\n",
    "<|end_of_documents|>\n",
    "<|begin_of_documents|>\n(1)",
)


def _r1_searcher_body(completion: str, prefilled_think: bool) -> str | None:
    """The response as R1-Searcher counts it (after "Assistant: <think>"); None if a required
    leading ``<think>`` is missing."""
    if prefilled_think:
        return completion
    stripped = completion.lstrip()
    if not stripped.startswith("<think>"):
        return None
    return stripped[len("<think>") :]


def r1_searcher_format_parts(completion: str, prefilled_think: bool = True) -> tuple[bool, bool]:
    """``(retrieval_ok, tags_ok)`` of R1-Searcher's stage-1 format checks.

    retrieval_ok: the seven markers of :data:`R1_SEARCHER_MARKERS` occur equally often, at least once
    (at least one well-formed retrieval). tags_ok: after the prefilled ``<think>``, ``<think>`` occurs
    0 times and ``</think>``, ``<answer>``, ``</answer>`` once each.
    """
    body = _r1_searcher_body(completion, prefilled_think)
    if body is None:
        return False, False
    counts = {body.count(m) for m in R1_SEARCHER_MARKERS}
    retrieval_ok = len(counts) == 1 and counts.pop() >= 1
    tags_ok = (
        body.count("<think>") == 0
        and body.count("</think>") == 1
        and body.count("<answer>") == 1
        and body.count("</answer>") == 1
    )
    return retrieval_ok, tags_ok


@REWARDS.register("r1_searcher_format")
def r1_searcher_format(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    prefilled_think: bool = True,
) -> list[float]:
    """R1-Searcher stage-1 format terms (Song et al. 2025, arXiv 2503.05592): +0.5 retrieval, +0.5 tags.

    +0.5 if the retrieval markers are well formed and used at least once (the seven markers of
    :data:`R1_SEARCHER_MARKERS` have equal counts >= 1); +0.5 if ``<think>`` occurs 0 times (the prompt
    ends with "Assistant: <think>") and ``</think>``, ``<answer>``, ``</answer>`` once each. Range
    {0, 0.5, 1}. With ``prefilled_think=False`` the completion must itself start with ``<think>``
    (else 0), which is removed before counting. The ±1 cover-EM answer term is ``r1_searcher_stage1``.
    """
    out = []
    for c in completions:
        retrieval_ok, tags_ok = r1_searcher_format_parts(c, prefilled_think)
        out.append(0.5 * retrieval_ok + 0.5 * tags_ok)
    return out


_BOOL_WORDS = {"true": "yes", "false": "no"}


def _bool_map(text: str) -> str:
    """R1-Searcher maps a bare "True"/"False" to "yes"/"no" before comparing."""
    return _BOOL_WORDS.get(text.strip().lower(), text)


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@REWARDS.register("r1_searcher_stage1")
def r1_searcher_stage1(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    prefilled_think: bool = True,
) -> list[float | None]:
    """R1-Searcher stage-1 reward (Song et al. 2025, arXiv 2503.05592): ±1 cover-EM + 0.5 retrieval + 0.5 format.

    Answer term: -1 if ``<answer>`` or ``</answer>`` is missing; else +1 if the last answer block covers a
    gold answer token-wise (every normalised gold token among the prediction tokens, "True"/"False"
    read as yes/no), else -1. Plus :func:`r1_searcher_format`. Range [-1, 2]: a correct, well-formed
    answer after one retrieval scores 2.0, a wrong one 0.0. None when the prompt has no gold answer.
    """
    def one(c: str, golds: list[str]) -> float:
        retrieval_ok, tags_ok = r1_searcher_format_parts(c, prefilled_think)
        blocks = _ANSWER.findall(c)
        if "<answer>" not in c or "</answer>" not in c or not blocks:
            base = -1.0
        else:
            pred = _bool_map(blocks[-1])
            hit = any(cover_match(pred, _bool_map(g), "tokens") for g in golds)
            base = 1.0 if hit else -1.0
        return base + 0.5 * retrieval_ok + 0.5 * tags_ok

    return against_golds(prompts, completions, one)


# ---------------------------------------------------------------------------------------------------
# Search-R1 (arXiv 2503.09516)
# ---------------------------------------------------------------------------------------------------

_SEARCH_R1_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")
_INSIDE = {"in_think", "in_search", "in_information", "in_answer"}
# state -> {tag: next state}; text other than whitespace is allowed only inside a block.
_SEARCH_R1_MOVES = {
    "start": {"<think>": "in_think"},
    "in_think": {"</think>": "after_think"},
    "after_think": {"<search>": "in_search", "<answer>": "in_answer"},
    "in_search": {"</search>": "after_search"},
    "after_search": {"<information>": "in_information"},
    "in_information": {"</information>": "after_information"},
    "after_information": {"<think>": "in_think"},
    "in_answer": {"</answer>": "end"},
    "end": {},
}


def is_search_r1_sequence(text: str) -> bool:
    """Search-R1's format state machine: ``<think>`` then either ``<search>q</search>
    <information>docs</information>`` and another ``<think>``, repeated, or ``<answer>a</answer>``, which
    ends the sequence. Only whitespace between blocks and after the answer; no nested or stray tags."""
    state = "start"
    for part in _SEARCH_R1_TAG.split(text):
        if not part.strip():
            continue
        if _SEARCH_R1_TAG.fullmatch(part):
            nxt = _SEARCH_R1_MOVES[state].get(part)
            if nxt is None:
                return False
            state = nxt
        elif state not in _INSIDE:
            return False
    return state == "end"


@REWARDS.register("search_r1_format")
def search_r1_format(
    prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]
) -> list[float]:
    """Search-R1 structure check (Jin et al. 2025, arXiv 2503.09516; format-aware reward of arXiv 2505.15117).

    1.0 iff the completion follows think -> (search -> information -> think)* -> answer, each block a
    tag pair, with only whitespace between blocks and after ``</answer>`` (see
    :func:`is_search_r1_sequence`); else 0.0. Search-R1 itself applies this to the text after
    ``<|im_start|>assistant``; here it is the completion. The scored combination is ``search_r1_em_format``.
    """
    return [1.0 if is_search_r1_sequence(c) else 0.0 for c in completions]


_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)


@REWARDS.register("search_r1_em_format")
def search_r1_em_format(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    structure_format_score: float = 0.2,
    retrieval_score: float = 0.1,
    final_format_score: float = 0.1,
    score: float = 1.0,
) -> list[float | None]:
    """Search-R1 format-aware EM reward (Jin et al., arXiv 2505.15117, after Search-R1 arXiv 2503.09516).

    With sf = ``structure_format_score``, rs = ``retrieval_score``, ff = ``final_format_score``, the
    answer = the last ``<answer>`` block (one match suffices: the prompt is not scored) and EM against
    any gold (SQuAD normalisation): valid format and EM -> ``score``; invalid and EM -> score - sf;
    not EM (or no answer) with a valid format -> sf, + rs if a gold answer is a substring of some
    ``<information>`` block; not EM and invalid -> ff, or 0 with no answer at all. Defaults 0.2 / 0.1 /
    0.1 as in the code comments. None when the prompt has no gold answer.
    """
    def one(c: str, golds: list[str]) -> float:
        valid = is_search_r1_sequence(c)
        blocks = _ANSWER.findall(c)
        answer = blocks[-1].strip() if blocks else None
        em = answer is not None and any(exact_match_score(answer, g) for g in golds)
        if em:
            return score if valid else score - structure_format_score
        elif valid:
            docs = [normalize_answer(d) for d in _INFORMATION.findall(c)]
            norm_golds = [normalize_answer(g) for g in golds]
            found = any(g and g in d for d in docs for g in norm_golds)
            return structure_format_score + (retrieval_score if found else 0.0)
        else:
            return 0.0 if answer is None else final_format_score

    return against_golds(prompts, completions, one)

"""Search-agent rewards: Search-R1 EM, R1-Searcher stage 2, AdaSearch's decision, HDPO's two channels.

A completion is the whole multi-turn response: the model's turns and the tool observations the
rollout loop appended, concatenated (Search-R1's ``<information>`` blocks, R1-Searcher's
``<|begin_of_documents|>`` blocks). Only the response is scored, never prompt + response; where an
original scored the full string the rule is restated for the response and the choice documented.
Gold answers are ``rlfold.rewards.qa.gold_answers`` (``Prompt.meta["answers"]`` when a list, else
``[Prompt.answer]``). The SQuAD normalisation, EM and cover-EM are those of ``rlfold.rewards.qa``.
DeepRetrieval is in ``search_retrieval``, CaRR / C-GRPO in ``search_rubric``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, Any, Literal, Sequence

from pydantic import Field

from rlfold.core.errors import ConfigError
from rlfold.core.options import registered
from rlfold.core.registry import TOOL_FORMATS, needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS, needed_inputs
from rlfold.rewards.formats import R1_SEARCHER_MARKERS
from rlfold.rewards.qa import against_golds, cover_match, exact_match_score, normalize_answer

__all__ = ["adasearch_decision", "count_tool_calls", "f1_aware", "hdpo_accuracy", "hdpo_tool",
           "r1_searcher_f1", "r1_searcher_stage2", "search_em", "searched"]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

# ---------------------------------------------------------------------------------------------------
# Answer matching
# ---------------------------------------------------------------------------------------------------

_BOOL_WORDS = {"true": "yes", "false": "no"}
_SPECIAL = ("yes", "no", "noanswer")


def _r1_normalize(text: str) -> str:
    """R1-Searcher's normalisation: a bare True/False read as yes/no, '_' as a space, then SQuAD's."""
    text = _BOOL_WORDS.get(text.strip().lower(), text)
    return normalize_answer(text.replace("_", " "))


def r1_searcher_f1(prediction: str, gold: str) -> float:
    """R1-Searcher's answer F1 (the HotpotQA rule): SQuAD token F1 over normalised tokens, except that
    when either side normalises to yes / no / noanswer and the two differ, F1 = 0."""
    p, g = _r1_normalize(prediction), _r1_normalize(gold)
    if (p in _SPECIAL or g in _SPECIAL) and p != g:
        return 0.0
    pt, gt = p.split(), g.split()
    if not pt or not gt:
        return float(pt == gt)
    same = sum((Counter(pt) & Counter(gt)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pt), same / len(gt)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------------------------------


def count_tool_calls(text: str, tag: str = "search", tool_format: str | None = None) -> int:
    """The number of tool calls with a non-empty argument in a response.

    Without ``tool_format``: the ``<tag>...</tag>`` pairs whose content is not blank (Search-R1's
    ``<search> q </search>``). With ``tool_format`` (a name in ``TOOL_FORMATS``, e.g. the R1-Searcher
    query markers): the response is cut after each of the format's stop strings for the tool ``tag``
    and each piece is read by the format's own ``parse``; a piece that parses as a call with a
    non-blank argument counts. An empty query counts as no call: no retrieval happens for it.
    """
    if tool_format is None:
        pattern = re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)
        return sum(1 for arg in pattern.findall(text) if arg.strip())
    fmt = TOOL_FORMATS.get(tool_format)()
    stops = [s for s in fmt.stop_strings([tag]) if s]
    calls, pos = 0, 0
    while stops:
        ends = [(i + len(s)) for s in stops if (i := text.find(s, pos)) >= 0]
        if not ends:
            break
        end = min(ends)
        action = fmt.parse(text[pos:end], [tag])
        calls += int(action.kind == "call" and bool(action.argument.strip()))
        pos = end
    return calls


def searched(text: str, tag: str = "search", tool_format: str | None = None) -> bool:
    """The decision a response made: True iff it made at least one tool call (``count_tool_calls``)."""
    return count_tool_calls(text, tag, tool_format) >= 1


# ---------------------------------------------------------------------------------------------------
# Search-R1 (arXiv 2503.09516)
# ---------------------------------------------------------------------------------------------------


@REWARDS.register("search_em")
def search_em(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    min_matches: Annotated[int, Field(ge=1)] = 1,
    subem: bool = False,
) -> list[float | None]:
    """Search-R1's outcome reward ``compute_score_em`` (Jin et al. 2025, arXiv 2503.09516) on the response.

    The prediction is the last ``<answer>(.*?)</answer>`` of the completion; fewer than
    ``min_matches`` answer blocks score 0 (no fallback to the whole text). 1 if it equals a gold
    answer after SQuAD normalisation (``subem=True``: a normalised gold is a substring of it, the
    ``subem_check`` variant), else 0; None when the prompt has no gold answer.

    Choice: the original code demands >= 2 matches because it scores prompt + response and the prompt
    holds the example "<answer> Beijing </answer>"; rlfold scores the response alone, so the default
    is 1. ``min_matches=2`` on prompt + response text reproduces the original.
    """
    if min_matches < 1:
        raise ValueError(f"search_em needs min_matches >= 1, got {min_matches}")
    def one(c: str, golds: list[str]) -> float:
        blocks = _ANSWER.findall(c)
        if len(blocks) < min_matches:
            return 0.0
        pred = blocks[-1].strip()
        if subem:
            hit = any(cover_match(pred, g, "substring") for g in golds)
        else:
            hit = any(exact_match_score(pred, g) for g in golds)
        return float(hit)

    return against_golds(prompts, completions, one)


# ---------------------------------------------------------------------------------------------------
# R1-Searcher stage 2 (arXiv 2503.05592)
# ---------------------------------------------------------------------------------------------------

_DOCS_BLOCK = re.compile(re.escape("<|begin_of_documents|>") + r".*?(?:" + re.escape("<|end_of_documents|>") + r"|$)",
                         re.DOTALL)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_R1_TAGS = ("<|begin_of_query|>", "<|end_of_query|>", "<|begin_of_documents|>", "<|end_of_documents|>")


def r1_searcher_violations(completion: str, variant: str = "qwen_zero", prefilled_think: bool = True,
                           max_answer_words: int = 10) -> list[str]:
    """The names of the R1-Searcher stage-2 format rules a response breaks (empty: well formed).

    Every variant: ``markers`` (the seven retrieval markers of ``formats.R1_SEARCHER_MARKERS`` differ
    in count; zero retrievals is fine), ``tags`` (``<think>`` occurs after the prefilled one, or
    ``</think>``, ``<answer>``, ``</answer>`` not exactly once), ``chinese`` (CJK characters outside the
    retrieved document blocks). ``variant="qwen_zero"`` adds ``assistant`` (the text "Assistant" or
    "assistant" anywhere in the response), ``answer_tags`` (a query or document marker inside the
    answer) and ``answer_length`` (an answer of more than ``max_answer_words`` words).
    """
    body = completion
    broken: list[str] = []
    if not prefilled_think:
        stripped = completion.lstrip()
        if stripped.startswith("<think>"):
            body = stripped[len("<think>"):]
        else:
            broken.append("tags")
    if len({body.count(m) for m in R1_SEARCHER_MARKERS}) > 1:
        broken.append("markers")
    if "tags" not in broken and (body.count("<think>") != 0 or any(body.count(t) != 1
                                                                for t in ("</think>", "<answer>", "</answer>"))):
        broken.append("tags")
    if _CJK.search(_DOCS_BLOCK.sub(" ", body)):
        broken.append("chinese")
    if variant == "qwen_zero":
        if "Assistant" in body or "assistant" in body:
            broken.append("assistant")
        blocks = _ANSWER.findall(body)
        answer = blocks[-1] if blocks else ""
        if any(t in answer for t in _R1_TAGS):
            broken.append("answer_tags")
        if len(answer.split()) > max_answer_words:
            broken.append("answer_length")
    return broken


@REWARDS.register("r1_searcher_stage2")
def r1_searcher_stage2(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    variant: Literal["qwen_zero", "llama"] = "qwen_zero",
    penalty: Annotated[float, Field(ge=0)] | None = None,
    prefilled_think: bool = True,
    max_answer_words: Annotated[int, Field(ge=1)] = 10,
) -> list[float | None]:
    """R1-Searcher stage-2 reward (Song et al. 2025, arXiv 2503.05592): F1 minus a penalty on a format violation.

    r = ``r1_searcher_f1`` of the last answer block against the best gold (0 when ``<answer>`` or
    ``</answer>`` is missing), minus ``penalty`` if ``r1_searcher_violations`` finds any broken rule.
    ``variant="qwen_zero"`` (default; the README's and ``reward_server_qwen_zero.py``'s rules):
    penalty 2 and the extra rules; ``variant="llama"``: penalty 1 and the base rules only (the Llama
    stage-2 server). ``penalty`` overrides the variant's. F1 0.5 with a violation: -1.5. None when the
    prompt has no gold answer. ``prefilled_think``: the prompt ends with "Assistant: <think>", as in
    the paper; with False the response must open with ``<think>``.

    Choice: the marker rule does not demand a retrieval (stage 2 drops that requirement); "assistant"
    is searched in the whole response, documents included, as the spec states the rule.
    """
    if variant not in ("qwen_zero", "llama"):
        raise ValueError(f"r1_searcher_stage2 variant must be 'qwen_zero' or 'llama', got {variant!r}")
    cost = penalty if penalty is not None else (2.0 if variant == "qwen_zero" else 1.0)
    def one(c: str, golds: list[str]) -> float:
        blocks = _ANSWER.findall(c)
        if "<answer>" not in c or "</answer>" not in c or not blocks:
            f1 = 0.0
        else:
            f1 = max(r1_searcher_f1(blocks[-1], g) for g in golds)
        bad = r1_searcher_violations(c, variant, prefilled_think, max_answer_words)
        return f1 - (cost if bad else 0.0)

    return against_golds(prompts, completions, one)


# ---------------------------------------------------------------------------------------------------
# AdaSearch (arXiv 2512.16883)
# ---------------------------------------------------------------------------------------------------


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{what} must be a boolean, got {value!r}")


@REWARDS.register("adasearch_decision")
@needs("needs_search")
def adasearch_decision(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    needs_search: Sequence[Any],
    tag: str = "search",
    tool_format: Annotated[str, registered(TOOL_FORMATS)] | None = None,
    correct_value: float = 1.0,
    wrong_value: float = 0.0,
) -> list[float | None]:
    """AdaSearch decision reward (arXiv 2512.16883): the search-or-answer decision against the oracle label.

    The decision is "search" iff the response made at least one tool call (``count_tool_calls`` with
    ``tag``, or with the registered ``tool_format``'s own parser); the label is the dataset column
    ``needs_search`` (a bool: the question is not solvable from parametric knowledge). A decision
    equal to the label scores ``correct_value``, else ``wrong_value``; None where the label is missing.

    Choice: the paper's reward values were not found; +1 / 0 here. The rationale text is not scored.
    """
    out: list[float | None] = []
    for c, label in zip(completions, needs_search):
        if label is None:
            out.append(None)
            continue
        hit = searched(c, tag, tool_format) == _as_bool(label, "needs_search")
        out.append(correct_value if hit else wrong_value)
    return out


def f1_aware(decisions: Sequence[Any], labels: Sequence[Any]) -> float:
    """AdaSearch's self-knowledge metric F1_aware (arXiv 2512.16883): F1 of the search decisions.

    ``decisions[i]``: the response searched; ``labels[i]``: the question needs search (oracle). The
    positive class is "no search needed" (an inference from the paper: Search-R1, which always
    searches, scores near 0). F1 = 2TP / (2TP + FP + FN) with TP = did not search and needed none;
    0.0 when there is no positive at all (no TP, FP or FN), as scikit-learn's default. Accepts bool
    lists or tensors.
    """
    d = [bool(x) for x in (decisions.tolist() if hasattr(decisions, "tolist") else decisions)]
    y = [bool(x) for x in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(d) != len(y):
        raise ValueError(f"f1_aware needs as many decisions as labels, got {len(d)} and {len(y)}")
    tp = sum(1 for a, b in zip(d, y) if not a and not b)
    fp = sum(1 for a, b in zip(d, y) if not a and b)
    fn = sum(1 for a, b in zip(d, y) if a and not b)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


# ---------------------------------------------------------------------------------------------------
# HDPO reward channels (Metis "Act Wisely", arXiv 2604.08545)
# ---------------------------------------------------------------------------------------------------


def _inner_scores(name: str, prompts, completions, finishes, owner: str) -> list[float | None]:
    fn = REWARDS.get(name)
    if needed_inputs(fn):
        raise ConfigError(f"reward {owner!r}: the reward {name!r} needs {', '.join(needed_inputs(fn))}, "
                          "which it cannot pass on; choose a reward that needs no extra input")
    scores = list(fn(prompts, completions, finishes))
    if len(scores) != len(completions):
        raise ValueError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} samples")
    return [None if s is None else float(s) for s in scores]


@REWARDS.register("hdpo_accuracy")
def hdpo_accuracy(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    answer_reward: Annotated[str, registered(REWARDS)] = "qa_exact_match",
    format_reward: Annotated[str, registered(REWARDS)] = "search_r1_format",
    answer_weight: Annotated[float, Field(ge=0)] = 0.9,
    format_weight: Annotated[float, Field(ge=0)] = 0.1,
) -> list[float | None]:
    """HDPO accuracy channel (Metis "Act Wisely", arXiv 2604.08545): r_acc = 0.9 r_ans + 0.1 r_fmt.

    r_ans is the registered reward ``answer_reward`` (default SQuAD EM of the answer), r_fmt the
    registered ``format_reward`` (a None format score counts 0); None where r_ans is None.

    Choice: the paper's answer and format checks are task specific (visual QA); the defaults are
    the search-agent ones (EM on the last ``<answer>``, Search-R1's think/search/answer structure).
    """
    ans = _inner_scores(answer_reward, prompts, completions, finishes, "hdpo_accuracy")
    fmt = _inner_scores(format_reward, prompts, completions, finishes, "hdpo_accuracy")
    return [None if a is None else answer_weight * a + format_weight * (f or 0.0) for a, f in zip(ans, fmt)]


@REWARDS.register("hdpo_tool")
def hdpo_tool(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    answer_reward: Annotated[str, registered(REWARDS)] = "qa_exact_match",
    tag: str = "search",
    tool_format: Annotated[str, registered(TOOL_FORMATS)] | None = None,
) -> list[float | None]:
    """HDPO tool-efficiency channel (Metis "Act Wisely", arXiv 2604.08545): r_tool = 1/(T+1) if correct else 0.

    T = ``count_tool_calls`` of the response (``tag`` / ``tool_format``); correct = the registered
    ``answer_reward`` scores >= 0.5. None where that reward is None. HDPO's separate advantage over
    the correct rollouts only is an advantage part, not this reward.

    Choice: an empty query is not a call (no tool ran); the README gives no rule for it.
    """
    ans = _inner_scores(answer_reward, prompts, completions, finishes, "hdpo_tool")
    out: list[float | None] = []
    for c, a in zip(completions, ans):
        if a is None:
            out.append(None)
        else:
            out.append(1.0 / (count_tool_calls(c, tag, tool_format) + 1) if a >= 0.5 else 0.0)
    return out

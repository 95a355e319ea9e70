"""Calibration and attempt-structured rewards: Rewarding Doubt (log scoring of a stated confidence) and
the multi-attempt reward of "Learning from Failures in Multi-Attempt RL".

Both are specified in ``methods/rewards.md`` sections 11 and 12b; the docstrings say which parts
follow the paper, which the official code, and what was chosen where neither says.
"""

from __future__ import annotations

import math
import re
import string
from typing import Callable, Sequence

from rlfold.core.errors import ConfigError
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

# ----------------------------------------------------------------------------- answer verifiers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _normalize_answer(text: str) -> str:
    """TriviaQA / SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(pred: str, gold: str) -> bool:
    return pred.strip() == gold.strip()


def _normalized(pred: str, gold: str) -> bool:
    return _normalize_answer(pred) == _normalize_answer(gold)


# ``verifier`` option values shared by the rewards of this module.
VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact_match": _exact,  # stripped strings equal
    "normalized_exact_match": _normalized,  # TriviaQA-style normalised EM (the Rewarding Doubt paper's metric)
}


def _verifier(name: str, reward: str) -> Callable[[str, str], bool]:
    try:
        return VERIFIERS[name]
    except KeyError:
        raise ConfigError(
            f"reward {reward!r}: unknown verifier {name!r}; choose one of {', '.join(sorted(VERIFIERS))}"
        ) from None


# ----------------------------------------------------------------------------- Rewarding Doubt

# "Answer: <answer>, Confidence: <0-10>" (rewards.md 11). The confidence must be a whole number: a
# decimal ("0.8") or a percentage ("80%") is not read as its leading digits but counts as invalid.
_DOUBT = re.compile(r"Answer:\s*(?P<answer>.*?),\s*Confidence:\s*(?P<confidence>\d+)(?!\d|\.\d|\s*%)")


def parse_answer_confidence(completion: str) -> tuple[str, int] | None:
    """``(answer, confidence)`` from the first ``"Answer: <a>, Confidence: <0-10>"``, or None if absent.

    The confidence returned may be out of range (e.g. 11); the caller decides validity.
    """
    m = _DOUBT.search(completion)
    if m is None:
        return None
    return m.group("answer").strip(), int(m.group("confidence"))


def doubt_score(
    correct: bool,
    confidence: int | None,
    *,
    scale: float = 10.0,
    eps: float = 0.001,
    normalize: bool = True,
    correct_bonus: float = 0.25,
    invalid_reward: float | None = None,
) -> float:
    """The Rewarding Doubt reward of one answer stated with ``confidence`` in 0..10.

    p = clip(confidence / 10, eps, 1 - eps); s = log p if correct else log(1 - p) (the paper's
    logarithmic scoring rule). With ``normalize`` (official code), s is mapped to
    n = (s - m_min) / (m_max - m_min) with m_max = log(1 - eps), m_min = log(eps) / 2, and the
    reward is ``scale * (n + correct_bonus * correct)``; without it the reward is
    ``scale * (s + correct_bonus * correct)`` (``scale=1, correct_bonus=0`` is the paper's raw score).
    A missing confidence, or one outside 0..10, gets ``invalid_reward`` (default ``-3 * scale``,
    the official code's penalty).
    """
    if confidence is None or confidence < 0 or confidence > 10:
        return -3.0 * scale if invalid_reward is None else float(invalid_reward)
    p = min(max(confidence / 10.0, eps), 1.0 - eps)
    s = math.log(p) if correct else math.log(1.0 - p)
    if normalize:
        m_max, m_min = math.log(1.0 - eps), math.log(eps) / 2.0
        s = (s - m_min) / (m_max - m_min)
    return scale * (s + (correct_bonus if correct else 0.0))


@REWARDS.register("rewarding_doubt")
def rewarding_doubt(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    verifier: str = "exact_match",
    scale: float = 10.0,
    eps: float = 0.001,
    normalize: bool = True,
    correct_bonus: float = 0.25,
    invalid_reward: float | None = None,
) -> list[float]:
    """Rewarding Doubt (arXiv 2503.02623): pay a stated confidence by the log scoring rule.

    The completion states ``"Answer: <answer>, Confidence: <0-10>"``; the answer is checked against
    ``prompt.answer`` with ``verifier`` (``exact_match``: stripped equality; or
    ``normalized_exact_match``: TriviaQA normalisation, the paper's metric). The score is
    ``doubt_score`` (defaults: the official code's normalised form, scale 10, +0.25 when correct,
    -30 for a missing or out-of-range confidence; e.g. confidence 8 correct -> 11.8566, wrong -> 5.3417).
    For a correct answer the reward rises with the confidence, for a wrong one it falls.
    """
    check = _verifier(verifier, "rewarding_doubt")
    out: list[float] = []
    for p, c in zip(prompts, completions):
        parsed = parse_answer_confidence(c)
        if parsed is None:
            out.append(doubt_score(False, None, scale=scale, eps=eps, normalize=normalize,
                                   correct_bonus=correct_bonus, invalid_reward=invalid_reward))
            continue
        answer, conf = parsed
        out.append(doubt_score(check(answer, p.answer), conf, scale=scale, eps=eps, normalize=normalize,
                               correct_bonus=correct_bonus, invalid_reward=invalid_reward))
    return out


# ----------------------------------------------------------------------------- multi-attempt

# The text put between two attempts by the ``multi_attempt`` engine (rlfold.rollout.multi_attempt).
# ``{left}`` in a feedback text is replaced by the number of attempts still left.
DEFAULT_FEEDBACK = "Wrong, try again: "
LEFT_FIELD = "{left}"


def render_feedback(feedback: str, left: int) -> str:
    """The feedback text shown when ``left`` attempts remain (``{left}`` filled in)."""
    return feedback.replace(LEFT_FIELD, str(left))


def feedback_pattern(feedback: str) -> re.Pattern[str]:
    """A regex matching every rendering of ``feedback`` (``{left}`` matches a whole number)."""
    if not feedback:
        raise ConfigError("multi-attempt feedback text must not be empty")
    return re.compile(r"\d+".join(re.escape(part) for part in feedback.split(LEFT_FIELD)))


def split_attempts(completion: str, feedback: str = DEFAULT_FEEDBACK) -> list[str]:
    """The attempts of a multi-attempt completion: its text split at the feedback separators.

    The attempt count is ``len(split_attempts(...))``. An attempt that itself contains the feedback
    text verbatim would be split too (the engine cannot tell the model's text from its own).
    """
    return feedback_pattern(feedback).split(completion)


_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces balanced), or None if there is none."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i, depth = start + len(_BOXED), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unclosed box


def extract_attempt_answer(attempt: str, extract: str) -> str | None:
    """The answer an attempt gives: ``boxed`` = last ``\\boxed{}`` content, ``plain`` = the stripped
    attempt text (None when empty)."""
    if extract == "boxed":
        return last_boxed(attempt)
    if extract == "plain":
        return attempt.strip() or None
    raise ConfigError(f"reward 'multi_attempt': unknown extract {extract!r}; choose 'boxed' or 'plain'")


def attempt_verifier(
    answers: Sequence[str], *, extract: str = "plain", verifier: str = "exact_match"
) -> Callable[[int, str], bool]:
    """The ``verifier`` callable of the ``multi_attempt`` engine for one ``generate`` call whose
    prompt ``i`` has gold answer ``answers[i]``; it judges an attempt as the ``multi_attempt`` reward
    does with the same ``extract`` and ``verifier``."""
    check = _verifier(verifier, "multi_attempt")
    extract_attempt_answer("", extract)  # validates ``extract`` now rather than mid-generation
    gold = list(answers)

    def judge(prompt_index: int, attempt: str) -> bool:
        a = extract_attempt_answer(attempt, extract)
        return a is not None and check(a, gold[prompt_index])

    return judge


@REWARDS.register("multi_attempt")
def multi_attempt(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    feedback: str = DEFAULT_FEEDBACK,
    extract: str = "plain",
    verifier: str = "exact_match",
    correct_reward: float = 1.0,
    wrong_answer_reward: float = -0.5,
    no_answer_reward: float = -1.0,
    attempt_discount: float = 1.0,
) -> list[float]:
    """Multi-attempt reward (arXiv 2503.04808, official code ``duality/vllm_mul.py``).

    The completion is split into attempts at the ``feedback`` separators the ``multi_attempt``
    engine inserted (give the engine's ``feedback`` here too). Each attempt's answer is extracted
    (``extract``: ``plain`` = the whole stripped attempt, for tasks such as ``arith`` answered by a
    bare number; ``boxed`` = the last ``\\boxed{}``, the paper's math setting) and checked with
    ``verifier``. Reward:

    - ``correct_reward`` (+1) if any attempt is correct (the episode ends at it);
    - otherwise ``wrong_answer_reward`` (-0.5) if any attempt gave an (incorrect) answer;
    - otherwise ``no_answer_reward`` (-1): no answer at all, e.g. cut at the token limit.

    No discount by default: the code's ``attempt_discount`` is overwritten to 1. With another value
    a correct episode of ``k`` attempts gets ``correct_reward * attempt_discount ** k`` (the code's
    exponent: the number of attempts used, counting from 1).
    """
    check = _verifier(verifier, "multi_attempt")
    pattern = feedback_pattern(feedback)
    out: list[float] = []
    for p, c in zip(prompts, completions):
        attempts = pattern.split(c)
        answers = [extract_attempt_answer(a, extract) for a in attempts]
        hit = next((k for k, a in enumerate(answers, start=1) if a is not None and check(a, p.answer)), None)
        if hit is not None:
            out.append(correct_reward * (attempt_discount ** hit if attempt_discount != 1.0 else 1.0))
        elif any(a is not None for a in answers):
            out.append(wrong_answer_reward)
        else:
            out.append(no_answer_reward)
    return out

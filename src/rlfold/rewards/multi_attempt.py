"""The multi-attempt reward of "Learning from Failures in Multi-Attempt RL" (arXiv 2503.04808) and the
helpers it shares with the ``multi_attempt`` rollout engine (``rlfold.rollout.multi_attempt``):
the feedback text put between attempts, splitting a completion into its attempts, and the
per-attempt verifier the engine stops on.

The docstrings say which parts follow the paper, which follow the official code, and what was
chosen where neither says.
"""

from __future__ import annotations

import re
from typing import Annotated, Callable, Literal, Sequence

from pydantic import Field

from rlfold.core.errors import ConfigError
from rlfold.core.options import registered
from rlfold.core.types import Prompt
from rlfold.rewards.answer_match import VERIFIERS, resolve_verifier
from rlfold.rewards.base import REWARDS

# The text put between two attempts by the ``multi_attempt`` engine (rlfold.rollout.multi_attempt).
# ``{left}`` in a feedback text is replaced by the number of attempts still left.
DEFAULT_FEEDBACK = "Wrong, try again: "
LEFT_FIELD = "{left}"

# Option domains shared by the ``multi_attempt`` reward and environment (checked when a config loads).
Feedback = Annotated[str, Field(min_length=1)]
Extract = Literal["plain", "boxed"]
Verifier = Annotated[str, registered(VERIFIERS, "verifier")]


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
    check = resolve_verifier(verifier, "multi_attempt")
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
    feedback: Feedback = DEFAULT_FEEDBACK,
    extract: Extract = "plain",
    verifier: Verifier = "exact_match",
    correct_reward: float = 1.0,
    wrong_answer_reward: float = -0.5,
    no_answer_reward: float = -1.0,
    attempt_discount: Annotated[float, Field(gt=0, le=1)] = 1.0,
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
    check = resolve_verifier(verifier, "multi_attempt")
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

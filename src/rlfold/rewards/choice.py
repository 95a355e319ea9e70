"""Multiple-choice answers ``"<trace> so <letter>"``: the letter's correctness, and ACRE's consistency reward."""

from __future__ import annotations

import re
from typing import Any, Sequence

from rlfold.core.errors import RewardError
from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

LETTERS = "ABCD"
TRACE_END = " so "  # the reasoning trace ends here; the chosen letter follows
_CHOICE = re.compile(r"^(?P<trace>.*? so )(?P<letter>[A-Z])")
CONSISTENT = "followup/consistent"  # rollout extra of the shuffled_options follow-up: 1 if the choice held


def parse_choice(completion: str) -> tuple[str, str] | None:
    """``(trace, letter)`` of ``"<trace> so <letter>"`` (the trace keeps its ``" so "``), or None."""
    m = _CHOICE.match(completion)
    return None if m is None else (m.group("trace"), m.group("letter"))


def chosen_value(prompt: Prompt, letter: str, options: Sequence[Any] | None = None) -> str | None:
    """The option value ``letter`` names among ``options`` (default: the prompt's ``meta["options"]``), or None."""
    opts = list(prompt.meta["options"] if options is None else options)
    i = LETTERS.find(letter) if len(letter) == 1 else -1
    return None if i < 0 or i >= len(opts) else str(opts[i])


def _correct(prompt: Prompt, completion: str) -> bool:
    parsed = parse_choice(completion)
    return parsed is not None and parsed[1] == prompt.answer.strip()


@REWARDS.register("choice_match")
def choice_match(prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str]) -> list[float]:
    """ACRE (arXiv 2510.10104) task accuracy: 1 if the letter after ``"<trace> so "`` is the gold letter, else 0."""
    return [float(_correct(p, c)) for p, c in zip(prompts, completions)]


@REWARDS.register("acre")
@needs("rollout_extras")
def acre(prompts: Sequence[Prompt], completions: Sequence[str], finishes: Sequence[str], *,
         rollout_extras: Sequence[dict[str, Any]], correct_consistent: float = 1.0,
         correct_inconsistent: float = 0.5, wrong_consistent: float = 0.0,
         wrong_inconsistent: float = 0.0) -> list[float]:
    """ACRE (arXiv 2510.10104): four-way reward of correctness x consistency of the choice under shuffled options.

    Consistency is the ``followup/consistent`` extra of the ``shuffled_options`` follow-up (the re-asked
    choice after the same trace names the same option value). The paper grants the high reward only when
    the answer is correct and consistent and "a lower reward accordingly" otherwise, without publishing the
    values; the four are options here, defaulting to 1 / 0.5 / 0 / 0 (a correct but inconsistent choice
    is worth half, a wrong one nothing)."""
    out = []
    for i, (p, c, x) in enumerate(zip(prompts, completions, rollout_extras)):
        if CONSISTENT not in x:
            raise RewardError(f"reward 'acre' needs the rollout extra {CONSISTENT!r} (sample {i}); set "
                              "rollout.followup: {name: shuffled_options}")
        good, same = _correct(p, c), x[CONSISTENT] > 0.5
        out.append({(True, True): correct_consistent, (True, False): correct_inconsistent,
                    (False, True): wrong_consistent, (False, False): wrong_inconsistent}[(good, same)])
    return out


__all__ = ["CONSISTENT", "LETTERS", "TRACE_END", "acre", "choice_match", "chosen_value", "parse_choice"]

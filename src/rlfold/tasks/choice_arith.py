"""Multiple-choice arithmetic: work the sum out, then pick one of four lettered options (ACRE, arXiv 2510.10104).

The problems and the train / held-out split are those of ``arith`` (same hash split). Each problem gets
three distractors near the sum (±1, ±2, ±10, ...) and the four options are placed in an order fixed by
the problem text, so every seed sees the same questions:

    prompt      "A:124 B:135 C:125 D:115 | 58+67="
    completion  "125 so C"          (the reasoning trace "125 so ", then the chosen letter)

The trace comes before the letter, so the choice can be re-asked after the same trace with the options
in another order (the ``shuffled_options`` follow-up), which is ACRE's consistency check. The shipped
base ``tiny-choice-arith`` (``scripts/build_choice_model.py``) was taught the format on demonstrations
whose letter is the sum's option only half of the time and otherwise "A". It learned the position bias but
not the binding of letter to trace: after the correct trace it gives the sum's letter the same probability
as any other non-"A" letter (0.12 each, "A" 0.63; ``python bench/choice_binding.py``), so its greedy
answer is always "A" and never survives a re-ask with the options rotated.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rewards.choice import LETTERS, TRACE_END
from rlfold.tasks.arithmetic import arith_splits, solve
from rlfold.tasks.base import TASKS, Task
from rlfold.tasks.rows import Columns

_OFFSETS = (1, -1, 2, -2, 10, -10, 11, -11, 3, -3, 20, -20)


def choice_options(a: int, b: int, op: str) -> list[int]:
    """The four option values of a problem, in their fixed order: the sum and three distinct distractors."""
    answer = int(solve(a, b, op))
    rng = random.Random(derive_seed(0, "choice_arith", f"{a}{op}{b}"))
    near = [answer + d for d in _OFFSETS if answer + d >= 0]
    options = [answer, *rng.sample(near, 3)]
    rng.shuffle(options)
    return options


def options_text(options: Sequence[int | str]) -> str:
    """``"A:124 B:135 C:125 D:115"``."""
    return " ".join(f"{LETTERS[i]}:{v}" for i, v in enumerate(options))


def choice_prompt(options: Sequence[int | str], question: str) -> str:
    """The prompt text: the lettered options, then the problem (``"58+67="``)."""
    return f"{options_text(options)} | {question}"


def choice_completion(value: int | str, letter: str) -> str:
    """A completion in the task's format: the worked sum, ``" so "``, the letter."""
    return f"{value}{TRACE_END}{letter}"


@TASKS.register("choice_arith")
def choice_arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
    columns: Columns | None = None,
) -> Task:
    """ACRE (arXiv 2510.10104) in miniature: the ``arith`` problems of ``levels`` (default two-digit addition) as
    four-option multiple-choice questions, answered ``"<sum> so <letter>"``; the gold answer is the letter.

    Generated prompts carry ``meta["options"]`` (values in prompt order), ``meta["question"]`` and
    ``meta["value"]`` (the sum). Prompts read from ``train_file`` / ``held_out_file`` keep their own text
    and need those columns for the ``shuffled_options`` follow-up. ``seed`` orders the training problems; the
    held-out prompts are the same for every seed.
    """
    train, held, sources = arith_splits(levels, train_size, held_out_size, held_out_fraction, seed, train_file,
                                        held_out_file, columns, default_levels=[2], generated=_as_choices)
    return Task(name="choice_arith", train=train, held_out=held, rewards=["choice_match"], sources=sources)


def _as_choices(prompts: list[Prompt]) -> list[Prompt]:
    """Generated ``arith`` prompts as multiple-choice questions (the gold answer becomes the letter)."""
    out = []
    for p in prompts:
        a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
        options = choice_options(a, b, op)
        question = f"{a}{op}{b}="
        letter = LETTERS[options.index(int(p.answer))]
        out.append(replace(p, text=choice_prompt(options, question), answer=letter,
                           meta={**p.meta, "options": options, "question": question, "value": p.answer}))
    return out


__all__ = ["choice_arith_task", "choice_completion", "choice_options", "choice_prompt", "options_text"]

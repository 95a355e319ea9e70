"""Arithmetic answered with a stated confidence: ``"Answer: <a>, Confidence: <0-10>"`` (Rewarding Doubt, arXiv 2503.02623).

The problems and the train / held-out split are those of ``arith`` (same hash split), drawn from a mix of
difficulty levels so that a tiny model is reliably right on some (two-digit addition) and often wrong on
others (three-digit addition): a calibrated policy can then condition its confidence on the problem.
The prompt asks for the answer and a confidence; the shipped base ``tiny-confidence-arith`` (built by
``scripts/build_confidence_model.py``) answers in the paper's format with a confidence drawn uniformly
from 0..10, independent of whether the answer is right. Rewards: ``answer_confidence_match`` (accuracy
of the stated answer); the recipe ``rewarding_doubt`` adds the calibration reward.
"""

from __future__ import annotations

from dataclasses import replace

from rlfold.core.types import Prompt
from rlfold.tasks.arithmetic import arith_splits
from rlfold.tasks.base import TASKS, Task
from rlfold.tasks.rows import Columns

# The default difficulty mix: two-digit addition (easy for the tiny base) and three-digit addition (hard).
DEFAULT_LEVELS = [2, 4]


# Whole-word tokens for a base that writes each stated confidence as one token, apart from the answer's digits
# (scripts/build_confidence_model.py --confidence-tokens; a probe in docs/calibration.md).
CONFIDENCE_WORDS = [f"Confidence: {c}" for c in range(11)]


def confidence_prompt(a: int, b: int, op: str) -> str:
    """The prompt text: the problem and the request for an answer with a 0-10 confidence."""
    return f"{a}{op}{b}=? (confidence 0-10) "


def confidence_completion(answer: int | str, confidence: int) -> str:
    """A completion in the paper's format: ``"Answer: 125, Confidence: 7"``."""
    return f"Answer: {answer}, Confidence: {confidence}"


@TASKS.register("confidence_arith")
def confidence_arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
    columns: Columns | None = None,
) -> Task:
    """Rewarding Doubt (arXiv 2503.02623) on arithmetic: the ``arith`` problems of ``levels`` (default
    two- and three-digit addition, equal shares), prompted for ``"Answer: <a>, Confidence: <0-10>"``.

    Generated prompts get the text of ``confidence_prompt``; prompts read from ``train_file`` /
    ``held_out_file`` keep their own text. ``seed`` orders the training problems; the held-out prompts
    are the same for every seed.
    """
    train, held, sources = arith_splits(levels, train_size, held_out_size, held_out_fraction, seed, train_file,
                                        held_out_file, columns, default_levels=DEFAULT_LEVELS, generated=_reprompt)
    return Task(name="confidence_arith", train=train, held_out=held, rewards=["answer_confidence_match"],
                sources=sources)


def _reprompt(prompts: list[Prompt]) -> list[Prompt]:
    """Generated ``arith`` prompts with the confidence-asking text (answers and meta unchanged)."""
    return [replace(p, text=confidence_prompt(p.meta["a"], p.meta["b"], p.meta["op"])) for p in prompts]

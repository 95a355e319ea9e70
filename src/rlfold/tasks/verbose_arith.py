"""Verbose arithmetic: the arithmetic problems, answered by a base that writes redundant re-checks first.

The prompts and gold answers are those of ``arith``; what differs is the shipped base model
(``tiny-verbose-arith``, built by ``scripts/build_verbose_model.py``). Its demonstrations state the
answer, then write zero to three re-checks such as ``"wait, 125. "`` before the final answer
(``"125. check 125. wait, 125. 125"``). The answer is computed once, right after the prompt, and the
re-checks only copy it, so they are pure overhead: efficiency methods can remove them without
changing how the answer is computed. A second base, ``tiny-graded-verbose-arith`` (same script,
``--graded``), writes the same re-checks but drops the carries of about half its carry problems, so
its problems have graded difficulty (those without a carry are easy) for the difficulty-aware methods.
Rewards: ``final_answer`` (the last integer of the completion is the gold answer).
"""

from __future__ import annotations

import random

from rlfold.tasks.arithmetic import arith_splits
from rlfold.tasks.base import TASKS, Task
from rlfold.tasks.rows import Columns

# Re-check templates of the verbose base; each has a reflection keyword (wait / check / verify / hmm).
RECHECKS = ("wait, {s}. ", "check {s}. ", "hmm, verify {s}. ")
# Probability of writing k re-checks before the answer (k = 0, 1, 2, 3).
RECHECK_PROBS = (0.25, 0.35, 0.25, 0.15)


def verbose_completion(a: int, b: int, op: str, answer: int, rng: random.Random) -> str:
    """A demonstration: the answer alone, or the answer, k re-checks (``RECHECK_PROBS``) and the answer again."""
    k = rng.choices(range(len(RECHECK_PROBS)), weights=RECHECK_PROBS)[0]
    if k == 0:
        return str(answer)
    checks = "".join(rng.choice(RECHECKS).format(a=a, b=b, op=op, s=answer) for _ in range(k))
    return f"{answer}. {checks}{answer}"


@TASKS.register("verbose_arith")
def verbose_arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
    columns: Columns | None = None,
) -> Task:
    """The ``arith`` problems (same split), for the verbose base; reward ``final_answer``."""
    train, held, sources = arith_splits(levels, train_size, held_out_size, held_out_fraction, seed, train_file,
                                        held_out_file, columns)
    return Task(name="verbose_arith", train=train, held_out=held, rewards=["final_answer"], sources=sources)

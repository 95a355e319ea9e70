"""Verbose arithmetic: the arithmetic problems, answered by a base that writes redundant re-checks first.

The prompts and gold answers are those of ``arith``; what differs is the shipped base model
(``tiny-verbose-arith``, built by ``scripts/build_verbose_model.py``), whose demonstrations put zero
to three re-checks such as ``"wait, check 58+67=125. "`` before the final answer. The re-checks
repeat the answer, so they are pure overhead: efficiency methods can remove them without losing
accuracy. Rewards: ``final_answer`` (the last integer of the completion is the gold answer).
"""

from __future__ import annotations

import random

from rlfold.tasks.arithmetic import HELD_OUT_SEED, make_split
from rlfold.tasks.base import TASKS, Task, load_jsonl_prompts

# Re-check templates of the verbose base; each mentions a reflection keyword (wait / check / verify / hmm).
RECHECKS = ("wait, check {a}{op}{b}={s}. ", "hmm, verify {s}. ", "check again: {s}. ")
# Probability of writing k re-checks before the answer (k = 0, 1, 2, 3).
RECHECK_PROBS = (0.25, 0.35, 0.25, 0.15)


def verbose_completion(a: int, b: int, op: str, answer: int, rng: random.Random) -> str:
    """A demonstration: k re-checks drawn from ``RECHECK_PROBS``, then the answer."""
    k = rng.choices(range(len(RECHECK_PROBS)), weights=RECHECK_PROBS)[0]
    checks = "".join(rng.choice(RECHECKS).format(a=a, b=b, op=op, s=answer) for _ in range(k))
    return f"{checks}{answer}"


@TASKS.register("verbose_arith")
def verbose_arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
) -> Task:
    """The ``arith`` problems (same split), for the verbose base; reward ``final_answer``."""
    levels = levels or [2]
    train = (load_jsonl_prompts(train_file) if train_file
             else make_split(levels, False, held_out_fraction, train_size, seed))
    held = (load_jsonl_prompts(held_out_file) if held_out_file
            else make_split(levels, True, held_out_fraction, held_out_size, HELD_OUT_SEED))
    return Task(name="verbose_arith", train=train, held_out=held, rewards=["final_answer"])

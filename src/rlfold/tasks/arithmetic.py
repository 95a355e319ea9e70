"""Arithmetic with verifiable answers at graded difficulty, generated from a seed."""

from __future__ import annotations

import hashlib
import random

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt
from rlfold.tasks.base import TASKS, Task, load_jsonl_prompts

# Difficulty levels: (description, operand generator, operator)
LEVELS: dict[int, tuple[str, tuple[int, int], str]] = {
    1: ("one-digit addition", (0, 9), "+"),
    2: ("two-digit addition", (10, 99), "+"),
    3: ("two-digit subtraction, non-negative result", (10, 99), "-"),
    4: ("three-digit addition", (100, 999), "+"),
}


def format_prompt(a: int, b: int, op: str) -> str:
    """The prompt text the model sees: ``"58+67="``."""
    return f"{a}{op}{b}="


def solve(a: int, b: int, op: str) -> int:
    return a + b if op == "+" else a - b


def no_carry_sum(a: int, b: int) -> int:
    """Column-wise addition that drops every carry (the base model's planted misconception)."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def is_held_out(text: str, fraction: float) -> bool:
    """Deterministic split by a hash of the prompt text, so train and held-out never overlap."""
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return (h % 10_000) < int(fraction * 10_000)


def all_problems(level: int) -> list[tuple[int, int, str]]:
    """Every problem of a level (levels are small enough to enumerate)."""
    if level not in LEVELS:
        raise DataError(f"arith: unknown difficulty level {level}; known levels: {sorted(LEVELS)}")
    _, (lo, hi), op = LEVELS[level]
    probs = [(a, b, op) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    if op == "-":
        probs = [(a, b, op) for a, b, _ in probs if a >= b]
    return probs


def make_split(
    levels: list[int], held_out: bool, held_out_fraction: float, size: int, seed: int
) -> list[Prompt]:
    """Draw ``size`` distinct problems from the requested split, spread evenly over ``levels``."""
    rng = random.Random(seed)
    pool = [
        p for lv in dict.fromkeys(levels) for p in all_problems(lv)
        if is_held_out(format_prompt(*p), held_out_fraction) == held_out
    ]
    if not pool:
        raise DataError(f"arith: no problems in the {'held-out' if held_out else 'train'} split")
    rng.shuffle(pool)
    chosen = pool if size <= 0 else pool[:size]
    return [
        Prompt(text=format_prompt(a, b, op), answer=str(solve(a, b, op)), meta={"a": a, "b": b, "op": op})
        for a, b, op in chosen
    ]


@TASKS.register("arith")
def arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
) -> Task:
    """Seeded arithmetic problems; ``train_file``/``held_out_file`` (JSONL) replace the generated splits."""
    levels = levels or [2]
    train = (
        load_jsonl_prompts(train_file) if train_file
        else make_split(levels, False, held_out_fraction, train_size, seed)
    )
    held = (
        load_jsonl_prompts(held_out_file) if held_out_file
        else make_split(levels, True, held_out_fraction, held_out_size, seed + 1)
    )
    return Task(name="arith", train=train, held_out=held, rewards=["exact_match", "format"])



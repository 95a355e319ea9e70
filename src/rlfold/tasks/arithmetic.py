"""Arithmetic with verifiable answers at graded difficulty, generated from a seed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt
from rlfold.tasks.base import TASKS, Task
from rlfold.tasks.files import DataSource, files_or_generated
from rlfold.tasks.rows import Columns

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


# The held-out draw does not depend on the run seed, so runs with different seeds are compared
# on the same prompts.
HELD_OUT_SEED = 20_240_203

# Levels with more problems than this are sampled (seeded, distinct) instead of enumerated.
MAX_ENUMERATED = 200_000
SAMPLED_POOL = 50_000


def level_size(level: int) -> int:
    """Number of distinct problems of a level."""
    if level not in LEVELS:
        raise DataError(f"arith: unknown difficulty level {level}; known levels: {sorted(LEVELS)}")
    _, (lo, hi), op = LEVELS[level]
    n = hi - lo + 1
    return n * (n + 1) // 2 if op == "-" else n * n


def all_problems(level: int) -> list[tuple[int, int, str]]:
    """Every problem of a level, in a fixed order."""
    level_size(level)  # validates the level
    _, (lo, hi), op = LEVELS[level]
    probs = [(a, b, op) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    if op == "-":
        probs = [(a, b, op) for a, b, _ in probs if a >= b]
    return probs


def _level_pool(level: int, held_out: bool, fraction: float, want: int, rng: random.Random) -> list[tuple[int, int, str]]:
    """Up to ``want`` distinct problems of one split of a level (all of them if ``want <= 0``), shuffled."""
    in_split = lambda p: is_held_out(format_prompt(*p), fraction) == held_out  # noqa: E731
    if level_size(level) <= MAX_ENUMERATED:
        pool = [p for p in all_problems(level) if in_split(p)]
        rng.shuffle(pool)
        return pool if want <= 0 else pool[:want]
    # Too many to enumerate: rejection-sample distinct problems of the split.
    want = SAMPLED_POOL if want <= 0 else want
    _, (lo, hi), op = LEVELS[level]
    seen: dict[tuple[int, int, str], None] = {}
    while len(seen) < want:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and a < b:
            a, b = b, a
        if in_split((a, b, op)):
            seen[(a, b, op)] = None
    return list(seen)


def make_split(
    levels: list[int], held_out: bool, held_out_fraction: float, size: int, seed: int
) -> list[Prompt]:
    """``size`` distinct problems of one split, shared equally between ``levels`` (``size <= 0``: all).

    A level too small for its share contributes all it has. Levels above ``MAX_ENUMERATED`` problems
    are sampled; with ``size <= 0`` they contribute ``SAMPLED_POOL`` problems.
    """
    rng = random.Random(seed)
    levels = list(dict.fromkeys(levels))
    chosen: list[tuple[int, tuple[int, int, str]]] = []
    for i, lv in enumerate(levels):
        share = 0 if size <= 0 else (size - len(chosen)) // (len(levels) - i)
        if size > 0 and share == 0:
            continue
        chosen.extend((lv, p) for p in _level_pool(lv, held_out, held_out_fraction, share, rng))
    if not chosen:
        raise DataError(f"arith: no problems in the {'held-out' if held_out else 'train'} split of levels {levels}")
    rng.shuffle(chosen)
    return [
        Prompt(text=format_prompt(a, b, op), answer=str(solve(a, b, op)),
               meta={"a": a, "b": b, "op": op, "level": lv})
        for lv, (a, b, op) in chosen
    ]


def arith_splits(
    levels: list[int] | None, train_size: int, held_out_size: int, held_out_fraction: float, seed: int,
    train_file: str | None, held_out_file: str | None, columns: Columns | None = None, *,
    default_levels: Sequence[int] = (2,),
    generated: Callable[[list[Prompt]], list[Prompt]] | None = None,
) -> tuple[list[Prompt], list[Prompt], list[DataSource]]:
    """Train and held-out prompts: generated (held-out independent of ``seed``) or read from dataset files
    (``tasks.files.load_prompts``, columns mapped by ``columns``), and the files read. ``levels`` falls
    back to ``default_levels``; ``generated`` rewrites the generated prompts (not those read from files)."""
    lv = list(levels or default_levels)
    post = generated or (lambda ps: ps)
    return files_or_generated(train_file, held_out_file, columns or Columns(),
                              lambda: post(make_split(lv, False, held_out_fraction, train_size, seed)),
                              lambda: post(make_split(lv, True, held_out_fraction, held_out_size, HELD_OUT_SEED)))


@TASKS.register("arith")
def arith_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
    columns: Columns | None = None,
) -> Task:
    """Seeded arithmetic problems; ``train_file``/``held_out_file`` (JSONL, Parquet, CSV, JSON or a
    ``save_to_disk`` directory; ``columns`` maps their columns) replace the generated splits.

    ``seed`` orders the training problems; the held-out prompts are the same for every seed.
    """
    train, held, sources = arith_splits(levels, train_size, held_out_size, held_out_fraction, seed, train_file,
                                        held_out_file, columns)
    return Task(name="arith", train=train, held_out=held, rewards=["exact_match", "format"], sources=sources)



"""Acceptance: the math_verify reward scores every GSM8K test answer right when written as a model would.

For each of the 1319 items of the shared GSM8K test file the gold final answer N (after "####") is
written as "\\boxed{N}" and as a plain "The answer is N." (with distracting numbers earlier in the
text; N >= 1000 written with thousands separators in the plain form), and N perturbed by +1 / -1
(alternating) in the same two forms. Both correct forms must score 1 and both wrong forms 0 on at
least 99.5% of the items. The four rates and the runtime are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlfold.core.types import Prompt
from rlfold.rewards.math import extract_gsm8k_gold, math_verify

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k_test.jsonl"
THRESHOLD = 0.995


def _as_model_writes(n: str, commas: bool) -> str:
    if commas and "." not in n and abs(int(n)) >= 1000:
        return f"{int(n):,}"
    return n


def _perturb(n: str, i: int) -> str:
    delta = 1 if i % 2 == 0 else -1
    return str(int(n) + delta) if "." not in n else repr(float(n) + delta)


@pytest.mark.skipif(not DATA.is_file(), reason=f"GSM8K test file not found at {DATA}")
def test_math_verify_on_every_gsm8k_test_answer():
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    assert len(rows) > 1000
    golds = [extract_gsm8k_gold(r["answer"]) for r in rows]
    assert all(g is not None for g in golds), "every GSM8K answer has a '#### n' number"

    prompts = [Prompt(r["question"], g) for r, g in zip(rows, golds)]
    finishes = ["stop"] * len(rows)
    lead = "First, 12 + 30 = 42 and 42 - 5 = 37."
    wrong = [_perturb(g, i) for i, g in enumerate(golds)]
    forms = {
        "boxed_correct": [f"{lead} So the answer is \\boxed{{{g}}}." for g in golds],
        "plain_correct": [f"{lead} The answer is {_as_model_writes(g, True)}." for g in golds],
        "boxed_wrong": [f"{lead} So the answer is \\boxed{{{w}}}." for w in wrong],
        "plain_wrong": [f"{lead} The answer is {_as_model_writes(w, True)}." for w in wrong],
    }

    start = time.perf_counter()
    rates, failures = {}, {}
    for name, completions in forms.items():
        scores = math_verify(prompts, completions, finishes)
        want = 1.0 if name.endswith("correct") else 0.0
        ok = [s == want for s in scores]
        rates[name] = sum(ok) / len(ok)
        failures[name] = [(golds[i], completions[i]) for i, good in enumerate(ok) if not good][:5]
    elapsed = time.perf_counter() - start

    print(f"\nGSM8K math_verify on {len(rows)} items ({elapsed:.1f} s):")
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:.2%}")
    for name, rate in rates.items():
        assert rate >= THRESHOLD, (name, rate, failures[name])

    # A full GSM8K solution as the gold is reduced to its "#### n" number.
    full = [Prompt(r["question"], r["answer"]) for r in rows[:50]]
    assert math_verify(full, forms["plain_correct"][:50], finishes[:50]) == [1.0] * 50


@pytest.mark.skipif(not DATA.is_file(), reason=f"GSM8K test file not found at {DATA}")
def test_gsm8k_reward_on_every_gsm8k_test_answer():
    """The dependency-free ``gsm8k`` reward, with the full GSM8K solutions as golds, on the same forms."""
    from rlfold.rewards.math import gsm8k

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    prompts = [Prompt(r["question"], r["answer"]) for r in rows]
    golds = [extract_gsm8k_gold(r["answer"]) for r in rows]
    finishes = ["stop"] * len(rows)
    right = [f"So the answer is \\boxed{{{_as_model_writes(g, True)}}}." for g in golds]
    plain = [f"12 + 30 = 42. The answer is {_as_model_writes(g, True)}." for g in golds]
    wrong = [f"12 + 30 = 42. The answer is {_perturb(g, i)}." for i, g in enumerate(golds)]
    assert gsm8k(prompts, right, finishes) == [1.0] * len(rows)
    assert gsm8k(prompts, plain, finishes) == [1.0] * len(rows)
    assert gsm8k(prompts, wrong, finishes) == [0.0] * len(rows)

"""Execution-based code reward: the share of unit tests a completion's program passes (CodeRL, arXiv 2207.01780).

Execution feedback as the reward of code RL, as in CodeRL (Le et al. 2022) and the rule-based code
rewards of DeepSeek-R1 (arXiv 2501.12948). The program is the last ```` ```python ```` fenced block
of the completion (else the last untagged fenced block, else the whole completion; a block cut off
by the generation limit counts up to the end). The tests are ``prompt.meta["tests"]``: a list of
``assert`` snippets (one test each) or one string (a single test program); an optional
``prompt.meta["test_setup"]`` string runs between the program and the tests. Every program runs
in :func:`rlfold.sandbox.run_sandboxed`; a timeout, crash, refused operation or sandbox
failure counts as failed tests and never raises, so one bad sample cannot stop a training run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from pydantic import Field

from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS
from rlfold.sandbox import run_sandboxed

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "python3", "py", "py3"}


def extract_code(completion: str) -> str:
    """The program in a completion: last python-tagged fenced block, else last untagged one, else the text."""
    blocks = _FENCE.findall(completion)
    for wanted in (lambda tag: tag.lower() in _PYTHON_TAGS, lambda tag: tag == ""):
        picked = [body for tag, body in blocks if wanted(tag)]
        if picked:
            return picked[-1]
    return completion


def prompt_tests(prompt: Prompt) -> list[str] | None:
    """``prompt.meta["tests"]`` as a list of test snippets; None when the prompt has no tests."""
    tests = prompt.meta.get("tests") if prompt.meta else None
    if isinstance(tests, str):
        return [tests] if tests.strip() else None
    if isinstance(tests, (list, tuple)):
        kept = [str(t) for t in tests if str(t).strip()]
        return kept or None
    return None


@REWARDS.register("code_tests")
def code_tests(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    all_or_nothing: bool = False,
    timeout_s: Annotated[float, Field(gt=0)] = 5.0,
    memory_mb: Annotated[int, Field(gt=0)] = 512,
    workers: Annotated[int, Field(ge=1)] | None = None,
) -> list[float | None]:
    """Fraction of ``prompt.meta["tests"]`` the completion's program passes (None: the prompt has no tests).

    ``all_or_nothing`` gives 1 only when every test passes (the binary pass@1 reward of
    DeepSeek-R1-style code RL), else 0. ``timeout_s`` and ``memory_mb`` bound each program (see
    :func:`run_sandboxed`); ``workers`` programs run at once (default: the CPU count).
    """
    scores: list[float | None] = [None] * len(completions)
    jobs: list[tuple[int, str, list[str], str]] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        tests = prompt_tests(prompt)
        if tests is None:
            continue
        setup = prompt.meta.get("test_setup") or ""
        jobs.append((i, extract_code(completion), tests, setup if isinstance(setup, str) else ""))

    def score(job: tuple[int, str, list[str], str]) -> float:
        _, code, tests, setup = job
        try:
            result = run_sandboxed(code, tests, timeout_s=timeout_s, memory_mb=memory_mb, setup=setup)
        except Exception:  # noqa: BLE001 - a sandbox failure is a failed program, never a failed run
            return 0.0
        if all_or_nothing:
            return 1.0 if result.total and result.passed == result.total else 0.0
        return result.passed / result.total if result.total else 0.0

    n_workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    if n_workers == 1:
        values = [score(job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="code_tests") as pool:
            values = list(pool.map(score, jobs))
    for (i, *_), value in zip(jobs, values):
        scores[i] = value
    return scores

"""CRF (arXiv 2511.09158) against worked numbers."""

from __future__ import annotations

import itertools
import math

import pytest
from shaping_inputs import make_input, run_part

from rlfold.core.types import Prompt
from rlfold.rewards.crf import CONCISENESS_SCORERS, length_ratio


def _by_text(completion, prompt, *, length, max_len) -> float:
    return float(completion)


def test_crf_zero_outcome_and_monotone() -> None:
    cs = ["0.1", "0.4", "0.7", "1.0"]
    zero = run_part("crf", make_input(cs, "1", [0, 0, 0, 0], scores=[0, 0, 0, 0]), scorer=_by_text)
    assert zero.scores.tolist() == [0.0] * 4
    out = run_part("crf", make_input(cs, "1", [1, 1, 1, 1]), scorer=_by_text)
    vals = out.scores.tolist()
    assert all(b > a for a, b in itertools.pairwise(vals))
    assert vals == pytest.approx([1 + 0.5 * c for c in (0.1, 0.4, 0.7, 1.0)])  # d = 0, s = 1
    clipped = run_part("crf", make_input(["0.0", "5"], "1", [1, 1]), scorer=_by_text)
    assert clipped.scores.tolist() == pytest.approx([1.05, 1.5])


def test_crf_difficulty_anneal_and_defaults() -> None:
    inp = make_input(["1", "1", "1", "1"], "1", [1, 0, 1, 1], [0, 0, 1, 1], scores=[1, 0, 1, 1], step=50)
    out = run_part("crf", inp, scorer=_by_text, alpha=1.0, anneal="linear", anneal_steps=100)
    # group 0 solve rate 0.5 -> d = 0.5; s = 1 - 50/100 = 0.5
    assert out.scores.tolist() == pytest.approx([2.0, 0.0, 1.5, 1.5])
    assert out.metrics["shaping/crf/anneal_s"] == pytest.approx(0.5)
    late = run_part("crf", make_input(["1"], "1", [1], step=500), scorer=_by_text, anneal="linear", anneal_steps=100)
    assert late.scores.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="anneal_steps"):
        run_part("crf", inp, anneal="linear")
    with pytest.raises(ValueError, match="anneal"):
        run_part("crf", inp, anneal="cosine")
    # outcome from the verifier instead of the incoming score
    by_correct = run_part("crf", make_input(["1"], "1", [1], scores=[3.0]), scorer=_by_text, outcome="correct")
    assert by_correct.scores.item() == pytest.approx(1.5)
    # default scorer: c = clip(1 - L / max_len, 0.1, 1)
    p = Prompt(text="q", answer="1")
    assert length_ratio("", p, length=0, max_len=100) == 1.0
    assert length_ratio("", p, length=50, max_len=100) == pytest.approx(0.5)
    assert length_ratio("", p, length=95, max_len=100) == pytest.approx(0.1)
    d = run_part("crf", make_input(["x", "y"], "1", [1, 1], lengths=[0, 100], max_len=100))
    assert d.scores.tolist() == pytest.approx([1.5, 1.05])
    assert "length_ratio" in CONCISENESS_SCORERS
    assert math.isfinite(d.metrics["shaping/crf/bonus_mean"])

"""The Rewarding Doubt reward (arXiv 2503.02623) on worked examples."""

from __future__ import annotations

import math

import pytest

from rlfold.core.errors import ConfigError
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import REWARDS, score_rewards
from rlfold.rewards.calibration import doubt_score, parse_answer_confidence, rewarding_doubt

P = Prompt("58+67=", "125")


def _doubt(completion: str, prompt: Prompt = P, **kw) -> float:
    return rewarding_doubt([prompt], [completion], [FINISH_STOP], **kw)[0]


@pytest.mark.parametrize(
    "conf, correct, expected",
    [(8, True, 11.8566), (8, False, 5.3417), (10, True, 12.5), (10, False, -10.0029),
     (0, False, 10.0), (5, True, 10.4954), (11, True, -30.0), (11, False, -30.0)],
)
def test_doubt_worked_table(conf, correct, expected):
    answer = "125" if correct else "124"
    assert _doubt(f"Answer: {answer}, Confidence: {conf}") == pytest.approx(expected, abs=1e-4)
    assert doubt_score(correct, conf) == pytest.approx(expected, abs=1e-4)


def test_doubt_paper_raw_log_score():
    raw = dict(normalize=False, scale=1.0, correct_bonus=0.0)
    assert _doubt("Answer: 125, Confidence: 8", **raw) == pytest.approx(math.log(0.8), abs=1e-9)  # -0.22314
    assert _doubt("Answer: 7, Confidence: 8", **raw) == pytest.approx(math.log(0.2), abs=1e-9)  # -1.60944
    # clipping at eps = 0.001: certainty that turns out wrong costs log(0.001), not -inf
    assert _doubt("Answer: 7, Confidence: 10", **raw) == pytest.approx(math.log(0.001), abs=1e-9)
    assert _doubt("Answer: 125, Confidence: 0", **raw) == pytest.approx(math.log(0.001), abs=1e-9)


def test_doubt_monotone_in_confidence():
    right = [_doubt(f"Answer: 125, Confidence: {c}") for c in range(11)]
    wrong = [_doubt(f"Answer: 99, Confidence: {c}") for c in range(11)]
    assert all(a < b for a, b in zip(right, right[1:]))
    assert all(a > b for a, b in zip(wrong, wrong[1:]))
    raw = dict(normalize=False, scale=1.0, correct_bonus=0.0)
    right = [_doubt(f"Answer: 125, Confidence: {c}", **raw) for c in range(11)]
    wrong = [_doubt(f"Answer: 99, Confidence: {c}", **raw) for c in range(11)]
    assert all(a < b for a, b in zip(right, right[1:]))
    assert all(a > b for a, b in zip(wrong, wrong[1:]))


@pytest.mark.parametrize(
    "completion",
    ["125", "Answer: 125", "Answer: 125, Confidence: high", "Confidence: 8", "Answer: 125, Confidence: 0.8",
     "Answer: 125, Confidence: 80%", "Answer: 125, Confidence: 11", "Answer: 125, Confidence: 100", ""],
)
def test_doubt_invalid_gets_the_fixed_penalty(completion):
    assert _doubt(completion) == -30.0
    assert _doubt(completion, scale=5.0) == -15.0  # -3 * scale (multiple-answer setting uses scale 5)
    assert _doubt(completion, invalid_reward=-1.0) == -1.0


def test_doubt_parsing():
    assert parse_answer_confidence("Sure. Answer: 1,000, Confidence: 7. Done") == ("1,000", 7)
    assert parse_answer_confidence("Answer:Paris,Confidence:9") == ("Paris", 9)
    assert parse_answer_confidence("Answer: x, Confidence: 0.8") is None
    assert parse_answer_confidence("no format here") is None
    assert _doubt("Answer: 1,000, Confidence: 10", prompt=Prompt("q", "1,000")) == pytest.approx(12.5)
    assert _doubt("Answer:  125 , Confidence: 10.") == pytest.approx(12.5)  # sentence-final period is fine


def test_doubt_verifiers():
    q = Prompt("Where is the Eiffel Tower?", "Paris")
    assert _doubt("Answer: paris., Confidence: 10", prompt=q) == pytest.approx(-10.0029, abs=1e-4)
    assert _doubt("Answer: paris., Confidence: 10", prompt=q, verifier="normalized_exact_match") == pytest.approx(12.5)
    q2 = Prompt("Which tower?", "The Eiffel Tower")
    assert _doubt("Answer: eiffel  tower, Confidence: 10", prompt=q2,
                  verifier="normalized_exact_match") == pytest.approx(12.5)
    with pytest.raises(ConfigError, match="unknown verifier 'fuzzy'"):
        _doubt("Answer: 125, Confidence: 8", verifier="fuzzy")


def test_doubt_registered_and_scored_by_name():
    assert REWARDS.get("rewarding_doubt") is rewarding_doubt
    res = score_rewards([("rewarding_doubt", 0.5, {"scale": 1.0})], [P, P],
                        ["Answer: 125, Confidence: 10", "nonsense"], [FINISH_STOP] * 2)
    assert res.total.tolist() == pytest.approx([0.625, -1.5])


def test_answer_confidence_match_is_the_accuracy_of_the_stated_answer():
    from rlfold.rewards.calibration import answer_confidence_match

    completions = ["Answer: 125, Confidence: 3", "Answer: 124, Confidence: 10", "Answer: 125, Confidence: 11",
                   "125", "Answer: 125"]
    got = answer_confidence_match([P] * 5, completions, [FINISH_STOP] * 5)
    # right whatever the confidence (even out of range); no format, no answer
    assert got == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert answer_confidence_match([Prompt("q", "The Beatles")], ["Answer: beatles, Confidence: 5"], [FINISH_STOP],
                                   verifier="normalized_exact_match") == [1.0]

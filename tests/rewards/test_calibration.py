"""Rewarding Doubt (rewards.md 11) and the multi-attempt reward (rewards.md 12b) on worked examples."""

from __future__ import annotations

import math

import pytest

from rlfold.core.errors import ConfigError
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import REWARDS, score_rewards
from rlfold.rewards.calibration import (
    attempt_verifier,
    doubt_score,
    last_boxed,
    multi_attempt,
    parse_answer_confidence,
    rewarding_doubt,
    split_attempts,
)

P = Prompt("58+67=", "125")


def _doubt(completion: str, prompt: Prompt = P, **kw) -> float:
    return rewarding_doubt([prompt], [completion], [FINISH_STOP], **kw)[0]


# ----------------------------------------------------------------------------- Rewarding Doubt


@pytest.mark.parametrize(
    "conf, correct, expected",
    [(8, True, 11.8566), (8, False, 5.3417), (10, True, 12.5), (10, False, -10.0029),
     (0, False, 10.0), (5, True, 10.4954), (11, True, -30.0), (11, False, -30.0)],
)
def test_doubt_table_of_rewards_md(conf, correct, expected):
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


# ----------------------------------------------------------------------------- multi-attempt

CHAT_FB = "<|im_end|>\n<|im_start|>system\nYour answer is incorrect. You have {left} attempts left. Try an alternative.<|im_end|>\n<|im_start|>assistant\n"


def _fb(left: int) -> str:
    return CHAT_FB.replace("{left}", str(left))


def test_multi_attempt_worked_examples_boxed():
    q = Prompt("x+y=1, x-y=3; x-2y?", "4")
    kw = dict(extract="boxed", feedback=CHAT_FB)
    wrong_then_right = "So \\boxed{3}" + _fb(1) + "Actually \\boxed{4}"
    both_wrong = "\\boxed{3}" + _fb(1) + "\\boxed{5}"
    no_box = "I think it is 4" + _fb(1) + "still no box"
    first_right = "\\boxed{4}"
    got = multi_attempt([q] * 4, [wrong_then_right, both_wrong, no_box, first_right], [FINISH_STOP] * 4, **kw)
    assert got == [1.0, -0.5, -1.0, 1.0]
    # a boxed wrong answer in an early attempt keeps -0.5 even if a later attempt runs out of tokens
    assert multi_attempt([q], ["\\boxed{7}" + _fb(2) + "let me think again and"], ["length"], **kw) == [-0.5]


def test_multi_attempt_plain_and_discount():
    fb = "Wrong, try again: "
    comps = ["125", "124" + fb + "125", "124" + fb + "126" + fb + "127", "" + fb + "  "]
    assert multi_attempt([P] * 4, comps, [FINISH_STOP] * 4) == [1.0, 1.0, -0.5, -1.0]
    # the code's discount (overwritten to 1 in the paper's runs): attempt_discount ** attempts_used
    got = multi_attempt([P] * 2, comps[:2], [FINISH_STOP] * 2, attempt_discount=0.5)
    assert got == [0.5, 0.25]


def test_split_attempts_counts_feedback_separators():
    assert split_attempts("a") == ["a"]
    assert split_attempts("aWrong, try again: bWrong, try again: c") == ["a", "b", "c"]
    assert split_attempts("x" + _fb(3) + "y" + _fb(12) + "z", CHAT_FB) == ["x", "y", "z"]
    assert len(split_attempts("1Wrong, try again: ")) == 2  # a last attempt may be empty
    with pytest.raises(ConfigError):
        split_attempts("a", "")


def test_last_boxed_and_attempt_verifier():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None
    judge = attempt_verifier(["125", "46"])
    assert judge(0, " 125 ") and not judge(1, "125") and not judge(1, "")
    judge = attempt_verifier(["4"], extract="boxed")
    assert judge(0, "so \\boxed{4}") and not judge(0, "4")
    with pytest.raises(ConfigError):
        attempt_verifier(["4"], extract="last_number")


def test_multi_attempt_registered():
    assert REWARDS.get("multi_attempt") is multi_attempt
    res = score_rewards([("multi_attempt", 1.0, {"extract": "plain"})], [P], ["1Wrong, try again: 125"], [FINISH_STOP])
    assert res.total.tolist() == [1.0]

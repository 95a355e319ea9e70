"""The multi-attempt reward (arXiv 2503.04808) and its attempt helpers on worked examples."""

from __future__ import annotations

import pytest

from rlfold.core.errors import ConfigError
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import REWARDS, score_rewards
from rlfold.rewards.multi_attempt import attempt_verifier, last_boxed, multi_attempt, split_attempts

P = Prompt("58+67=", "125")


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

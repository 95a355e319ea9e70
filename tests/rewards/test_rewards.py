"""Reward functions on hand examples; score_batch weights; a misbehaving reward is named with its sample."""

from __future__ import annotations

import math

import pytest
import torch

from rlfold.core.errors import RewardError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.rewards import REWARDS, score_batch

P = [Prompt("58+67=", "125"), Prompt("12+34=", "46"), Prompt("9+1=", "10"), Prompt("3+3=", "6")]


def _register(name: str, fn) -> str:
    """Register a throwaway reward once per process (the registry refuses duplicates)."""
    if name not in REWARDS:
        REWARDS.register(name)(fn)
    return name


def _raises_on_12_34(prompts, completions, finishes):
    if any(p.text == "12+34=" for p in prompts):
        raise ZeroDivisionError("division by zero")
    return [1.0] * len(prompts)


def _raises_on_the_batch_only(prompts, completions, finishes):
    if len(prompts) > 1:
        raise RuntimeError("batch too large")
    return [0.5] * len(prompts)


def _nan_on_third(prompts, completions, finishes):
    return [float("nan") if i == 2 else 1.0 for i in range(len(prompts))]


def _inf_everywhere(prompts, completions, finishes):
    return [math.inf] * len(prompts)


def _one_too_few(prompts, completions, finishes):
    return [1.0] * (len(prompts) - 1)


def _returns_none(prompts, completions, finishes):
    return None


def _not_a_number(prompts, completions, finishes):
    return [1.0, "high", 0.0, 0.0][: len(prompts)]


def _tensor_scores(prompts, completions, finishes):
    return torch.arange(len(prompts), dtype=torch.float64)


RAISES = _register("_test_raises_on_12_34", _raises_on_12_34)
BATCH_ONLY = _register("_test_raises_on_batch_only", _raises_on_the_batch_only)
NAN = _register("_test_nan_on_third", _nan_on_third)
INF = _register("_test_inf_everywhere", _inf_everywhere)
TOO_FEW = _register("_test_one_too_few", _one_too_few)
NONE = _register("_test_returns_none", _returns_none)
NOT_NUMBER = _register("_test_not_a_number", _not_a_number)
TENSOR = _register("_test_tensor_scores", _tensor_scores)


# ----- shipped rewards on hand examples -----------------------------------------------------------


@pytest.mark.parametrize(
    "answer, completion, expected",
    [("125", "125", 1.0), ("125", " 125 ", 1.0), ("125", "115", 0.0), ("125", "", 0.0), ("125", "1250", 0.0),
     ("125", "125.0", 0.0), ("-3", "-3", 1.0), (" 7", "7", 1.0)],
)
def test_exact_match(answer, completion, expected):
    fn = REWARDS.get("exact_match")
    assert fn([Prompt("x", answer)], [completion], [FINISH_STOP]) == [expected]


@pytest.mark.parametrize(
    "completion, finish, expected",
    [("125", FINISH_STOP, 1.0), (" 42 ", FINISH_STOP, 1.0), ("-3", FINISH_STOP, 1.0), ("125", FINISH_LENGTH, 0.0),
     ("", FINISH_STOP, 0.0), ("  ", FINISH_STOP, 0.0), ("12a", FINISH_STOP, 0.0), ("1 2", FINISH_STOP, 0.0),
     ("3.5", FINISH_STOP, 0.0), ("+4", FINISH_STOP, 0.0)],
)
def test_format(completion, finish, expected):
    fn = REWARDS.get("format")
    assert fn([Prompt("x", "0")], [completion], [finish]) == [expected]


def test_format_does_not_look_at_the_answer():
    fn = REWARDS.get("format")
    assert fn([Prompt("x", "125")], ["999"], [FINISH_STOP]) == [1.0]


# ----- score_batch --------------------------------------------------------------------------------


def test_score_batch_weights_and_per_function_scores():
    completions = ["125", "46", "11", "6"]
    finishes = [FINISH_STOP, FINISH_LENGTH, FINISH_STOP, FINISH_STOP]
    total, per_fn = score_batch([("exact_match", 1.0), ("format", 0.1)], P, completions, finishes)
    assert per_fn["exact_match"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert per_fn["format"].tolist() == [1.0, 0.0, 1.0, 1.0]
    torch.testing.assert_close(total, torch.tensor([1.1, 1.0, 0.1, 1.1]))
    assert total.dtype == torch.float32


def test_score_batch_negative_and_zero_weights():
    total, _ = score_batch([("exact_match", -2.0), ("format", 0.0)], P, ["125", "x", "10", "6"], [FINISH_STOP] * 4)
    assert total.tolist() == [-2.0, 0.0, -2.0, -2.0]


def test_score_batch_accepts_tensor_scores():
    total, _ = score_batch([(TENSOR, 0.5)], P, ["a"] * 4, [FINISH_STOP] * 4)
    assert total.tolist() == [0.0, 0.5, 1.0, 1.5]


# ----- a misbehaving reward is named, with the sample --------------------------------------------


def _reward_error(name: str) -> str:
    with pytest.raises(RewardError) as info:
        score_batch([("exact_match", 1.0), (name, 1.0)], P, ["125", "46", "10", "6"], [FINISH_STOP] * 4)
    return str(info.value)


def test_reward_that_raises_on_one_sample_is_named_with_the_sample():
    msg = _reward_error(RAISES)
    assert msg == (
        "reward function '_test_raises_on_12_34' raised ZeroDivisionError: division by zero "
        "on sample 1 (prompt '12+34=', completion '46')"
    )


def test_reward_that_raises_on_the_batch_only():
    msg = _reward_error(BATCH_ONLY)
    assert "'_test_raises_on_batch_only' raised RuntimeError: batch too large on the batch" in msg


def test_the_original_exception_is_chained():
    with pytest.raises(RewardError) as info:
        score_batch([(RAISES, 1.0)], P, ["a"] * 4, [FINISH_STOP] * 4)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_nan_reward_names_function_and_sample():
    msg = _reward_error(NAN)
    assert msg.startswith("reward function '_test_nan_on_third' returned nan on sample 2 (prompt '9+1=', completion '10')")
    assert "finite" in msg


def test_inf_reward():
    assert "'_test_inf_everywhere' returned inf on sample 0" in _reward_error(INF)


def test_wrong_number_of_scores():
    assert _reward_error(TOO_FEW).startswith("reward function '_test_one_too_few' returned 3 scores for 4 samples")


def test_reward_returning_none():
    msg = _reward_error(NONE)
    assert "'_test_returns_none' returned NoneType; expected a sequence of 4 floats" in msg


def test_reward_returning_a_non_number():
    msg = _reward_error(NOT_NUMBER)
    assert "'_test_not_a_number' returned 'high' (not a number) on sample 1 (prompt '12+34='" in msg


def test_registry_refuses_duplicates_and_suggests_names():
    with pytest.raises(ValueError, match="already registered"):
        REWARDS.register("exact_match")(lambda p, c, f: [0.0] * len(p))
    with pytest.raises(KeyError, match="did you mean 'exact_match'"):
        REWARDS.get("exact_mach")

"""``choice_match`` and ACRE's four-way consistency reward (arXiv 2510.10104)."""

import pytest

from rlfold.core.errors import RewardError
from rlfold.core.types import Prompt
from rlfold.rewards import score_rewards
from rlfold.rewards.choice import CONSISTENT, acre, choice_match, chosen_value

P = Prompt("A:124 B:135 C:125 D:115 | 58+67=", "C", {"options": [124, 135, 125, 115], "question": "58+67="})


def test_choice_match_reads_the_letter_after_the_trace():
    assert choice_match([P] * 4, ["125 so C", "125 so A", "124 so C", "125 C"], ["stop"] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_chosen_value():
    assert chosen_value(P, "C") == "125" and chosen_value(P, "A", [115, 124, 135, 125]) == "115"
    assert chosen_value(P, "E") is None and chosen_value(P, "") is None


def test_acre_pays_the_four_cases_their_values():
    completions = ["125 so C", "125 so C", "125 so A", "125 so A"]
    extras = [{CONSISTENT: 1.0}, {CONSISTENT: 0.0}, {CONSISTENT: 1.0}, {CONSISTENT: 0.0}]
    assert acre([P] * 4, completions, ["stop"] * 4, rollout_extras=extras) == [1.0, 0.5, 0.0, 0.0]
    got = acre([P] * 4, completions, ["stop"] * 4, rollout_extras=extras, correct_consistent=2.0,
               correct_inconsistent=0.25, wrong_consistent=-0.5, wrong_inconsistent=-1.0)
    assert got == [2.0, 0.25, -0.5, -1.0]
    # with every answer consistent it is choice_match scaled: the GRPO reward at that limit
    same = [{CONSISTENT: 1.0}] * 4
    assert acre([P] * 4, completions, ["stop"] * 4, rollout_extras=same) == choice_match([P] * 4, completions,
                                                                                       ["stop"] * 4)


def test_acre_without_the_follow_up_says_what_to_set():
    with pytest.raises(RewardError, match=r"'acre' raised RewardError.*set rollout.followup.*sample 0"):
        score_rewards([("acre", 1.0)], [P], ["125 so C"], ["stop"], rollout_extras=[{}])

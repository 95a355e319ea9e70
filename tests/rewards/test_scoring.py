"""Scoring: None means unscorable, raising rewards follow the error policy, per-token rewards sum to the score."""

import math

import pytest
import torch

from rlfold.core.errors import RewardError
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import REWARDS, score_rewards

P = [Prompt(text=f"{i}+1=", answer=str(i + 1)) for i in range(4)]
F = [FINISH_STOP] * 4


@pytest.fixture
def parts():
    @REWARDS.register("t_none_odd")
    def none_odd(prompts, completions, finishes):
        """Scores 1 on even rows, None on odd rows (test)."""
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    @REWARDS.register("t_raise_on_x")
    def raise_on_x(prompts, completions, finishes):
        """Raises on completions containing x (test)."""
        out = []
        for c in completions:
            if "x" in c:
                raise ValueError("cannot score x")
            out.append(0.5)
        return out

    @REWARDS.register("t_per_token")
    def per_token(prompts, completions, finishes):
        """One reward per character (test)."""
        return [[0.1] * len(c) for c in completions]

    yield
    for name in ("t_none_odd", "t_raise_on_x", "t_per_token"):
        REWARDS.unregister(name)


def test_none_is_unscorable_and_counted(parts):
    res = score_rewards([("t_none_odd", 2.0)], P, ["a", "b", "c", "d"], F)
    assert res.total[0].item() == 2.0 and math.isnan(res.total[1].item()) and res.total[2].item() == 2.0
    assert res.metrics["reward/t_none_odd/none"] == 2.0
    # another function scoring every row makes every row scorable; the None term contributes nothing
    res = score_rewards([("t_none_odd", 2.0), ("exact_match", 1.0)], P, ["1", "x", "3", "x"], F)
    assert res.total.tolist() == [3.0, 0.0, 3.0, 0.0]


def test_raising_reward_stops_or_scores_none_by_policy(parts):
    comps = ["a", "x", "b", "x"]
    with pytest.raises(RewardError) as err:
        score_rewards([("t_raise_on_x", 1.0)], P, comps, F)
    assert "t_raise_on_x" in str(err.value) and "sample 1" in str(err.value) and "cannot score x" in str(err.value)
    res = score_rewards([("t_raise_on_x", 1.0)], P, comps, F, on_error="none")
    assert res.total[0].item() == 0.5 and math.isnan(res.total[1].item()) and math.isnan(res.total[3].item())
    assert res.metrics["reward/t_raise_on_x/errors"] == 2.0


def test_per_token_rewards_sum_to_the_score(parts):
    res = score_rewards([("t_per_token", 2.0), ("exact_match", 1.0)], P, ["1", "22", "3", "444"], F)
    assert res.token_scores is not None and res.token_scores.shape == (4, 3)
    torch.testing.assert_close(res.token_scores[1], torch.tensor([0.2, 0.2, 0.0]))
    assert res.per_fn["t_per_token"][3].item() == pytest.approx(0.3)
    assert res.total[0].item() == pytest.approx(1.2)  # 2 x 0.1 + exact match 1

"""The deliberately hackable proxy of the χ² demonstration agrees with final_answer near the base, not far from it."""

import pytest
import torch

from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.rewards import REWARDS



def test_length_bonus_proxy_values():
    fn = REWARDS.get("length_bonus_proxy")
    p = Prompt(text="12+13=", answer="25")
    comps = ["25", "25. check 25. 25", "25. check 25. 25. wai", "24", "125"]
    lengths = torch.tensor([2, 12, 24, 2, 3])
    got = fn([p] * 5, comps, [FINISH_STOP] * 4 + [FINISH_STOP], response_lengths=lengths, cap=24, bonus=1.0)
    assert got == pytest.approx([1 + 2 / 24, 1 + 12 / 24, 2.0, 0.0, 0.0])
    # a response cut at the limit still earns the full proxy; the true reward (final_answer) gives it 0
    cut = fn([p], ["25. check 25. 2"], [FINISH_LENGTH], response_lengths=torch.tensor([30]), cap=24, bonus=0.5)
    assert cut == [1.5]
    assert REWARDS.get("final_answer")([p], ["25. check 25. 2"], [FINISH_LENGTH]) == [0.0]

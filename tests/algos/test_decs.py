"""DECS per-position group-normalised token advantage against a hand example (arXiv 2509.25827, Eq. 10)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlfold.algos import ADVANTAGES
from rlfold.core.registry import needed_inputs


def test_registered_with_needs() -> None:
    fn = ADVANTAGES.get("decs")
    assert needed_inputs(fn) == ("token_rewards",)


def test_hand_example() -> None:
    # group 7: rows a, b, c (lengths 3, 3, 1); group 3: row d alone (length 2)
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    tr = torch.tensor([[1.1, 1.1, 0.9], [1.1, 1.0, 1.0], [0.0, 5.0, 5.0], [1.1, 1.1, 9.0]])
    adv, metrics = ADVANTAGES.get("decs")(torch.zeros(4), torch.tensor([7, 7, 7, 3]), mask, token_rewards=tr,
                                          padding="excluded")
    s3, s2 = 1 / math.sqrt(3), 1 / math.sqrt(2)
    expected = torch.tensor([[s3, s2, -s2], [s3, -s2, s2], [-2 * s3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-4)
    # position 0 of the group against statistics (unbiased std, eps 1e-6)
    col = [1.1, 1.1, 0.0]
    ref = (col[2] - statistics.fmean(col)) / (statistics.stdev(col) + 1e-6)
    assert adv[2, 0].item() == pytest.approx(ref, rel=1e-5)
    # row d is alone (fewer than 2 valid rows at every position); row c's position 0 is paired
    assert metrics["frac_tokens_unpaired"] == pytest.approx(2 / 9)


def test_constant_positions_and_masked_zero() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    tr = torch.tensor([[1.1, 1.0, 3.0], [1.1, 1.0, 2.0]])
    adv, _ = ADVANTAGES.get("decs")(torch.zeros(2), torch.tensor([0, 0]), mask, token_rewards=tr,
                                    padding="excluded")
    assert (adv == 0).all()


def test_padding_in_group_takes_the_sequence_reward() -> None:
    # Eq. 8: a finished row's padding carries r_+ 1[correct] into the position's group statistics.
    # Rows: a correct, finished after 1 token; b correct, post-NRP tokens 0.9; c wrong (0 everywhere).
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])
    tr = torch.tensor([[1.1, 0.0, 0.0], [1.1, 0.9, 0.9], [0.0, 0.0, 0.0]])
    seq = torch.tensor([1.1, 1.1, 0.0])
    adv, metrics = ADVANTAGES.get("decs")(seq, torch.zeros(3, dtype=torch.long), mask, token_rewards=tr)
    for j, col in enumerate([[1.1, 1.1, 0.0], [1.1, 0.9, 0.0], [1.1, 0.9, 0.0]]):
        mean, sd = statistics.fmean(col), statistics.stdev(col)
        for i in range(3):
            want = (col[i] - mean) / (sd + 1e-6) if mask[i, j] else 0.0
            assert adv[i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    # position 1: b's redundant token is compared with a's r_+ padding too, which lowers its advantage
    excl, _ = ADVANTAGES.get("decs")(seq, torch.zeros(3, dtype=torch.long), mask, token_rewards=tr, padding="excluded")
    assert adv[1, 1] < excl[1, 1] - 0.3
    assert metrics["frac_tokens_unpaired"] == 0.0


def test_padding_excluded_differs_only_where_rows_finished() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    tr = torch.tensor([[1.1, 1.0, 0.9], [1.1, 0.9, 1.0]])
    fn = ADVANTAGES.get("decs")
    a, _ = fn(torch.full((2,), 1.1), torch.zeros(2, dtype=torch.long), mask, token_rewards=tr)
    b, _ = fn(torch.full((2,), 1.1), torch.zeros(2, dtype=torch.long), mask, token_rewards=tr, padding="excluded")
    assert torch.equal(a, b)  # no padding: the two conventions agree


def test_with_decs_shaping() -> None:
    from rlfold.core.types import Prompt
    from rlfold.rewards.shaping import SHAPINGS, ShapingInput

    texts = ["42.\nmore", "so 42.\nmore", "no."]
    lengths = [len(t) for t in texts]
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    inp = ShapingInput(scores=torch.tensor([1.0, 1.0, 0.0]), correct=torch.tensor([1.0, 1.0, 0.0]),
                       lengths=torch.tensor(lengths), truncated=torch.zeros(3, dtype=torch.bool),
                       group_ids=torch.zeros(3, dtype=torch.long),
                       prompts=[Prompt(text="q", answer="42")] * 3, completions=texts, max_len=20,
                       response_mask=mask)
    shaped = SHAPINGS.get("decs")(inp, state={})
    adv, _ = ADVANTAGES.get("decs")(shaped.scores, inp.group_ids, mask, token_rewards=shaped.token_rewards)
    assert (adv[2, : lengths[2]] < 0).all()          # incorrect row below the group at every position
    assert adv[0, 0] > 0 and adv[0, 5] < adv[1, 5]  # row 0 is already past its NRP at position 5
    assert (adv[mask == 0] == 0).all()

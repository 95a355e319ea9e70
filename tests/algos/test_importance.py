"""The behaviour log-ratio and the band of importance weights shared by ``tis`` and ``decoupled_ppo``."""

import math

import pytest
import torch

from rlfold.algos.importance import behaviour_log_ratio, bound_weights


def test_log_ratio_is_zero_off_the_valid_tokens_and_at_least_float32():
    old = torch.tensor([[0.6, 0.5, 0.1]], dtype=torch.bfloat16).log()
    beh = torch.tensor([[0.5, 0.2, float("nan")]], dtype=torch.bfloat16).log()
    valid = torch.tensor([[True, True, False]])
    lr = behaviour_log_ratio(old, beh, valid, "who")
    assert lr.dtype == torch.float32 and lr[0, 2].item() == 0.0
    assert lr[0, 1].item() == pytest.approx(float(old[0, 1].float() - beh[0, 1].float()))


def test_a_nan_on_a_valid_token_names_the_caller_and_the_position():
    old, beh = torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match=r"decoupled_ppo: .*\[\[0, 1\]\]"):
        behaviour_log_ratio(old, beh, torch.ones(1, 2, dtype=torch.bool), "decoupled_ppo")


def test_truncate_clamps_to_the_band_and_mask_zeroes_outside_it():
    w = torch.tensor([0.25, 1.2, 2.5])
    t, inside = bound_weights(w, 0.5, 2.0, "truncate")
    assert t.tolist() == [0.5, pytest.approx(1.2), 2.0] and inside.tolist() == [False, True, False]
    m, _ = bound_weights(w, 0.0, 2.0, "mask")
    assert m.tolist() == [0.25, pytest.approx(1.2), 0.0] and not math.isnan(m.sum().item())

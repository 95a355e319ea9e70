"""The registered CE-U loss: the worked numbers of methods/preference.md §14 per undesirable row; NLL on desirable rows."""

import math

import pytest
import torch

from rlfold.algos.preference import PreferenceLogps, spec_of
from rlfold.algos.preference.unpaired import TokenLogits
from rlfold.core.registry import PREFERENCE_LOSSES


def _lp(labels):
    b = len(labels)
    return PreferenceLogps(policy=torch.zeros(b, 1), reference=torch.zeros(b, 1), lengths=torch.ones(b, 1),
                           scores=torch.tensor(labels, dtype=torch.float32).view(b, 1))


def test_undesirable_row_gets_ce_u_and_desirable_row_its_nll():
    z = torch.tensor([[[2.0, 1.0, 0.0]], [[2.0, 1.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    loss = PREFERENCE_LOSSES.get("ce_u")(_lp([0, 1]), ignore_first_n=0, retain_weight=0.5,
                                         token_logits=TokenLogits(z, torch.tensor([[0], [0]]), torch.ones(2, 1)))
    p0 = math.exp(2) / (math.exp(2) + math.exp(1) + 1)
    assert loss[0].item() == pytest.approx(1.676547, abs=1e-6)
    assert loss[1].item() == pytest.approx(0.5 * -math.log(p0), abs=1e-9)
    loss[0].backward()
    assert z.grad[0, 0].tolist() == pytest.approx([0.665241, -0.486330, -0.178911], abs=1e-6)
    assert spec_of(PREFERENCE_LOSSES.get("ce_u")) .reference is False
    assert spec_of(PREFERENCE_LOSSES.get("ce_u")).needs == ("token_logits",)


def test_ignore_first_n_drops_leading_tokens():
    z = torch.randn(1, 3, 5, dtype=torch.float64)
    labels, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3)
    f = PREFERENCE_LOSSES.get("ce_u")
    full = f(_lp([0]), ignore_first_n=0, token_logits=TokenLogits(z, labels, mask))
    tail = f(_lp([0]), ignore_first_n=0, token_logits=TokenLogits(z[:, 1:], labels[:, 1:], mask[:, 1:]))
    skipped = f(_lp([0]), ignore_first_n=1, token_logits=TokenLogits(z, labels, mask))
    assert skipped.item() == pytest.approx(tail.item(), abs=1e-12)
    assert skipped.item() != pytest.approx(full.item(), abs=1e-6)

"""Learning-rate schedule: linear warm-up, then constant / cosine / linear decay, by hand."""

import math

import pytest
import torch

from rlfold.trainers.schedule import lr_factor, make_scheduler


def test_warmup_then_constant():
    assert [lr_factor(s, 10, 4, "constant", 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_and_linear_decay_by_hand():
    # total 10, warm-up 2: decay progress (s - 2) / 8
    assert lr_factor(2, 10, 2, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine", 0.0) == pytest.approx(0.5)  # half way: (1 + cos(pi/2)) / 2
    assert lr_factor(4, 10, 2, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(6, 10, 2, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear", 0.2) == pytest.approx(0.2 + 0.8 * 0.5)


def test_scheduler_drives_the_optimizer():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = make_scheduler(opt, total=4, warmup=2, kind="linear", min_ratio=0.0)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up (1/2, 2/2), then linear decay over the remaining 2 steps: progress 0, 1/2
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])

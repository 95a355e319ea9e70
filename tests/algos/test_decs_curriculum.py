"""DECS kappa curriculum (arXiv 2509.25827, Eq. 11) as the ``decs_curriculum`` group filter."""

from __future__ import annotations

import pytest
import torch

from rlfold.algos import GROUP_FILTERS
from rlfold.algos.decs import decs_kappa
from rlfold.algos.group_filters import GroupFilterInput, Kept
from rlfold.core.registry import needed_inputs


def test_kappa_update_and_clip() -> None:
    assert decs_kappa(0.8, 0.6, 0.5, 0.2, 1.0) == pytest.approx(0.82)
    assert decs_kappa(0.8, 0.9, 0.5, 0.2, 0.85) == pytest.approx(0.85)   # capped by the natural easy share
    assert decs_kappa(0.05, 0.0, 0.5, 0.2, 1.0) == 0.0                  # floored at 0
    assert decs_kappa(0.7, 0.4, 0.4, 0.2, 1.0) == pytest.approx(0.7)    # R unchanged: kappa unchanged


def _round(acc: list[float], step: int, nrp: float | None = 0.3, rnd: int = 0) -> GroupFilterInput:
    metrics = {} if nrp is None else {"shaping/decs/nrp_ratio": nrp}
    return GroupFilterInput(scores=torch.tensor(acc), accuracy=torch.tensor(acc),
                            group_ids=torch.arange(len(acc) // 2).repeat_interleave(2), step=step, round=rnd,
                            metrics=metrics)


def test_quota_over_rounds_and_steps() -> None:
    fn = GROUP_FILTERS.get("decs_curriculum")
    assert needed_inputs(fn) == ("state",)
    state: dict = {}
    # groups: 0 easy, 1 easy, 2 mixed, 3 all wrong. natural share 0.5; kappa = 0.5 + 0.2 (0.3 - 0.5) = 0.46
    out = fn(_round([1, 1, 1, 1, 1, 0, 0, 0], step=0), state=state)
    assert isinstance(out, Kept)
    assert out.keep.tolist() == [True, True, False, False, True, True, False, False]  # quota floor(0.46 * 4) = 1
    assert out.metrics["decs/kappa"] == pytest.approx(0.46)
    assert out.metrics["decs/kappa_natural"] == pytest.approx(0.5)
    assert out.metrics["decs/easy_dropped"] == 1.0
    # a refill round of the same step: the quota is spent, kappa is not updated again
    out = fn(_round([1, 1, 0, 1, 1, 1, 0, 0], step=0, nrp=0.9, rnd=1), state=state)
    assert out.keep.tolist() == [False, False, True, True, False, False, False, False]
    assert out.metrics["decs/kappa"] == pytest.approx(0.46)
    assert out.metrics["decs/easy_dropped"] == 3.0  # over the step's rounds
    # next step: R rises 0.3 -> 0.8, kappa = 0.46 + 0.1 = 0.56, natural share 0.75: quota floor(2.24) = 2
    out = fn(_round([1, 1, 1, 1, 1, 1, 0, 1], step=1, nrp=0.8), state=state)
    assert out.metrics["decs/kappa"] == pytest.approx(0.56)
    assert out.keep.tolist() == [True, True, True, True, False, False, True, True]


def test_no_correct_row_keeps_r_and_missing_metric_is_named() -> None:
    fn = GROUP_FILTERS.get("decs_curriculum")
    state: dict = {}
    out = fn(_round([0, 0, 0, 0], step=0, nrp=None), state=state)
    assert not out.keep.any()
    assert state["r_prev"] == 0.5 and state["kappa"] == 0.0
    with pytest.raises(ValueError, match="shaping/decs/nrp_ratio"):
        fn(_round([1, 1, 0, 0], step=1, nrp=None), state=state)

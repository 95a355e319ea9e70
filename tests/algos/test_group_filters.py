"""Group filters: DAPO dynamic sampling (arXiv 2503.14476) as a registered part."""

from __future__ import annotations

import inspect

import pytest
import torch

from rlfold.algos.group_filters import GROUP_FILTERS, GroupFilterInput, dynamic_sampling, filter_groups


def _ids(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def test_filter_groups_hand_example() -> None:
    keep = filter_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), _ids(0, 0, 1, 1, 2, 2))
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, False, True, True, False, False]


def test_filter_groups_singletons_interleaving_and_errors() -> None:
    keep = filter_groups(torch.tensor([0.3, 1.0, 0.5, 1.0, 0.0]), _ids(9, 4, 4, 5, 9))
    assert keep.tolist() == [True, True, True, False, True]  # group 5 is a singleton
    keep = filter_groups(torch.tensor([True, False, True, True]), _ids(0, 0, 1, 1))
    assert keep.tolist() == [True, True, False, False]
    assert filter_groups(torch.zeros(0), _ids()).shape == (0,)
    with pytest.raises(ValueError, match="group_ids"):
        filter_groups(torch.zeros(3), _ids(0, 0))
    with pytest.raises(ValueError, match="NaN"):
        filter_groups(torch.tensor([0.0, float("nan")]), _ids(0, 0))


def test_dynamic_sampling_is_registered_and_judges_by_its_metric() -> None:
    assert GROUP_FILTERS.get("dynamic_sampling") is dynamic_sampling
    assert inspect.signature(dynamic_sampling).parameters["metric"].default == "acc"
    # group 0: accuracy varies, score constant; group 1: accuracy constant, score varies
    inp = GroupFilterInput(scores=torch.tensor([0.5, 0.5, 0.2, 0.9]), accuracy=torch.tensor([1.0, 0.0, 1.0, 1.0]),
                           group_ids=_ids(0, 0, 1, 1))
    assert dynamic_sampling(inp).tolist() == [True, True, False, False]
    assert dynamic_sampling(inp, metric="reward").tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="metric"):
        dynamic_sampling(inp, metric="loss")


def test_unscorable_accuracy_counts_as_wrong() -> None:
    inp = GroupFilterInput(scores=torch.zeros(4), accuracy=torch.tensor([float("nan"), 0.0, float("nan"), 1.0]),
                           group_ids=_ids(0, 0, 1, 1))
    assert dynamic_sampling(inp).tolist() == [False, False, True, True]

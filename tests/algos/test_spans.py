"""after_marker (Rewarding Doubt's confidence-only training, arXiv 2503.02623) against hand-built masks."""

from __future__ import annotations

import pytest
import torch

from rlfold.algos import SELECTIONS
from rlfold.algos.selection import SelectionInput
from rlfold.algos.spans import after_marker, marker_cuts
from rlfold.core.registry import needed_inputs


def _inp(mask: torch.Tensor) -> SelectionInput:
    n, r = mask.shape
    return SelectionInput(rewards=torch.zeros(n), group_ids=torch.zeros(n, dtype=torch.long), response_mask=mask,
                          advantages=torch.zeros(n, r), truncated=torch.zeros(n, dtype=torch.bool),
                          old_logprobs=torch.zeros(n, r), behaviour_logprobs=torch.zeros(n, r))


def _char_tokens(texts: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per character (plus a stop token that decodes to nothing); mask and char ends."""
    mask = torch.zeros(len(texts), width)
    ends = torch.zeros(len(texts), width, dtype=torch.long)
    for i, t in enumerate(texts):
        n = len(t) + 1
        mask[i, :n] = 1
        ends[i, : len(t)] = torch.arange(1, len(t) + 1)
        ends[i, len(t):] = len(t)
    return mask, ends


def test_registered_with_its_inputs_and_cites_the_paper() -> None:
    fn = SELECTIONS.get("after_marker")
    assert fn is after_marker
    assert needed_inputs(fn) == ("response_texts", "response_char_ends")
    assert "2503.02623" in (fn.__doc__ or "").splitlines()[0]


def test_marker_cuts_first_last_absent() -> None:
    texts = ["a, C: 8", "no marker", "C: 1 C: 2"]
    assert marker_cuts(texts, "C:") == [5, -1, 2]
    assert marker_cuts(texts, "C:", "last") == [5, -1, 7]


def test_keeps_only_the_tokens_after_the_marker() -> None:
    texts = ["Answer: 12, Confidence: 8", "Answer: 3", "Confidence: 1 Confidence: 2"]
    mask, ends = _char_tokens(texts, 30)
    sel = after_marker(_inp(mask), response_texts=texts, response_char_ends=ends, marker="Confidence:")
    tm = sel.token_mask
    # row 0: "Confidence:" ends at character 23; tokens 23 (" "), 24 ("8") and the stop token 25 stay
    assert tm[0].nonzero().flatten().tolist() == list(range(23, 30))
    assert (tm[0] * mask[0]).nonzero().flatten().tolist() == [23, 24, 25]
    # row 1 has no marker: it trains whole (missing: train)
    assert torch.equal(tm[1] * mask[1], mask[1])
    # row 2: first occurrence, so " 1 Confidence: 2" and the stop token train
    assert (tm[2] * mask[2]).nonzero().flatten().tolist() == list(range(11, 28))
    valid = float(mask.sum())
    assert sel.metrics["selection/marker_found_frac"] == pytest.approx(2 / 3)
    assert sel.metrics["selection/after_marker_token_frac"] == pytest.approx((3 + 10 + 17) / valid)


def test_last_occurrence_and_dropping_rows_without_the_marker() -> None:
    texts = ["Confidence: 1 Confidence: 2", "Answer: 3"]
    mask, ends = _char_tokens(texts, 30)
    sel = after_marker(_inp(mask), response_texts=texts, response_char_ends=ends, marker="Confidence:",
                       occurrence="last", missing="drop")
    assert (sel.token_mask[0] * mask[0]).nonzero().flatten().tolist() == [25, 26, 27]
    assert sel.token_mask[1].sum() == 0


def test_a_token_straddling_the_marker_end_is_kept() -> None:
    # tokens "Conf", "idence: 8", stop: the second token holds " 8", so it trains
    texts = ["Confidence: 8"]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    ends = torch.tensor([[4, 13, 13, 13]])
    sel = after_marker(_inp(mask), response_texts=texts, response_char_ends=ends, marker="Confidence:")
    assert sel.token_mask.tolist() == [[0.0, 1.0, 1.0, 1.0]]


def test_shape_mismatch_is_refused() -> None:
    mask, ends = _char_tokens(["a"], 4)
    with pytest.raises(ValueError, match="after_marker"):
        after_marker(_inp(mask), response_texts=["a", "b"], response_char_ends=ends, marker="x")

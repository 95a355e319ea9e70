"""bench/choice_binding.py: the letter probabilities after the correct trace, and what they show of the shipped base."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import choice_binding as cb  # noqa: E402

from rlfold.models import load_model_and_tokenizer  # noqa: E402
from rlfold.tasks.base import TASKS  # noqa: E402


def test_the_shipped_base_picks_its_letter_by_position_not_by_its_trace():
    """The finding docs/claims.md reports for the acre row: after the correct trace the sum's letter gets
    what every other non-"A" letter gets (chance), while "A" gets the planted bias; a base that binds its
    letter to its trace would fail this (and the claims row would need re-measuring)."""
    model, tok = load_model_and_tokenizer("tiny-choice-arith")
    prompts = [p for p in TASKS.get("choice_arith")(held_out_size=60).held_out if p.answer != "A"]
    probs = cb.letter_probabilities(model, tok, prompts)
    assert probs.shape == (len(prompts), 4) and bool((probs.sum(-1) <= 1 + 1e-6).all())
    gold = torch.tensor([cb.LETTERS.index(p.answer) for p in prompts])
    summary = cb.binding_summary(probs, gold)
    on_gold, others = summary["gold"].mean(), summary["other"].mean()
    assert abs(float(on_gold - others)) < 0.03, (on_gold, others)
    assert float(summary["A"].mean()) > 0.5

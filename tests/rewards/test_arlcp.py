"""ARLCP (arXiv 2602.12113) against worked numbers."""

from __future__ import annotations

import pytest
import torch
from shaping_inputs import make_input, run_part

from rlfold.rewards.arlcp import ARLCP_KEYWORDS, arlcp_rewards, reflection_count


def test_reflection_count_keywords() -> None:
    assert len(ARLCP_KEYWORDS) == 13
    text = "Wait, but HOLD ON. Let me double-check; recheck the buttons. Hmm, oh! Alternatively, however"
    # wait, but, hold on, double-check (once), hmm, oh, alternatively, however; not recheck / buttons
    assert reflection_count(text) == 8
    assert reflection_count("Think again and verify. Another thought: check.") == 4
    assert reflection_count("wait wait", keywords=["hmm"]) == 0
    assert reflection_count("wait wait", keywords=[]) == 0


def test_arlcp_worked_example() -> None:
    texts = ["wait " * 10, "wait " * 50, "wait " * 90, "wait " * 3]
    inp = make_input(texts, "1", [1, 1, 1, 0], lengths=[1000, 2000, 3000, 10])
    out = run_part("arlcp", inp)
    assert out.scores.tolist() == pytest.approx([0.946212, 0.900000, 0.853788, 0.0], abs=1e-6)
    assert out.token_rewards is None
    assert out.metrics["shaping/arlcp/w1_mean_correct"] == pytest.approx(0.10)
    assert out.metrics["shaping/arlcp/frac_correct"] == pytest.approx(0.75)


def test_arlcp_single_and_no_correct_groups() -> None:
    # group 0: one correct row -> mean = own value, std 1 -> both sigmoids 0.5 -> 1 - 0.2 * 0.5
    # group 1: nobody correct -> all 0 (the original scores are replaced)
    inp = make_input(["wait", "hmm", "x", "y"], "1", [1, 0, 0, 0], [0, 0, 1, 1], lengths=[5, 9, 3, 3],
               scores=[2.0, 0.5, 0.5, 0.5])
    assert run_part("arlcp", inp).scores.tolist() == pytest.approx([0.9, 0.0, 0.0, 0.0])


def test_arlcp_tiers_and_options() -> None:
    refl = torch.tensor([40.0, 41.0, 80.0, 81.0])
    _, w1 = arlcp_rewards(refl, torch.ones(4), torch.ones(4, dtype=torch.bool), torch.arange(4))
    assert w1.tolist() == pytest.approx([0.05, 0.10, 0.10, 0.15])
    _, w1 = arlcp_rewards(refl, torch.ones(4), torch.ones(4, dtype=torch.bool), torch.arange(4),
                          tiers=[50], w1s=[0.0, 0.3], w_total=0.3)
    assert w1.tolist() == pytest.approx([0.0, 0.0, 0.3, 0.3])
    with pytest.raises(ValueError, match="len"):
        run_part("arlcp", make_input(["a"], "1", [1]), tiers=(40,), w1s=(0.05, 0.1, 0.15))
    with pytest.raises(ValueError, match="increasing"):
        run_part("arlcp", make_input(["a"], "1", [1]), tiers=(80, 40))
    with pytest.raises(ValueError, match="w_total"):
        run_part("arlcp", make_input(["a"], "1", [1]), w_total=0.1)


def test_arlcp_invariants_random() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 24
    words = ["wait", "so", "but", "then", "hmm", "x"]
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 6, (int(k),), generator=gen))
             for k in torch.randint(1, 200, (n,), generator=gen)]
    correct = torch.randint(0, 2, (n,), generator=gen).tolist()
    groups = [i // 6 for i in range(n)]
    out = run_part("arlcp", make_input(texts, "1", correct, groups, lengths=[len(t) for t in texts]))
    for s, c in zip(out.scores.tolist(), correct):
        assert (s == 0.0) if not c else (0.8 < s < 1.0)

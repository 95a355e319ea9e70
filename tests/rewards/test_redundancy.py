"""Internal x external redundancy (arXiv 2508.02178) against worked numbers."""

from __future__ import annotations

import pytest
import torch
from shaping_inputs import make_input, run_part

from rlfold.rewards.redundancy import (
    EMBEDDERS,
    first_correct_solution_end,
    internal_penalty,
    internal_redundancy,
    redundancy_reward,
    sigma_k,
    trigram_embedder,
)
from rlfold.rewards.text_spans import split_sentences


def test_redundancy_formula_worked_numbers() -> None:
    expected = {0.3: 0.99967, 0.5: 0.98197, 0.6: 0.88050, 0.7: 0.49876, 0.8: 0.11702}
    for ird, p in expected.items():
        assert internal_penalty(ird) == pytest.approx(p, abs=1e-5)
    assert internal_penalty(0.0) == pytest.approx(1.0)
    assert internal_penalty(1.0) == pytest.approx(0.0, abs=1e-12)
    assert redundancy_reward(0.6, 0.2) == pytest.approx(0.704402, abs=1e-6)
    assert redundancy_reward(0.6, 0.2, correct=False) == 0.0
    assert sigma_k(0.3) == pytest.approx(0.5)


def test_sentences_and_fcs() -> None:
    text = "We get 12.5 first. Then 120 appears!\nSo x = 12. Done? Yes 12."
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["We get 12.5 first.", "Then 120 appears!", "So x = 12.",
                                             "Done?", "Yes 12."]
    assert first_correct_solution_end(text, "12") == text.index("So x = 12.") + len("So x = 12.")
    assert first_correct_solution_end(text, "99") is None
    assert first_correct_solution_end(text, " ") is None
    assert first_correct_solution_end("x=-3 ok. y", "-3") == len("x=-3 ok.")


def test_trigram_embedder() -> None:
    e = trigram_embedder(["Hello world", "hello   WORLD", "", "completely different text"])
    assert e.shape == (4, 1024)
    assert torch.allclose(e[0], e[1])
    assert e[0].norm().item() == pytest.approx(1.0) and e[2].abs().sum().item() == 0.0
    assert torch.equal(e, trigram_embedder(["Hello world", "hello   WORLD", "", "completely different text"]))
    assert (e[0] @ e[3]).item() < 0.5
    assert "trigram" in EMBEDDERS


def test_internal_redundancy_windows() -> None:
    seen: list[list[str]] = []

    def onehot(texts: list[str]) -> torch.Tensor:
        seen.append(list(texts))
        return torch.eye(len(texts))

    sentences = [f"s{i}." for i in range(20)]
    assert internal_redundancy(sentences, onehot) == 0.0
    assert len(seen[-1]) == 19 and seen[-1][0] == "s0. s1."  # w = 2, t = 1
    # 3 windows, adjacent cosines 1 and -1 -> clamped [1, 0] -> IRD 0.5
    vecs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert internal_redundancy(["a", "b", "c"], lambda t: vecs[: len(t)], alpha=0.34, beta=0.34) == 0.5
    assert internal_redundancy(["only one"], onehot) == 0.0


def test_redundancy_part_end_to_end() -> None:
    EMBEDDERS.register("test_onehot")(lambda texts: torch.eye(len(texts)))
    EMBEDDERS.register("test_same")(lambda texts: torch.ones(len(texts), 3))
    try:
        texts = ["Let x be 5. So x + 7 = 12. Check: 12 is right. Yes 12.", "It is 12.", "I think 13. Sure."]
        inp = make_input(texts, "12", [1, 0, 1])
        out = run_part("redundancy", inp, embedder="test_onehot")
        fcs = len("Let x be 5. So x + 7 = 12.")
        erd = (len(texts[0]) - fcs) / len(texts[0])
        assert out.scores.tolist() == pytest.approx([1.0 - erd, 0.0, 1.0])  # row 2: FCS not found -> ERD 0
        assert out.metrics["shaping/redundancy/fcs_found"] == pytest.approx(0.5)
        same = run_part("redundancy", inp, embedder="test_same", alpha=0.5, beta=0.5)
        assert same.scores.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # IRD 1 -> p_int 0
        tokens = run_part("redundancy", inp, embedder="test_onehot", unit="tokens")
        assert tokens.scores.tolist() == pytest.approx(out.scores.tolist())
        # the CoT is the thinking segment when </think> is present
        think = "<think>So 12. More words here.</think>Answer 12."
        t_out = run_part("redundancy", make_input([think], "12", [1]), embedder="test_onehot")
        cot = "So 12. More words here."
        assert t_out.scores.item() == pytest.approx(1.0 - (len(cot) - len("So 12.")) / len(cot))
        assert run_part("redundancy", make_input([think], "12", [1])).scores.item() > 0  # default trigram embedder
    finally:
        EMBEDDERS.unregister("test_onehot")
        EMBEDDERS.unregister("test_same")
    with pytest.raises(ValueError, match="beta"):
        run_part("redundancy", inp, alpha=0.05, beta=0.1)
    with pytest.raises(ValueError, match="unit"):
        run_part("redundancy", inp, unit="words")

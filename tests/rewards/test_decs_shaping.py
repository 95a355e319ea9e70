"""DECS token rewards (arXiv 2509.25827) against worked numbers."""

from __future__ import annotations

import pytest
import torch
from shaping_inputs import make_input, padded_mask, run_part

from rlfold.rewards.decs_shaping import NRP_DETECTORS, decs_post_nrp_value, first_chunk_with_answer
from rlfold.rewards.text_spans import think_span


def test_decs_post_nrp_value_worked() -> None:
    assert decs_post_nrp_value(4000, 16384) == pytest.approx(0.975586, abs=1e-6)
    assert decs_post_nrp_value(8000, 16384) == pytest.approx(0.951172, abs=1e-6)


def test_first_chunk_with_answer() -> None:
    text = "Let me compute.\nSo the answer is 42. Wait, 42 again.\n"
    assert first_chunk_with_answer(text, "42") == len("Let me compute.\nSo the answer is 42. ")
    assert first_chunk_with_answer(text, " 42 ") == len("Let me compute.\nSo the answer is 42. ")
    assert first_chunk_with_answer(text, "7") is None
    assert first_chunk_with_answer(text, "") is None
    assert first_chunk_with_answer(text, "42", separators=("\n",)) == len(text)
    assert first_chunk_with_answer("no separators 42", "42") == len("no separators 42")
    assert "first_chunk_with_answer" in NRP_DETECTORS


def test_decs_worked_example_char_level() -> None:
    head = "Let me compute.\nSo the answer is 42.\n"
    filler = "Wait, let me double check. "

    def text(n: int) -> str:
        return (head + filler * n)[:n]

    texts = [text(4000), text(300), text(8000)]
    lengths = [4000, 300, 8000]
    inp = make_input(texts, "42", [1, 0, 1], lengths=lengths, mask=padded_mask(lengths))
    out = run_part("decs", inp)
    tr = out.token_rewards
    assert tr.shape == (3, 8000)
    k = len(head)
    assert torch.allclose(tr[0, :k], torch.full((k,), 1.1))
    assert torch.allclose(tr[0, k:4000], torch.full((4000 - k,), 0.975586), atol=1e-6)
    assert (tr[0, 4000:] == 0).all()
    assert (tr[1] == 0).all()
    assert torch.allclose(tr[2, k:], torch.full((8000 - k,), 0.951172), atol=1e-6)
    assert out.scores.tolist() == pytest.approx([1.1, 0.0, 1.1])
    assert out.metrics["shaping/decs/nrp_found"] == 1.0
    assert out.metrics["shaping/decs/nrp_ratio"] == pytest.approx((k / 4000 + k / 8000) / 2)


def test_decs_no_nrp_and_think_segment() -> None:
    think = "<think>a\nx=7\nmore\nmore</think>The answer is 7."
    texts = ["I guess 5.", think, "7. And more"]
    lengths = [len(t) for t in texts]
    inp = make_input(texts, "7", [1, 1, 1], lengths=lengths, max_len=100, mask=padded_mask(lengths))
    out = run_part("decs", inp, r_plus=2.0, r_zero=1.0)
    tr = out.token_rewards
    # row 0: correct but no NRP -> whole response is NRP
    assert (tr[0, : lengths[0]] == 2.0).all() and (tr[0, lengths[0]:] == 0).all()
    # row 1: "<think>a\n" + "x=7\n" is the NRP, "more\nmore" is post-NRP thinking, the answer part is r_plus
    t0, t1 = think_span(think)
    assert think[t0:t1] == "a\nx=7\nmore\nmore"
    nrp_end = len("<think>a\nx=7\n")
    post = 1.0 - 1.0 * lengths[1] / 100
    expected = [2.0] * nrp_end + [post] * (t1 - nrp_end) + [2.0] * (lengths[1] - t1)
    assert tr[1, : lengths[1]].tolist() == pytest.approx(expected)
    # tags disabled: the answer part is penalised as well
    out2 = run_part("decs", inp, r_plus=2.0, r_zero=1.0, think_tags=None)
    assert out2.token_rewards[1, lengths[1] - 1].item() == pytest.approx(post)
    assert out.metrics["shaping/decs/nrp_found"] == pytest.approx(2 / 3)


def test_decs_custom_detector_by_name_and_callable() -> None:
    texts = ["abcdefghij"]
    inp = make_input(texts, "zzz", [1], lengths=[10], max_len=10, mask=padded_mask([10]))
    NRP_DETECTORS.register("test_fixed_3")(lambda completion, gold: 3)
    try:
        tr = run_part("decs", inp, detector="test_fixed_3").token_rewards[0]
    finally:
        NRP_DETECTORS.unregister("test_fixed_3")
    assert tr.tolist() == pytest.approx([1.1] * 3 + [0.9] * 7)
    tr = run_part("decs", inp, detector=lambda completion, gold: 5).token_rewards[0]
    assert tr.tolist() == pytest.approx([1.1] * 5 + [0.9] * 5)
    with pytest.raises(KeyError, match="first_chunk_with_answer"):
        run_part("decs", inp, detector="first_chunk")


def test_decs_with_char_tokenizer_and_stop_token() -> None:
    from rlfold.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    raw = ["Work.\nIt is 42.\nWait, sure.", "Nope."]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in raw]
    lengths = [len(x) for x in ids]
    width = max(lengths)
    response_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
    assert texts == raw
    inp = make_input(texts, "42", [1, 0], lengths=lengths, max_len=100, mask=padded_mask(lengths),
               response_ids=response_ids, tokenizer=tok)
    tr = run_part("decs", inp).token_rewards
    k = len("Work.\nIt is 42.\n")
    post = 1.0 - 0.1 * lengths[0] / 100
    assert tr[0, :k].tolist() == pytest.approx([1.1] * k)
    assert tr[0, k: lengths[0] - 1].tolist() == pytest.approx([post] * (lengths[0] - 1 - k))
    assert tr[0, lengths[0] - 1].item() == pytest.approx(1.1)  # the stop token ends the answer: not thinking
    assert (tr[1] == 0).all()

"""Reflection / redundancy shaping parts against the worked numbers of rewards.md sections 4, 6, 7 and 9."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

from rlfold.core.types import Prompt
from rlfold.rewards.reflection_shaping import (
    ARLCP_KEYWORDS,
    CONCISENESS_SCORERS,
    EMBEDDERS,
    NRP_DETECTORS,
    arlcp_rewards,
    decs_post_nrp_value,
    first_chunk_with_answer,
    first_correct_solution_end,
    internal_penalty,
    internal_redundancy,
    length_ratio,
    redundancy_reward,
    reflection_count,
    sigma_k,
    split_sentences,
    think_span,
    token_counts,
    trigram_embedder,
)
from rlfold.rewards.shaping import SHAPINGS, ShapingInput

PARTS = ("arlcp", "decs", "redundancy", "crf")


def _inp(completions, answers, correct, groups=None, *, lengths=None, max_len=16384, scores=None,
         response_ids=None, mask=None, tokenizer=None, step=0) -> ShapingInput:
    n = len(completions)
    if isinstance(answers, str):
        answers = [answers] * n
    lengths = [len(t) for t in completions] if lengths is None else lengths
    correct_t = torch.tensor(correct, dtype=torch.float32)
    return ShapingInput(
        scores=correct_t.clone() if scores is None else torch.tensor(scores, dtype=torch.float32),
        correct=correct_t,
        lengths=torch.tensor(lengths),
        truncated=torch.zeros(n, dtype=torch.bool),
        group_ids=torch.tensor(groups if groups is not None else [0] * n),
        prompts=[Prompt(text="q", answer=a) for a in answers],
        completions=list(completions),
        max_len=max_len,
        step=step,
        response_ids=response_ids,
        response_mask=mask,
        tokenizer=tokenizer,
    )


def _run(name, inp, **kw):
    return SHAPINGS.get(name)(inp, state={}, **kw)


# --- interface --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARTS)
def test_shaping_signature(name: str) -> None:
    params = list(inspect.signature(SHAPINGS.get(name)).parameters.values())
    assert params[0].name == "inp" and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
    assert params[1].name == "state" and params[1].kind is params[1].KEYWORD_ONLY
    assert params[1].default is params[1].empty
    for p in params[2:]:
        assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, p.name)
    doc = inspect.getdoc(SHAPINGS.get(name))
    assert "arXiv 25" in doc.splitlines()[0] or "arXiv 26" in doc.splitlines()[0]


@pytest.mark.parametrize("name", PARTS)
def test_metric_names_and_incorrect_rows(name: str) -> None:
    texts = ["Compute.\nSo x is 12. Wait, check 12 again.", "No idea, maybe 7."]
    out = _run(name, _inp(texts, "12", [1, 0], lengths=[40, 17], max_len=64, scores=[1, 0]))
    assert out.metrics and all(k.startswith(f"shaping/{name}/") for k in out.metrics)
    assert out.scores.shape == (2,)
    assert out.scores[1].item() == 0.0
    assert out.scores[0].item() > 0.0
    if out.token_rewards is not None:
        assert (out.token_rewards[1] == 0).all()


# --- ARLCP ------------------------------------------------------------------------------------------


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
    inp = _inp(texts, "1", [1, 1, 1, 0], lengths=[1000, 2000, 3000, 10])
    out = _run("arlcp", inp)
    assert out.scores.tolist() == pytest.approx([0.946212, 0.900000, 0.853788, 0.0], abs=1e-6)
    assert out.token_rewards is None
    assert out.metrics["shaping/arlcp/w1_mean_correct"] == pytest.approx(0.10)
    assert out.metrics["shaping/arlcp/frac_correct"] == pytest.approx(0.75)


def test_arlcp_single_and_no_correct_groups() -> None:
    # group 0: one correct row -> mean = own value, std 1 -> both sigmoids 0.5 -> 1 - 0.2 * 0.5
    # group 1: nobody correct -> all 0 (the original scores are replaced)
    inp = _inp(["wait", "hmm", "x", "y"], "1", [1, 0, 0, 0], [0, 0, 1, 1], lengths=[5, 9, 3, 3],
               scores=[2.0, 0.5, 0.5, 0.5])
    assert _run("arlcp", inp).scores.tolist() == pytest.approx([0.9, 0.0, 0.0, 0.0])


def test_arlcp_tiers_and_options() -> None:
    refl = torch.tensor([40.0, 41.0, 80.0, 81.0])
    _, w1 = arlcp_rewards(refl, torch.ones(4), torch.ones(4, dtype=torch.bool), torch.arange(4))
    assert w1.tolist() == pytest.approx([0.05, 0.10, 0.10, 0.15])
    _, w1 = arlcp_rewards(refl, torch.ones(4), torch.ones(4, dtype=torch.bool), torch.arange(4),
                          tiers=[50], w1s=[0.0, 0.3], w_total=0.3)
    assert w1.tolist() == pytest.approx([0.0, 0.0, 0.3, 0.3])
    with pytest.raises(ValueError, match="len"):
        _run("arlcp", _inp(["a"], "1", [1]), tiers=(40,), w1s=(0.05, 0.1, 0.15))
    with pytest.raises(ValueError, match="increasing"):
        _run("arlcp", _inp(["a"], "1", [1]), tiers=(80, 40))
    with pytest.raises(ValueError, match="w_total"):
        _run("arlcp", _inp(["a"], "1", [1]), w_total=0.1)


def test_arlcp_invariants_random() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 24
    words = ["wait", "so", "but", "then", "hmm", "x"]
    texts = [" ".join(words[int(j)] for j in torch.randint(0, 6, (int(k),), generator=gen))
             for k in torch.randint(1, 200, (n,), generator=gen)]
    correct = torch.randint(0, 2, (n,), generator=gen).tolist()
    groups = [i // 6 for i in range(n)]
    out = _run("arlcp", _inp(texts, "1", correct, groups, lengths=[len(t) for t in texts]))
    for s, c in zip(out.scores.tolist(), correct):
        assert (s == 0.0) if not c else (0.8 < s < 1.0)


# --- DECS -------------------------------------------------------------------------------------------


def _padded(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


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
    inp = _inp(texts, "42", [1, 0, 1], lengths=lengths, mask=_padded(lengths))
    out = _run("decs", inp)
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
    inp = _inp(texts, "7", [1, 1, 1], lengths=lengths, max_len=100, mask=_padded(lengths))
    out = _run("decs", inp, r_plus=2.0, r_zero=1.0)
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
    out2 = _run("decs", inp, r_plus=2.0, r_zero=1.0, think_tags=None)
    assert out2.token_rewards[1, lengths[1] - 1].item() == pytest.approx(post)
    assert out.metrics["shaping/decs/nrp_found"] == pytest.approx(2 / 3)


def test_decs_custom_detector_by_name_and_callable() -> None:
    texts = ["abcdefghij"]
    inp = _inp(texts, "zzz", [1], lengths=[10], max_len=10, mask=_padded([10]))
    NRP_DETECTORS.register("test_fixed_3")(lambda completion, gold: 3)
    try:
        tr = _run("decs", inp, detector="test_fixed_3").token_rewards[0]
    finally:
        NRP_DETECTORS.unregister("test_fixed_3")
    assert tr.tolist() == pytest.approx([1.1] * 3 + [0.9] * 7)
    tr = _run("decs", inp, detector=lambda completion, gold: 5).token_rewards[0]
    assert tr.tolist() == pytest.approx([1.1] * 5 + [0.9] * 5)
    with pytest.raises(KeyError, match="first_chunk_with_answer"):
        _run("decs", inp, detector="first_chunk")


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
    inp = _inp(texts, "42", [1, 0], lengths=lengths, max_len=100, mask=_padded(lengths),
               response_ids=response_ids, tokenizer=tok)
    tr = _run("decs", inp).token_rewards
    k = len("Work.\nIt is 42.\n")
    post = 1.0 - 0.1 * lengths[0] / 100
    assert tr[0, :k].tolist() == pytest.approx([1.1] * k)
    assert tr[0, k: lengths[0]].tolist() == pytest.approx([post] * (lengths[0] - k))  # stop token too
    assert (tr[1] == 0).all()


class _SpaceDroppingTokenizer:
    """Word tokens decoded with spaces between them; a lone token decodes without its space."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(self.words[i] for i in ids)


def test_token_counts_fallbacks() -> None:
    words = ["So", "x", "is", "42.", "Then", "more", "words"]
    tok = _SpaceDroppingTokenizer(words)
    text = " ".join(words)
    ids = list(range(len(words)))
    # pieces do not concatenate to the text -> binary search on decoded prefixes
    assert token_counts(text, ids, 7, tok, [0, 1, 2, 3, 11, 12, len(text)]) == [0, 1, 1, 2, 4, 5, 7]
    # no tokenizer: one char per token, proportional when there are fewer tokens than characters
    assert token_counts("abcd", None, 5, None, [0, 2, 4]) == [0, 2, 4]
    assert token_counts("abcdefgh", None, 4, None, [0, 1, 4, 8]) == [0, 1, 2, 4]
    texts = [text]
    inp = _inp(texts, "42", [1], lengths=[7], max_len=70, mask=_padded([7]),
               response_ids=torch.tensor([ids]), tokenizer=tok)
    tr = _run("decs", inp, detector_options={"separators": (".",)}).token_rewards[0]
    assert tr.tolist() == pytest.approx([1.1] * 4 + [0.99] * 3)


# --- internal / external redundancy ----------------------------------------------------------------


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
        inp = _inp(texts, "12", [1, 0, 1])
        out = _run("redundancy", inp, embedder="test_onehot")
        fcs = len("Let x be 5. So x + 7 = 12.")
        erd = (len(texts[0]) - fcs) / len(texts[0])
        assert out.scores.tolist() == pytest.approx([1.0 - erd, 0.0, 1.0])  # row 2: FCS not found -> ERD 0
        assert out.metrics["shaping/redundancy/fcs_found"] == pytest.approx(0.5)
        same = _run("redundancy", inp, embedder="test_same", alpha=0.5, beta=0.5)
        assert same.scores.tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # IRD 1 -> p_int 0
        tokens = _run("redundancy", inp, embedder="test_onehot", unit="tokens")
        assert tokens.scores.tolist() == pytest.approx(out.scores.tolist())
        # the CoT is the thinking segment when </think> is present
        think = "<think>So 12. More words here.</think>Answer 12."
        t_out = _run("redundancy", _inp([think], "12", [1]), embedder="test_onehot")
        cot = "So 12. More words here."
        assert t_out.scores.item() == pytest.approx(1.0 - (len(cot) - len("So 12.")) / len(cot))
        assert _run("redundancy", _inp([think], "12", [1])).scores.item() > 0  # default trigram embedder
    finally:
        EMBEDDERS.unregister("test_onehot")
        EMBEDDERS.unregister("test_same")
    with pytest.raises(ValueError, match="beta"):
        _run("redundancy", inp, alpha=0.05, beta=0.1)
    with pytest.raises(ValueError, match="unit"):
        _run("redundancy", inp, unit="words")


# --- CRF ----------------------------------------------------------------------------------------------


def _by_text(completion, prompt, *, length, max_len) -> float:
    return float(completion)


def test_crf_zero_outcome_and_monotone() -> None:
    cs = ["0.1", "0.4", "0.7", "1.0"]
    zero = _run("crf", _inp(cs, "1", [0, 0, 0, 0], scores=[0, 0, 0, 0]), scorer=_by_text)
    assert zero.scores.tolist() == [0.0] * 4
    out = _run("crf", _inp(cs, "1", [1, 1, 1, 1]), scorer=_by_text)
    vals = out.scores.tolist()
    assert all(b > a for a, b in itertools.pairwise(vals))
    assert vals == pytest.approx([1 + 0.5 * c for c in (0.1, 0.4, 0.7, 1.0)])  # d = 0, s = 1
    clipped = _run("crf", _inp(["0.0", "5"], "1", [1, 1]), scorer=_by_text)
    assert clipped.scores.tolist() == pytest.approx([1.05, 1.5])


def test_crf_difficulty_anneal_and_defaults() -> None:
    inp = _inp(["1", "1", "1", "1"], "1", [1, 0, 1, 1], [0, 0, 1, 1], scores=[1, 0, 1, 1], step=50)
    out = _run("crf", inp, scorer=_by_text, alpha=1.0, anneal="linear", anneal_steps=100)
    # group 0 solve rate 0.5 -> d = 0.5; s = 1 - 50/100 = 0.5
    assert out.scores.tolist() == pytest.approx([2.0, 0.0, 1.5, 1.5])
    assert out.metrics["shaping/crf/anneal_s"] == pytest.approx(0.5)
    late = _run("crf", _inp(["1"], "1", [1], step=500), scorer=_by_text, anneal="linear", anneal_steps=100)
    assert late.scores.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="anneal_steps"):
        _run("crf", inp, anneal="linear")
    with pytest.raises(ValueError, match="anneal"):
        _run("crf", inp, anneal="cosine")
    # outcome from the verifier instead of the incoming score
    by_correct = _run("crf", _inp(["1"], "1", [1], scores=[3.0]), scorer=_by_text, outcome="correct")
    assert by_correct.scores.item() == pytest.approx(1.5)
    # default scorer: c = clip(1 - L / max_len, 0.1, 1)
    p = Prompt(text="q", answer="1")
    assert length_ratio("", p, length=0, max_len=100) == 1.0
    assert length_ratio("", p, length=50, max_len=100) == pytest.approx(0.5)
    assert length_ratio("", p, length=95, max_len=100) == pytest.approx(0.1)
    d = _run("crf", _inp(["x", "y"], "1", [1, 1], lengths=[0, 100], max_len=100))
    assert d.scores.tolist() == pytest.approx([1.5, 1.05])
    assert "length_ratio" in CONCISENESS_SCORERS
    assert math.isfinite(d.metrics["shaping/crf/bonus_mean"])

"""HFEngine: exact log-probs (engine vs trainer), sampling transforms, seeding, stops, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout import ENGINES, EngineContext, HFEngine, SamplingParams, requests_for
from rlfold.rollout.sampling import process_logits
from rlfold.models.tiny import SPECIAL_TOKENS, build_char_tokenizer

CHARS = list("0123456789+= abxy")


def _make_tokenizer() -> PreTrainedTokenizerFast:
    return build_char_tokenizer(CHARS)


def _make_model(attn: str = "sdpa", seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(SPECIAL_TOKENS) + len(CHARS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # larger logits than the default init, so sampling is not near-uniform
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def _bias_head(model: Qwen2ForCausalLM, bias: dict[int, float]) -> Qwen2ForCausalLM:
    """Replace the bias-free lm_head with one whose bias favours the given token ids."""
    old = model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        for tid, b in bias.items():
            new.bias[tid] = b
    model.lm_head = new
    return model


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


def _make_gpt2() -> GPT2LMHeadModel:
    """Absolute position embeddings: wrong position ids under left padding would show up here
    (RoPE models are invariant to a constant position shift, so they cannot catch that bug)."""
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(SPECIAL_TOKENS) + len(CHARS), n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["sdpa", "eager", "gpt2"])
def model(request):
    return _make_gpt2() if request.param == "gpt2" else _make_model(request.param)


PROMPTS = ["1+2=", "12+34=", "7"]


def _engine(model, tok) -> HFEngine:
    """The hf engine sampling with ``model`` itself (``weights="shared"``, the default)."""
    return HFEngine(EngineContext(model=model, tokenizer=tok, model_path="", dtype=torch.float32))


def _generate(eng: HFEngine, texts: list[str], params: SamplingParams, seed: int = 0):
    """``generate`` on plain-text prompts (no gold answer needed here)."""
    return eng.generate(requests_for([Prompt(t, "") for t in texts]), params, seed)


def _raw_response_logits(model, rb) -> torch.Tensor:
    """Independent recomputation: full forward without cache, logits predicting each response token."""
    ids = torch.cat([rb.prompt_ids, rb.response_ids], 1)
    mask = torch.cat([rb.prompt_mask, rb.response_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    p = rb.prompt_ids.shape[1]
    return logits[:, p - 1 : p - 1 + rb.response_ids.shape[1]]


def test_engine_registered_and_params_validated():
    assert ENGINES.get("hf") is HFEngine
    with pytest.raises(ValidationError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValidationError):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValidationError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValidationError):
        SamplingParams(bogus=1)
    with pytest.raises(ValidationError):  # the seed is an argument of each generate call
        SamplingParams(seed=3)


def test_policy_logprobs_match_trainer(model, tok):
    """(a) engine policy log-probs == trainer sequence_logprobs on the same ids (left padding in play)."""
    eng = _engine(model, tok)
    rb = _generate(eng, PROMPTS, SamplingParams(temperature=1.0, n=2, max_new_tokens=8), seed=3)
    assert rb.size == 6 and rb.prompt_ids.shape == rb.prompt_mask.shape
    assert (rb.prompt_mask.sum(-1) == torch.tensor([5, 5, 7, 7, 2, 2])).all()
    assert (rb.prompt_ids[:, -1] != 0).all() and rb.prompt_mask[4, 0] == 0  # left padded
    assert (rb.prompt_ids[rb.prompt_mask.bool()][:1] == 1).all()  # bos prepended
    assert rb.response_ids.shape == rb.response_mask.shape == rb.policy_logprobs.shape
    assert rb.policy_logprobs.dtype == torch.float32
    logp, ent = sequence_logprobs(
        model, rb.prompt_ids, rb.prompt_mask, rb.response_ids, rb.response_mask, with_entropy=True
    )
    m = rb.response_mask.bool()
    assert torch.allclose(rb.policy_logprobs[m], logp.detach()[m], atol=1e-5)
    assert torch.allclose(rb.sample_logprobs[m], rb.policy_logprobs[m], atol=1e-5)  # T=1, no truncation
    assert (logp[~m] == 0).all() and (ent[~m] == 0).all() and (ent[m] >= 0).all()
    assert (rb.policy_logprobs[~m] == 0).all() and (rb.response_ids[~m] == 0).all()
    assert (rb.policy_logprobs[m] < 0).all()


def test_sequence_logprobs_gradients_flow(tok):
    model = _make_model("sdpa").train()
    rb = _generate(_engine(model, tok), ["1+2="], SamplingParams(max_new_tokens=4), seed=0)
    assert model.training  # mode restored after generation
    logp, ent = sequence_logprobs(model, rb.prompt_ids, rb.prompt_mask, rb.response_ids, rb.response_mask)
    assert ent is None
    logp.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_sample_logprobs_with_truncation(model, tok):
    """(b) sample log-probs follow the processed distribution; policy log-probs stay at T=1."""
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, n=3, max_new_tokens=8)
    rb = _generate(_engine(model, tok), PROMPTS, params, seed=11)
    raw = _raw_response_logits(model, rb)
    n, r, v = raw.shape
    processed = process_logits(raw.reshape(n * r, v), params).reshape(n, r, v)
    tokens = rb.response_ids.unsqueeze(-1)
    want_sample = torch.log_softmax(processed, -1).gather(-1, tokens).squeeze(-1)
    want_policy = torch.log_softmax(raw, -1).gather(-1, tokens).squeeze(-1)
    m = rb.response_mask.bool()
    assert torch.isfinite(want_sample[m]).all()  # every sampled token lies inside the truncated support
    assert torch.allclose(rb.sample_logprobs[m], want_sample[m], atol=1e-5)
    assert torch.allclose(rb.policy_logprobs[m], want_policy[m], atol=1e-5)
    assert not torch.allclose(rb.sample_logprobs[m], rb.policy_logprobs[m], atol=1e-3)


def test_seed_determinism(tok):
    model = _make_model("sdpa")
    eng = _engine(model, tok)
    params = SamplingParams(n=4, max_new_tokens=8)
    a = _generate(eng, PROMPTS, params, seed=5)
    b = _generate(eng, PROMPTS, params, seed=5)
    c = _generate(eng, PROMPTS, params, seed=6)
    assert torch.equal(a.response_ids, b.response_ids) and a.response_texts == b.response_texts
    assert torch.equal(a.policy_logprobs, b.policy_logprobs)
    assert a.response_ids.shape != c.response_ids.shape or not torch.equal(a.response_ids, c.response_ids)
    # the integer seed is all the randomness a call gets: the global RNG state does not matter
    torch.manual_seed(0)
    d = _generate(eng, PROMPTS, SamplingParams(n=2, max_new_tokens=6), seed=9)
    torch.manual_seed(1)
    e = _generate(eng, PROMPTS, SamplingParams(n=2, max_new_tokens=6), seed=9)
    assert torch.equal(d.response_ids, e.response_ids)


def test_greedy_matches_manual_loop(model, tok):
    """(d) greedy with the KV cache equals a cache-free argmax loop."""
    rb = _generate(_engine(model, tok), ["12+3="], SamplingParams(temperature=0.0, max_new_tokens=10))
    ids = torch.tensor([tok("12+3=")["input_ids"]])
    manual = []
    with torch.no_grad():
        for _ in range(10):
            nxt = model(ids).logits[:, -1].argmax(-1)
            manual.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], 1)
            if int(nxt) == tok.eos_token_id:
                break
    length = int(rb.response_mask.sum())
    assert rb.response_ids[0, :length].tolist() == manual
    assert rb.finish_reasons == [FINISH_STOP if manual[-1] == tok.eos_token_id else FINISH_LENGTH]
    assert (rb.sample_logprobs == 0).all()


def _check_stop_rows(rb, stop_id: int, max_new: int) -> None:
    lengths = rb.response_mask.sum(-1).tolist()
    for i, (reason, length) in enumerate(zip(rb.finish_reasons, lengths)):
        row = rb.response_ids[i, :length].tolist()
        assert rb.response_mask[i, :length].all() and not rb.response_mask[i, length:].any()
        if reason == FINISH_STOP:
            assert row[-1] == stop_id and stop_id not in row[:-1]
        else:
            assert reason == FINISH_LENGTH and length == max_new and stop_id not in row
    assert FINISH_STOP in rb.finish_reasons and FINISH_LENGTH in rb.finish_reasons


def test_eos_and_stop_token(tok):
    """(e) eos (always a stop) and extra stop ids are kept with mask 1; other rows end on 'length'."""
    eos = tok.eos_token_id
    model = _bias_head(_make_model("sdpa"), {eos: 1.0})
    eng = _engine(model, tok)
    rb = _generate(eng, ["1+2=", "3"], SamplingParams(n=8, max_new_tokens=4), seed=0)
    _check_stop_rows(rb, eos, 4)
    stop_rows = [i for i, r in enumerate(rb.finish_reasons) if r == FINISH_STOP]
    i = stop_rows[0]
    last = int(rb.response_mask[i].sum()) - 1
    assert rb.policy_logprobs[i, last] < 0 and rb.response_mask[i, last] == 1
    assert "<eos>" not in rb.response_texts[i]

    x = tok.convert_tokens_to_ids("x")
    model = _bias_head(_make_model("sdpa"), {x: 1.0, eos: -100.0})  # only x stops
    rb = _generate(_engine(model, tok), ["1+2="], SamplingParams(n=12, max_new_tokens=4, stop_token_ids=[x]), seed=1)
    _check_stop_rows(rb, x, 4)
    assert all(t.endswith("x") for t, r in zip(rb.response_texts, rb.finish_reasons) if r == FINISH_STOP)


def test_ignore_eos_samples_to_the_length_limit(tok):
    """ignore_eos: eos is sampled like any token and every row runs to max_new_tokens."""
    eos = tok.eos_token_id
    model = _bias_head(_make_model("sdpa"), {eos: 3.0})
    rb = _generate(_engine(model, tok), ["1+2="], SamplingParams(n=6, max_new_tokens=5, ignore_eos=True), seed=0)
    assert rb.finish_reasons == [FINISH_LENGTH] * 6
    assert rb.response_mask.sum(-1).tolist() == [5] * 6
    assert (rb.response_ids == eos).any()  # eos was sampled and did not stop the row


def test_stop_string(tok):
    """(f) generation ends once the decoded response contains a stop string."""
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    model = _bias_head(_make_model("sdpa"), {a: 4.0, b: 6.0, tok.eos_token_id: -100.0, tok.unk_token_id: -100.0, tok.pad_token_id: -100.0})
    params = SamplingParams(n=12, max_new_tokens=6, stop_strings=["aa"])
    rb = _generate(_engine(model, tok), ["1+2="], params, seed=2)
    assert FINISH_STOP in rb.finish_reasons and FINISH_LENGTH in rb.finish_reasons
    for text, reason, length in zip(rb.response_texts, rb.finish_reasons, rb.response_mask.sum(-1).tolist()):
        if reason == FINISH_STOP:
            assert text.endswith("aa") and "aa" not in text[:-1]
        else:
            assert "aa" not in text and length == 6


def test_process_logits_hand_example():
    """(g) temperature, top-k and top-p on numbers worked by hand."""
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    out = process_logits(logits, SamplingParams(top_k=2))
    assert torch.isinf(out[0, [0, 2]]).all() and torch.equal(out[0, [1, 3]], logits[0, [1, 3]])
    out = process_logits(logits, SamplingParams(top_p=0.75))  # 0.5 < 0.75 <= 0.5 + 0.3
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]
    out = process_logits(logits, SamplingParams(top_p=0.85))  # needs 0.5 + 0.3 + 0.15
    assert torch.isfinite(out).tolist() == [[False, True, True, True]]
    out = process_logits(logits, SamplingParams(top_p=0.01))  # argmax always kept
    assert torch.isfinite(out).tolist() == [[False, True, False, False]]
    out = process_logits(logits, SamplingParams(temperature=0.5, top_k=3, top_p=0.9))
    # T=0.5 squares then renormalises: 0.25, 0.09, 0.0225 / 0.3650 -> top-3 then 0.685 + 0.247 >= 0.9
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]
    assert torch.allclose(out[0, 1], logits[0, 1] / 0.5)
    kept = torch.softmax(out, -1)
    assert math.isclose(float(kept[0, 1]), 0.25 / 0.34, rel_tol=1e-5)
    same = process_logits(logits, SamplingParams())
    assert torch.equal(same, logits) and same is not logits


def test_left_padding_invariance(model, tok):
    """(h) a left-padded row gives the same tokens and log-probs as the prompt alone."""
    eng = _engine(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    alone = _generate(eng, ["7+1="], params)
    batch = _generate(eng, ["7+1=", "123+456=7"], params)
    assert batch.prompt_mask[0].tolist()[:5] == [0] * 5
    length = int(alone.response_mask.sum())
    assert torch.equal(batch.response_ids[0, :length], alone.response_ids[0, :length])
    assert int(batch.response_mask[0].sum()) == length
    assert torch.allclose(batch.policy_logprobs[0, :length], alone.policy_logprobs[0, :length], atol=1e-5)
    assert batch.response_texts[0] == alone.response_texts[0]


class _Output(dict):
    """A model output as a mapping with attribute access (what ``ModelOutput`` is)."""

    __getattr__ = dict.__getitem__


class _OldCacheName(torch.nn.Module):
    """A causal LM whose ``forward`` takes and returns its cache as ``past_key_values`` (transformers 4.x,
    remote code), wrapping one that uses the new name."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)
        return _Output(logits=out.logits, past_key_values=out["cache"])

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _deprecated_cache_name(record) -> bool:
    return "past_key_values" in str(getattr(record, "message", record))


def test_no_cache_deprecation_warning(model, tok, caplog):
    """Generation passes the KV cache by the name the model's forward takes: transformers warns about none."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    getattr(hf_logging.get_logger("x").warning_once, "cache_clear", lambda: None)()  # re-arm warning_once
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(caplog.handler)
    try:
        with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING, logger="transformers"):
            warnings.simplefilter("always")
            _generate(_engine(model, tok), PROMPTS, SamplingParams(n=2, max_new_tokens=6), seed=0)
    finally:
        hf_logger.removeHandler(caplog.handler)
    assert not [w for w in seen if _deprecated_cache_name(w)], [str(w.message) for w in seen]
    assert not [r for r in caplog.records if _deprecated_cache_name(r.getMessage())]


def test_old_cache_argument_name_gives_the_same_rollouts(tok):
    """A model taking ``past_key_values`` (the name before transformers 5) samples exactly the same."""
    model = _make_model("sdpa")
    params = SamplingParams(n=3, max_new_tokens=8, temperature=0.9)
    new = _generate(_engine(model, tok), PROMPTS, params, seed=4)
    old_eng = _engine(_OldCacheName(model), tok)
    assert old_eng._cache_arg == "past_key_values" and _engine(model, tok)._cache_arg == "cache"
    old = _generate(old_eng, PROMPTS, params, seed=4)
    assert torch.equal(new.response_ids, old.response_ids) and new.response_texts == old.response_texts
    assert torch.equal(new.policy_logprobs, old.policy_logprobs)
    assert torch.equal(new.sample_logprobs, old.sample_logprobs)

"""The colocated vLLM engine against the hf engine on the shipped models (runs where vLLM is installed:
``bash scripts/test_vllm_cpu.sh``; skipped by the default test command)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from rlfold.core.errors import ConfigError  # noqa: E402
from rlfold.core.types import Prompt  # noqa: E402
from rlfold.models.loading import load_model_and_tokenizer  # noqa: E402
from rlfold.models.logprobs import sequence_logprobs  # noqa: E402
from rlfold.rollout import EngineContext, GenerationRequest, HFEngine, SamplingParams, VLLMEngine  # noqa: E402
from rlfold.rollout.sampling import process_logits  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = ["12+7=", "3+4=", "45+19=", "99+99=", "8+0=", "61+5="]
TOL = 1e-4


@pytest.fixture(scope="module")
def models():
    a, tok = load_model_and_tokenizer("tiny-arith", torch.float32)
    b, _ = load_model_and_tokenizer("tiny-verbose-arith", torch.float32)
    return a, b, tok


@pytest.fixture(scope="module")
def engine(models):
    a, _, tok = models
    e = VLLMEngine(EngineContext(a, tok, "tiny-arith", torch.float32))
    yield e
    e.close()


def hf(model, tok, path):
    return HFEngine(EngineContext(model, tok, path, torch.float32))


def reqs(prompts=PROMPTS, **kw):
    return [GenerationRequest(Prompt(p, ""), **kw) for p in prompts]


def processed_logprobs(model, batch, params: SamplingParams) -> torch.Tensor:
    """[N, R] log-probs of the batch's tokens under the hf model's processed distribution (T, top-k, top-p)."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    p, r = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    step = logits[:, p - 1: p - 1 + r]
    flat = process_logits(step.reshape(-1, step.shape[-1]), params).reshape(step.shape)
    lp = torch.log_softmax(flat, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return torch.where(batch.response_mask.bool(), lp, torch.zeros_like(lp))


def assert_same_rows(a, b):
    assert a.response_ids.shape == b.response_ids.shape
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and a.finish_reasons == b.finish_reasons
    assert a.response_texts == b.response_texts


def test_greedy_equals_the_hf_engine(engine, models):
    a, _, tok = models
    params = SamplingParams(temperature=0.0, max_new_tokens=12, n=2)
    want, got = hf(a, tok, "tiny-arith").generate(reqs(), params, 0), engine.generate(reqs(), params, 0)
    assert_same_rows(want, got)
    assert torch.allclose(got.policy_logprobs, want.policy_logprobs, atol=TOL)
    assert torch.equal(got.sample_logprobs, want.sample_logprobs)  # 0: each greedy token has probability 1


def test_stops_and_limits_equal_the_hf_engine(engine, models):
    """Stop token ids, stop strings and per-request limits end rows where the hf engine ends them."""
    a, _, tok = models
    h = hf(a, tok, "tiny-arith")
    digit = tok.convert_tokens_to_ids("9")
    for params, rq in [
        (SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=[digit]), reqs()),
        (SamplingParams(temperature=0.0, max_new_tokens=12, stop_strings=["1"]), reqs()),
        (SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True), reqs()),
        (SamplingParams(temperature=0.0, max_new_tokens=12), reqs(max_new_tokens=1)),
    ]:
        assert_same_rows(h.generate(rq, params, 0), engine.generate(rq, params, 0))


def test_context_ids_continue_after_exactly_those_tokens(engine, models):
    """Token in: a multi-turn request's context ids reach vLLM as given, nothing is re-tokenised."""
    a, _, tok = models
    ctx = [list(tok(p)["input_ids"]) + list(tok("1")["input_ids"])[1:] for p in PROMPTS[:3]]
    rq = [GenerationRequest(Prompt(p, ""), context_ids=c) for p, c in zip(PROMPTS, ctx)]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    want, got = hf(a, tok, "tiny-arith").generate(rq, params, 0), engine.generate(rq, params, 0)
    assert_same_rows(want, got)
    assert got.prompt_ids[:, -1].tolist() == [c[-1] for c in ctx]


def test_seeded_sampling_is_reproducible_and_its_logprobs_are_the_policys(engine, models):
    """T = 1: a seed gives the same rows again, another seed other rows; vLLM's log-prob of every sampled
    token equals the hf model's (sampling and policy log-probs are one thing at T = 1)."""
    a, _, _ = models
    params = SamplingParams(temperature=1.0, max_new_tokens=12, n=8)
    b1, b2, b3 = (engine.generate(reqs(), params, s) for s in (11, 11, 12))
    assert torch.equal(b1.response_ids, b2.response_ids) and torch.equal(b1.sample_logprobs, b2.sample_logprobs)
    assert b1.response_texts != b3.response_texts
    lp, _ = sequence_logprobs(a, b1.prompt_ids, b1.prompt_mask, b1.response_ids, b1.response_mask)
    mask = b1.response_mask.bool()
    assert float((lp.detach() - b1.policy_logprobs)[mask].abs().max()) < TOL
    assert torch.equal(b1.sample_logprobs, b1.policy_logprobs)


def test_truncated_sampling_reports_the_processed_distribution(engine, models):
    """T = 0.7, top-p 0.9, top-k 20: the sampling log-prob is the one of the distribution sampled from (the hf
    engine's ``process_logits`` on the hf model's logits); no plain-policy log-prob is claimed (NaN)."""
    a, _, _ = models
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=12, n=8)
    b = engine.generate(reqs(), params, 5)
    mask = b.response_mask.bool()
    want = processed_logprobs(a, b, params)
    assert float((want - b.sample_logprobs)[mask].abs().max()) < TOL
    assert bool(torch.isnan(b.policy_logprobs[mask]).all())


def test_sampling_follows_the_policys_distribution(engine, models):
    """The first sampled token's frequencies over 2,000 seeded rows match the hf model's probabilities."""
    a, _, tok = models
    n = 2000
    b = engine.generate(reqs(["7+8="]), SamplingParams(temperature=1.0, max_new_tokens=1, n=n), 3)
    ids = torch.tensor(tok("7+8=")["input_ids"])[None]
    with torch.no_grad():
        probs = torch.softmax(a(input_ids=ids).logits[0, -1].float(), -1)
    freq = torch.bincount(b.response_ids[:, 0], minlength=probs.numel()).float() / n
    tv = 0.5 * float((freq - probs).abs().sum())
    assert tv < 0.05, f"total variation {tv:.3f} between vLLM's samples and the policy"
    assert float(probs.max()) < 0.99  # the check has something to compare


def test_weight_update_gives_the_new_models_outputs(engine, models):
    """The rebuild sync (vLLM's CPU path): after streaming the verbose model's parameters, greedy outputs and
    log-probs equal the hf engine's on that model; then back to the first model."""
    a, b, tok = models
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    v0 = engine.version
    engine.update_weights(b.named_parameters(), streamed=True)
    want, got = hf(b, tok, "tiny-verbose-arith").generate(reqs(), params, 0), engine.generate(reqs(), params, 0)
    assert_same_rows(want, got)
    assert torch.allclose(got.policy_logprobs, want.policy_logprobs, atol=TOL)
    assert engine.version == v0 + 1 and engine.last_sync_s > 0
    engine.update_weights(a.named_parameters(), streamed=True)
    assert_same_rows(hf(a, tok, "tiny-arith").generate(reqs(), params, 0), engine.generate(reqs(), params, 0))


def test_a_bad_update_keeps_the_previous_weights(engine, models):
    a, b, tok = models
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    before, v0 = engine.generate(reqs(), params, 0), engine.version
    partial = [(n, p) for n, p in b.named_parameters()][:3]
    with pytest.raises(ConfigError, match="ended without"):
        engine.update_weights(partial)
    assert engine.version == v0
    assert_same_rows(before, engine.generate(reqs(), params, 0))


def test_in_place_sync_on_cpu_and_a_second_engine_are_refused(engine, models):
    a, _, tok = models
    ctx = EngineContext(a, tok, "tiny-arith", torch.float32)
    with pytest.raises(ConfigError, match="already runs a vLLM engine"):
        VLLMEngine(ctx)
    engine.close()
    try:
        with pytest.raises(ConfigError, match="in_place gives stale outputs"):
            VLLMEngine(ctx, sync="in_place")
    finally:
        engine.__init__(ctx)  # the module's engine again, for any test after this one

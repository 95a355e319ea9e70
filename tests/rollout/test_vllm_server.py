"""The server vLLM engine with a vLLM server rlfold starts on loopback (runs where vLLM is installed:
``bash scripts/test_vllm_cpu.sh``; skipped by the default test command)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from rlfold.core.types import Prompt  # noqa: E402
from rlfold.models.loading import load_model_and_tokenizer  # noqa: E402
from rlfold.models.logprobs import sequence_logprobs  # noqa: E402
from rlfold.rollout import EngineContext, GenerationRequest, HFEngine, SamplingParams, VLLMServerEngine  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = ["12+7=", "3+4=", "45+19=", "99+99="]


def reqs():
    return [GenerationRequest(Prompt(p, "")) for p in PROMPTS]


def test_server_engine_generates_like_the_hf_engine_and_takes_new_weights():
    """Greedy rows and log-probs equal the hf engine's; seeded sampling repeats and its log-probs are the
    policy's; a server given by url works the same; after a weight update (restart from the written directory, vLLM's CPU path) the outputs are
    the new model's; closing stops the server."""
    a, tok = load_model_and_tokenizer("tiny-arith", torch.float32)
    b, _ = load_model_and_tokenizer("tiny-verbose-arith", torch.float32)
    engine = VLLMServerEngine(EngineContext(a, tok, "tiny-arith", torch.float32))
    try:
        assert engine.url.startswith("http://127.0.0.1:") and engine.sync_mode == "restart"
        greedy = SamplingParams(temperature=0.0, max_new_tokens=12, n=2)
        want = HFEngine(EngineContext(a, tok, "tiny-arith", torch.float32)).generate(reqs(), greedy, 0)
        got = engine.generate(reqs(), greedy, 0)
        assert torch.equal(got.response_ids, want.response_ids) and got.finish_reasons == want.finish_reasons
        assert got.response_texts == want.response_texts
        assert torch.allclose(got.policy_logprobs, want.policy_logprobs, atol=1e-4)

        hot = SamplingParams(temperature=1.0, max_new_tokens=12, n=4)
        s1, s2 = engine.generate(reqs(), hot, 3), engine.generate(reqs(), hot, 3)
        assert torch.equal(s1.response_ids, s2.response_ids)
        lp, _ = sequence_logprobs(a, s1.prompt_ids, s1.prompt_mask, s1.response_ids, s1.response_mask)
        assert float((lp.detach() - s1.policy_logprobs)[s1.response_mask.bool()].abs().max()) < 1e-4

        # a server the user started is reached by url: the same rows; its reload endpoints accept the update
        # (on the CPU backend an in-place reload leaves stale prepacked weights, so no output is claimed here)
        user = VLLMServerEngine(EngineContext(a, tok, "tiny-arith", torch.float32), url=engine.url)
        assert user.server is None and user.sync_mode == "reload" and user.model_name == "policy"
        assert torch.equal(user.generate(reqs(), greedy, 0).response_ids, got.response_ids)
        user.update_weights(a.named_parameters())
        assert user.version == 1

        engine.update_weights(b.named_parameters(), streamed=True)  # restart: a new server from the new weights
        assert engine.version == 1
        want = HFEngine(EngineContext(b, tok, "tiny-verbose-arith", torch.float32)).generate(reqs(), greedy, 0)
        got = engine.generate(reqs(), greedy, 0)
        assert torch.equal(got.response_ids, want.response_ids)
        assert torch.allclose(got.policy_logprobs, want.policy_logprobs, atol=1e-4)
    finally:
        proc = engine.server.proc
        engine.close()
    assert proc.poll() is not None

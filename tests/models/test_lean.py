"""The lean forward (``models.lean``) computes what the transformers module computes, and runs only where it can."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlfold.core.masked import positions_from_mask
from rlfold.core.types import Prompt
from rlfold.models.lean import enable_lean, lean_of, use_lean, why_not_lean
from rlfold.models.loading import load_model_and_tokenizer
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout.base import EngineContext, GenerationRequest
from rlfold.rollout.hf_engine import HFEngine
from rlfold.rollout.sampling import SamplingParams

SMALL = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)


def _arch(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()
    return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None)).eval()


def _batch(n=6, length=11, vocab=40, pad=3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, :pad] = 0  # left padding on every other row
    return ids, mask


def _shipped(dtype=torch.float32):
    model, tok = load_model_and_tokenizer("tiny-arith", dtype, device=torch.device("cpu"))
    return model, tok


@pytest.mark.parametrize("arch", ["qwen2", "llama", "mistral"])
def test_lean_logits_equal_the_transformers_forward(arch):
    model = _arch(arch)
    assert why_not_lean(model) is None and enable_lean(model)
    ids, mask = _batch()
    pos = positions_from_mask(mask)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = lean_of(model).logits(ids, mask, pos, 4, 10)  # only the positions asked for
    assert got.shape == (6, 6, 40)
    keep = mask[:, 4:10].bool()
    assert torch.allclose(got[keep], want[:, 4:10][keep], atol=1e-5)


def test_lean_gradients_equal_the_transformers_gradients():
    ids, mask = _batch()
    prompt, resp = ids[:, :5], ids[:, 5:]
    pm, rm = mask[:, :5], mask[:, 5:]
    grads = []
    for lean in (False, True):
        model = _arch("qwen2").train()
        if lean:
            enable_lean(model)
        lp, ent = sequence_logprobs(model, prompt, pm, resp, rm, with_entropy=True)
        (lp.sum() + 0.1 * ent.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-5, rtol=1e-4), name


def test_cached_generation_steps_equal_the_full_forward():
    model = _arch("llama")
    enable_lean(model)
    lean = lean_of(model)
    ids, mask = _batch(length=12)
    pos = positions_from_mask(mask)
    with torch.no_grad():
        full = lean.logits(ids, mask, pos, 4, 11)
        cache = lean.new_cache(6, 12, ids.device)
        steps = [lean.extend(cache, ids[:, :5], mask[:, :5], pos[:, :5])]
        for t in range(5, 11):
            steps.append(lean.extend(cache, ids[:, t:t + 1], mask[:, t:t + 1], pos[:, t:t + 1]))
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
    with pytest.raises(RuntimeError, match="holds 12 tokens"):
        lean.extend(cache, ids[:, :2], mask[:, :2], pos[:, :2])


def _generate(model, tok, autocast=None, dtype=torch.float32):
    ctx = EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=dtype,
                        **({"autocast": autocast} if autocast else {}))
    reqs = [GenerationRequest(prompt=Prompt(f"{10 + 7 * i}+{3 * i}=", "")) for i in range(4)]
    return HFEngine(ctx).generate(reqs, SamplingParams(n=3, max_new_tokens=12, ignore_eos=True), seed=0)


# float64 leaves only ~1e-12 of summation-order rounding between the cached one-token steps and the full
# forward; float32 kernels on AMX CPUs differ by up to ~3e-5 on a logprob near -2 (measured), so 2e-4 there.
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-6), (torch.float32, 2e-4)], ids=["float64", "float32"])
def test_engine_log_probs_equal_the_trainer_log_probs_on_the_lean_path(dtype, atol):
    model, tok = _shipped(dtype)
    assert enable_lean(model)
    rb = _generate(model, tok, dtype=dtype)
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, rb.prompt_ids, rb.prompt_mask, rb.response_ids, rb.response_mask)
    m = rb.response_mask.bool()
    assert m.sum() > 0
    assert torch.allclose(rb.policy_logprobs[m], lp[m], atol=atol)
    plain, _ = _shipped(dtype)  # the transformers forward gives the same samples (same weights, same seed)
    assert torch.equal(_generate(plain, tok, dtype=dtype).response_ids, rb.response_ids)


def test_bf16_autocast_generation_and_update_stay_close_to_float32():
    model, tok = _shipped()
    enable_lean(model)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    rb = _generate(model, tok, autocast=bf16)
    m = rb.response_mask.bool()
    with torch.no_grad():
        lp32, _ = sequence_logprobs(model, rb.prompt_ids, rb.prompt_mask, rb.response_ids, rb.response_mask)
        with bf16():
            lp16, _ = sequence_logprobs(model, rb.prompt_ids, rb.prompt_mask, rb.response_ids, rb.response_mask)
    assert lp16.dtype == torch.float32
    assert float((lp16 - lp32)[m].abs().mean()) < 0.05  # bf16 rounding, not a different model
    assert float((rb.policy_logprobs - lp32)[m].abs().mean()) < 0.05
    assert not torch.equal(lp16, lp32)  # it did compute in bf16


def test_projection_hooks_run_on_the_lean_path():
    model = _arch("qwen2")
    enable_lean(model)
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    ids, mask = _batch()
    with torch.no_grad():
        sequence_logprobs(model, ids[:, :5], mask[:, :5], ids[:, 5:], mask[:, 5:])
    assert seen == [torch.Size([6, 11, 32])]


def test_models_the_lean_path_cannot_run_keep_the_transformers_forward():
    from rlfold.core.config import LoraConfig
    from rlfold.models.lora import lora_policy

    model, _ = _shipped()
    lora = lora_policy(model, LoraConfig()).module
    assert "adapter" in why_not_lean(lora) and not enable_lean(lora)
    assert lean_of(lora) is None

    sliding = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=4))
    assert "sliding" in why_not_lean(sliding)
    gelu = LlamaForCausalLM(LlamaConfig(**SMALL, hidden_act="gelu"))
    assert "hidden_act" in why_not_lean(gelu)
    scaled = LlamaForCausalLM(LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    assert "rope_type" in why_not_lean(scaled)

    plain = _arch("qwen2")
    assert not use_lean(plain, "transformers") and lean_of(plain) is None
    assert not use_lean(plain, "lean", "fsdp2") and lean_of(plain) is None
    assert use_lean(plain, "lean") and lean_of(plain) is not None
    plain.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert lean_of(plain) is None  # switched on later: the transformers forward again


def test_hf_engine_samples_small_models_on_one_thread_and_restores_the_count():
    from rlfold.core.errors import ConfigError

    model, tok = _shipped()
    ctx = EngineContext(model=model, tokenizer=tok, model_path="tiny-arith", dtype=torch.float32)
    before = torch.get_num_threads()
    seen = []
    engine = HFEngine(ctx)
    original = engine._sample
    engine._sample = lambda *a, **k: (seen.append(torch.get_num_threads()), original(*a, **k))[1]
    engine.generate([GenerationRequest(prompt=Prompt("1+2=", ""))], SamplingParams(n=2, max_new_tokens=3), seed=0)
    assert seen == [1] and torch.get_num_threads() == before
    assert engine.decode_threads() is None  # auto: by the work (models.placement.threads_for)
    assert HFEngine(ctx, threads=3).decode_threads() == 3
    assert HFEngine(ctx, threads=0).decode_threads() == before
    for bad in (-1, "two", True):
        with pytest.raises(ConfigError, match="threads"):
            HFEngine(ctx, threads=bad)


def test_threads_for_runs_small_cpu_work_on_one_thread():
    from rlfold.models.placement import SMALL_CPU_WORK, SMALL_CPU_WORK_FP32, threads_for

    torch.set_num_threads(2)
    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    with threads_for(SMALL_CPU_WORK / 2, cpu, dtype=torch.bfloat16):
        assert torch.get_num_threads() == 1
    with threads_for(SMALL_CPU_WORK * 2, cpu, dtype=torch.bfloat16):
        assert torch.get_num_threads() == before
    # float32 products cost about 5x a bf16 one: the same time is fewer multiply-adds
    assert SMALL_CPU_WORK_FP32 < SMALL_CPU_WORK
    with threads_for(SMALL_CPU_WORK_FP32 / 2, cpu):
        assert torch.get_num_threads() == 1
    with threads_for(SMALL_CPU_WORK_FP32 * 2, cpu):
        assert torch.get_num_threads() == before
    with threads_for(1.0, cpu, threads=3):
        assert torch.get_num_threads() == 3
    with pytest.raises(ValueError):
        with threads_for(1.0, cpu):
            raise ValueError("restored even on an error")
    assert torch.get_num_threads() == before


def test_compute_dtype_follows_autocast_then_the_parameters():
    from rlfold.models.placement import compute_dtype

    lin = torch.nn.Linear(2, 2)
    assert compute_dtype(lin) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(lin) == torch.bfloat16
    assert compute_dtype(lin.to(torch.bfloat16)) == torch.bfloat16

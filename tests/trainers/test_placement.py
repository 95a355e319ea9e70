"""GPU placement: device and precision from the config, gradient checkpointing, length-bucketed
micro-batches and the MFU / peak-memory metrics. The CPU tests run everywhere; the CUDA ones skip
without a GPU."""

import copy
import math
from pathlib import Path

import pytest
import torch

from rlfold.algos import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES
from rlfold.core.config import RunConfig
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.models import load_model_and_tokenizer
from rlfold.models.placement import (autocast_for, check_precision, cpu_has_bf16, enable_gradient_checkpointing,
                                     resolve_device, warn_slow_bf16)
from rlfold.rollout import ENGINES, EngineContext, SamplingParams, requests_for
from rlfold.tasks import TASKS
from rlfold.trainers.loop import build_run
from rlfold.trainers.packing import check_micro_batch_tokens, padded_tokens, token_buckets
from rlfold.trainers.perf import known_peak_tflops, max_memory_gib, model_flops_utilisation, perf_metrics
from rlfold.trainers.update import PolicyTerm, PreparedBatch, accumulate_loss, chunks

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY_RUN = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=4", "task.held_out_size=4", "eval.size=4",
            "log.progress=false", "checkpoint.every=0", "rollout.max_new_tokens=6"]


# ----- device and precision from the config -------------------------------------------------------------------


def test_auto_device_is_cuda_when_available_else_cpu():
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("cpu", cuda_available=True) == torch.device("cpu")
    assert resolve_device("cuda:1", cuda_available=True, device_count=2) == torch.device("cuda", 1)


def test_cuda_without_a_cuda_device_is_a_config_error():
    with pytest.raises(ConfigError, match="model.device=cuda but this machine has no CUDA device"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ConfigError, match=r"model.device=cuda:2 but this machine has 2 CUDA device"):
        resolve_device("cuda:2", cuda_available=True, device_count=2)


def test_device_and_precision_keys_are_validated():
    with pytest.raises(ValueError, match="model.device"):
        RunConfig.model_validate({"model": {"device": "tpu"}})
    with pytest.raises(ValueError, match="mixed_precision"):
        RunConfig.model_validate({"train": {"mixed_precision": "fp8"}})
    with pytest.raises(ConfigError, match="model.dtype=float32"):
        check_precision("bf16", "bfloat16")
    check_precision("bf16", "float32")
    check_precision("none", "bfloat16")
    with pytest.raises(ConfigError, match="train.micro_batch_tokens"):
        check_micro_batch_tokens(64, data_parallel=True)


# ----- one batch of the shipped model, for gradient comparisons ---------------------------------------------


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("tiny-arith")
    task = TASKS.get("arith")(levels=[1, 2, 3], held_out_size=8)
    engine = ENGINES.get("hf")(EngineContext(model=model, tokenizer=tok, model_path="tiny-arith",
                                             dtype=torch.float32))
    prompts = task.train[:6]
    roll = engine.generate(requests_for(prompts), SamplingParams(n=4, max_new_tokens=10), 5)
    lengths = roll.response_mask.sum(dim=1)
    assert int(lengths.min()) < int(lengths.max())  # short and long responses in one batch
    rewards = torch.arange(roll.size, dtype=torch.float32) % 3
    adv, _ = ADVANTAGES.get("grpo")(rewards, torch.arange(6).repeat_interleave(4), roll.response_mask)
    old = roll.policy_logprobs + 0.2 * torch.randn_like(roll.policy_logprobs) * roll.response_mask
    prep = PreparedBatch(roll=roll, advantages=adv, old_logprobs=old, loss_mask=roll.response_mask.float(),
                         prompts=[])
    return model, prep


@pytest.fixture(scope="module")
def batch64(batch):
    """The same model and batch in float64, for exact gradient equalities: float32 kernels sum in an order
    that depends on the batch shape (AMX and AVX2 CPUs differ by ~1e-5), float64 leaves ~1e-12 of it."""
    model, prep = batch
    prep64 = PreparedBatch(roll=prep.roll, advantages=prep.advantages.double(),
                           old_logprobs=prep.old_logprobs.double(), loss_mask=prep.loss_mask.double(), prompts=[])
    return copy.deepcopy(model).double(), prep64


def _grads(model, prep, mode, *, micro=0, tokens=0, autocast=None):
    fn = POLICY_LOSSES.get("ppo_clip")
    terms = [PolicyTerm(fn, {"clip_low": 0.2, "clip_high": 0.28})]
    model.zero_grad(set_to_none=True)
    kwargs = {} if autocast is None else {"autocast": autocast}
    sums, ok = accumulate_loss(model, prep, torch.arange(prep.size), micro, terms, AGGREGATIONS.get(mode), max_len=10,
                               micro_batch_tokens=tokens, **kwargs)
    assert ok
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.cat([g.flatten() for g in grads]), sums, grads


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_length_bucketed_update_gives_the_unbucketed_gradient(batch64, mode):
    model, prep = batch64
    full, sums_full, _ = _grads(model, prep, mode)
    assert full.abs().max() > 0
    for budget in (1, 40, 120):
        bucketed, sums, _ = _grads(model, prep, mode, tokens=budget)
        tol = 1e-10 * float(full.abs().max())  # float64: only the summation order differs between splits
        torch.testing.assert_close(bucketed, full, atol=tol, rtol=1e-8)
        assert sums["actor/pg_loss"] == pytest.approx(sums_full["actor/pg_loss"], rel=1e-5, abs=1e-6)
        assert sums["actor/entropy"] == pytest.approx(sums_full["actor/entropy"], rel=1e-5)


def test_buckets_respect_the_budget_and_cost_less_padding(batch):
    _, prep = batch
    roll, idx = prep.roll, torch.arange(prep.size)
    budget = 60
    buckets = token_buckets(roll, idx, budget)
    assert sorted(torch.cat(buckets).tolist()) == idx.tolist()  # every row once
    for b in buckets:
        assert len(b) == 1 or padded_tokens(roll, [idx[b]]) <= budget
    assert all(len(b) <= 3 for b in token_buckets(roll, idx, 10_000, max_rows=3))
    fixed = [idx[c] for c in chunks(prep.size, 6)]  # as many micro-batches, fixed size
    assert padded_tokens(roll, [idx[b] for b in token_buckets(roll, idx, 10_000, max_rows=6)]) < \
        padded_tokens(roll, fixed)


def test_gradient_checkpointing_gives_the_same_gradient(batch):
    _, prep = batch
    plain, _ = load_model_and_tokenizer("tiny-arith")
    checkpointed, _ = load_model_and_tokenizer("tiny-arith")
    enable_gradient_checkpointing(checkpointed)
    assert any(m.gradient_checkpointing for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing"))
    for mode in ("token-mean", "seq-mean-token-mean"):
        a, _, _ = _grads(plain, prep, mode, micro=8)
        b, _, _ = _grads(checkpointed, prep, mode, micro=8)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)


def test_bf16_autocast_on_cpu_keeps_fp32_weights_and_grads(batch):
    model, prep = batch
    full, sums_full, _ = _grads(model, prep, "token-mean")
    mixed, sums_mixed, grads = _grads(model, prep, "token-mean", autocast=autocast_for(torch.device("cpu"), "bf16"))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in grads)
    assert math.isfinite(sums_mixed["actor/pg_loss"]) and torch.isfinite(mixed).all()
    assert sums_mixed["actor/pg_loss"] == pytest.approx(sums_full["actor/pg_loss"], abs=0.05)
    assert sums_mixed["actor/entropy"] == pytest.approx(sums_full["actor/entropy"], rel=0.05)
    cosine = torch.nn.functional.cosine_similarity(mixed, full, dim=0)
    assert cosine > 0.98, float(cosine)


# ----- MFU and memory -------------------------------------------------------------------------------------------


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_bf16(AVX2_ONLY) is False
    assert cpu_has_bf16(SAPPHIRE) is True
    assert cpu_has_bf16(GRAVITON) is True
    assert cpu_has_bf16("model name : something\n") is None  # no flags line: nothing claimed


def test_bf16_on_a_cpu_without_bf16_instructions_warns(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with caplog.at_level("WARNING", logger="rlfold"):
        assert warn_slow_bf16(cpu, "bf16", native=False)
    assert "train.mixed_precision=none is faster" in caplog.text and "avx512_bf16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlfold"):
        assert not warn_slow_bf16(cpu, "bf16", native=True)
        assert not warn_slow_bf16(cpu, "bf16", native=None)  # unknown CPU: no claim
        assert not warn_slow_bf16(cpu, "none", native=False)
        assert not warn_slow_bf16(cuda, "bf16", native=False)  # the check is about the CPU only
    assert caplog.text == ""


def test_mfu_formula_and_peak_table():
    # 6 x 1e9 params x 1000 tokens in 1 s on a 12 TFLOP/s device: 50%
    assert model_flops_utilisation(10**9, 1000, 1.0, 12e12) == pytest.approx(0.5)
    assert known_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert known_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert known_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert known_peak_tflops("NVIDIA L40S") == 362.0
    assert known_peak_tflops("Some Future GPU") is None
    cpu = torch.device("cpu")
    assert max_memory_gib(cpu) > 0  # the process's peak RSS
    assert "perf/mfu" not in perf_metrics(10, 100, 1.0, cpu, None)
    assert perf_metrics(10, 100, 1.0, cpu, 1e12)["perf/mfu"] == pytest.approx(6e3 / 1e12)


def test_cpu_run_with_every_placement_option(tmp_path):
    cfg = load_config(RECIPE, TINY_RUN + [
        "model.device=cpu", "train.mixed_precision=bf16", "train.gradient_checkpointing=true",
        "train.micro_batch_tokens=48", "train.peak_tflops=1", "algo.kl_coef=0.05", "threads=1"])
    run = build_run(cfg, tmp_path / "run")
    assert run.trainer.recompute  # bf16 training recomputes the engine's fp32 log-probs
    rows = run.fit()
    last = rows[-1]
    assert math.isfinite(last["actor/pg_loss"])
    for key in ("perf/mfu", "perf/max_memory_allocated_gb", "perf/train_tokens_per_s", "actor/grad_norm"):
        assert math.isfinite(last[key]) and last[key] > 0, key
    assert last["perf/mfu"] < 1
    assert all(p.dtype == torch.float32 for p in run.trainer.module.parameters())


# ----- CUDA --------------------------------------------------------------------------------------------------


@CUDA
def test_model_reference_and_engine_follow_the_configured_cuda_device(tmp_path):
    cfg = load_config(RECIPE, TINY_RUN + ["model.device=cuda", "algo.kl_coef=0.05", "train.steps=1"])
    run = build_run(cfg, tmp_path / "run")
    step = run.trainer
    assert next(step.module.parameters()).device.type == "cuda"
    assert next(step.reference.module.parameters()).device.type == "cuda"
    rows = run.fit()
    assert math.isfinite(rows[-1]["actor/pg_loss"])


@CUDA
def test_grpo_on_cuda_in_bf16_logs_mfu_and_memory(tmp_path):
    cfg = load_config(RECIPE, TINY_RUN + ["model.device=cuda", "train.mixed_precision=bf16",
                                          "train.gradient_checkpointing=true", "train.micro_batch_tokens=64"])
    run = build_run(cfg, tmp_path / "run")
    rows = run.fit()
    last = rows[-1]
    assert last["perf/max_memory_allocated_gb"] > 0
    assert math.isfinite(last["actor/pg_loss"]) and math.isfinite(last["actor/grad_norm"])
    if known_peak_tflops(torch.cuda.get_device_name()) is not None:
        assert 0 < last["perf/mfu"] < 1


@CUDA
def test_pure_bf16_weights_on_cuda(tmp_path):
    cfg = load_config(RECIPE, TINY_RUN + ["model.device=cuda", "model.dtype=bfloat16", "train.steps=1",
                                          "train.peak_tflops=100"])
    run = build_run(cfg, tmp_path / "run")
    assert next(run.trainer.module.parameters()).dtype == torch.bfloat16
    rows = run.fit()
    assert 0 < rows[-1]["perf/mfu"] < 1


@CUDA
def test_critic_and_sft_follow_the_cuda_device(tmp_path):
    recipe = RECIPE.parent / "ppo.yaml"
    cfg = load_config(recipe, TINY_RUN + ["model.device=cuda", "train.steps=1", "algo.sft_coef=0.1",
                                          "train.mixed_precision=bf16", "train.micro_batch_tokens=64"])
    run = build_run(cfg, tmp_path / "run")
    assert next(run.trainer.critic.model.parameters()).device.type == "cuda"
    rows = run.fit()
    assert math.isfinite(rows[-1]["critic/value_loss"]) and math.isfinite(rows[-1]["actor/sft_loss"])

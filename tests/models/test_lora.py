"""LoRA policies (Hu et al. 2021, arXiv 2106.09685) through peft: only adapters train, the KL reference is
the same module with adapters disabled, engines with weights of their own and saved models get merged
plain weights, and a resume restores the adapter exactly."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

pytest.importorskip("peft")

from rlfold.core.config import LoraConfig  # noqa: E402
from rlfold.core.config_loader import load_config  # noqa: E402
from rlfold.core.errors import ConfigError  # noqa: E402
from rlfold.models import load_model_and_tokenizer  # noqa: E402
from rlfold.models.lora import ADAPTER_DIR, linear_module_names, lora_policy  # noqa: E402
from rlfold.models.logprobs import batched_logprobs  # noqa: E402
from rlfold.rollout.sampling import SamplingParams  # noqa: E402
from rlfold.trainers import online  # noqa: E402
from rlfold.trainers.loop import build_run  # noqa: E402
from rlfold.trainers.reference import BaseViewReference  # noqa: E402

RECIPE = "src/rlfold/recipes/grpo.yaml"
TINY = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "task.held_out_size=8", "eval.size=8",
        "log.progress=false", "checkpoint.every=0", "threads=1"]
LORA = ["model.lora={r: 4, alpha: 8}", "train.lr=1e-2", "algo.kl_coef=0.05"]
COPY = ["rollout.engine_kwargs={weights: copy}", "rollout.eval_engine_kwargs={weights: copy}"]


def _plain(name: str = "tiny-arith"):
    return load_model_and_tokenizer(name)


def _perturb(module: torch.nn.Module) -> None:
    """Non-zero adapters (peft starts B at 0, so a fresh adapter is the identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_only_adapters_train_and_default_targets_are_the_projections():
    model, _ = _plain()
    policy = lora_policy(model, LoraConfig(r=4))
    trainable = [n for n, p in policy.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(policy.state) == {"adapter"}


def test_merged_weights_have_base_names_and_equal_peft_merge():
    model, _ = _plain()
    plain_names = [n for n, _ in model.named_parameters()]
    policy = lora_policy(model, LoraConfig(r=4, alpha=8))
    _perturb(policy.module)
    merged = dict(policy.weights.named_weights())
    assert list(merged) == plain_names and not any("lora_" in n or "base_layer" in n for n in merged)
    reference = policy.weights.plain_copy()  # built from the config, loaded with the merged stream
    import copy

    peft_merged = copy.deepcopy(policy.saved.lora.peft).merge_and_unload()
    for name, p in peft_merged.named_parameters():
        torch.testing.assert_close(merged[name], p, rtol=0, atol=1e-6)
        torch.testing.assert_close(dict(reference.named_parameters())[name], p, rtol=0, atol=1e-6)
    # the adapted module's forward (adapters active) is the merged model's
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(policy.module(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_reference_is_the_base_with_adapters_disabled():
    model, _ = _plain()
    base, _ = _plain()
    policy = lora_policy(model, LoraConfig(r=4))
    _perturb(policy.module)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    resp = torch.tensor([[9, 10, 11]])
    rmask = torch.ones_like(resp)
    ref = BaseViewReference(policy.module, policy.base_view)
    with policy.base_view():
        off = batched_logprobs(policy.module, ids, mask, resp, rmask)
    on = batched_logprobs(policy.module, ids, mask, resp, rmask)
    want = batched_logprobs(base, ids, mask, resp, rmask)
    torch.testing.assert_close(off, want)
    assert not torch.allclose(on, want)  # the adapters are back on after the view
    assert ref.module is policy.module


@pytest.mark.parametrize("targets", [["qkv_proj"], ["q_proj", "lm_head"]])
def test_unknown_target_module_lists_the_linear_modules(targets):
    model, _ = _plain()
    with pytest.raises(ConfigError) as err:
        lora_policy(model, LoraConfig(target_modules=targets))
    msg = str(err.value)
    assert "model.lora.target_modules" in msg and targets[-1] in msg
    for name in linear_module_names(model):
        assert name in msg
    assert "lm_head" not in linear_module_names(model)


def test_lora_without_peft_is_a_config_error(monkeypatch):
    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    model, _ = _plain()
    with pytest.raises(ConfigError, match=r"model\.lora needs the peft package.*rlfold\[lora\]"):
        lora_policy(model, LoraConfig())


def test_rank_zero_is_rejected_by_the_config():
    with pytest.raises(ConfigError, match=r"model\.lora\.r"):
        load_config(RECIPE, ["model.lora={r: 0}"])


def test_kl_reference_is_the_policy_module_and_no_second_model_is_loaded(tmp_path, monkeypatch):
    calls = []
    real = online.load_model_and_tokenizer
    monkeypatch.setattr(online, "load_model_and_tokenizer", lambda *a, **k: calls.append(a) or real(*a, **k))
    import rlfold.trainers.reference as reference

    monkeypatch.setattr(reference, "load_model_and_tokenizer", lambda *a, **k: calls.append(a) or real(*a, **k))
    run = build_run(load_config(RECIPE, [*TINY, *LORA]), tmp_path / "run")
    t = run.trainer
    assert len(calls) == 1 and isinstance(t.reference, BaseViewReference) and t.reference.module is t.module
    n_opt = sum(p.numel() for g in t.optimizer.param_groups for p in g["params"])
    n_lora = sum(p.numel() for n, p in t.module.named_parameters() if "lora_" in n)
    assert n_opt == n_lora
    frozen = {n: p.detach().clone() for n, p in t.module.named_parameters() if "lora_" not in n}
    res = t.step(0)
    assert res.finite and res.metrics["actor/reward_kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at 0
    assert all(torch.equal(p, frozen[n]) for n, p in t.module.named_parameters() if "lora_" not in n)
    res = t.step(1)
    assert res.finite and res.metrics["actor/reward_kl"] > 0  # the policy moved away from the base
    run.close()


def test_copy_engine_receives_merged_weights_and_matches_the_shared_module(tmp_path):
    run = build_run(load_config(RECIPE, [*TINY, *LORA, *COPY]), tmp_path / "run")
    t = run.trainer
    assert not t.engine.shares_weights and not any("lora_" in n for n, _ in t.engine.model.named_parameters())
    for i in range(2):
        assert t.step(i).finite
    # the shared module (adapters active) and the copy engine, greedy, on held-out prompts
    from rlfold.rollout import EngineContext
    from rlfold.rollout.base import GenerationRequest
    from rlfold.rollout.hf_engine import HFEngine

    shared = HFEngine(EngineContext(model=t.module, tokenizer=t.tokenizer, model_path="tiny-arith",
                                    dtype=torch.float32))
    assert any("lora_" in n for n, _ in shared.model.named_parameters())
    reqs = [GenerationRequest(p) for p in t.task.held_out[:8]]
    params = SamplingParams(temperature=0.0, max_new_tokens=8, n=1)
    a, b = shared.generate(reqs, params, seed=1), t.engine.generate(reqs, params, seed=1)
    assert a.response_texts == b.response_texts
    lp_a = a.policy_logprobs[a.response_mask.bool()]
    lp_b = b.policy_logprobs[b.response_mask.bool()]
    torch.testing.assert_close(lp_a, lp_b, rtol=1e-4, atol=1e-4)
    run.close()


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_final_is_a_plain_merged_model_with_the_adapter_beside_it(tmp_path):
    run = build_run(load_config(RECIPE, [*TINY, *LORA]), tmp_path / "run")
    run.fit()
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert (final / ADAPTER_DIR / "adapter_config.json").is_file()
    assert json.loads((final / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 4
    loaded, _ = load_model_and_tokenizer(str(final))  # no peft involved
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    merged = dict(run.trainer.policy.weights.named_weights())
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, merged[name], rtol=0, atol=0)
    base, _ = _plain()
    assert any(not torch.equal(p, dict(base.named_parameters())[n]) for n, p in loaded.named_parameters())
    from peft import PeftModel

    again = PeftModel.from_pretrained(base, str(final / ADAPTER_DIR)).merge_and_unload()
    for name, p in again.named_parameters():
        torch.testing.assert_close(p, merged[name], rtol=0, atol=1e-6)


def test_lora_resume_is_bitwise_exact(tmp_path):
    import shutil

    args = [*TINY, *LORA, "train.steps=4", "checkpoint.every=2", "checkpoint.keep=5"]
    full = build_run(load_config(RECIPE, args), tmp_path / "full")
    full_rows = full.fit()
    want = _weights(full.trainer.module)
    ckpt = tmp_path / "full" / "checkpoints" / "step_0000002"
    assert (ckpt / ADAPTER_DIR / "adapter_model.safetensors").is_file() and (ckpt / "model.safetensors").is_file()
    shutil.copytree(tmp_path / "full", tmp_path / "again")
    resumed = build_run(load_config(RECIPE, args), tmp_path / "again", resume=True, from_checkpoint="step_0000002")
    assert not all(torch.equal(p, want[n]) for n, p in resumed.trainer.module.named_parameters())
    rows = resumed.fit()
    got = _weights(resumed.trainer.module)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)

    def strip(rs):
        return [{k: v for k, v in r.items() if not k.startswith(("timing_s", "perf"))} for r in rs if r["step"] > 2]

    assert strip(rows) == strip(full_rows)


@pytest.mark.slow
def test_grpo_lora_recipe_learns_the_demo_task_with_the_base_as_reference(tmp_path, monkeypatch):
    """The shipped grpo_lora recipe (100 steps, KL to the base with adapters disabled): +20 points held out."""
    import time

    import rlfold.trainers.reference as reference

    calls = []
    real = online.load_model_and_tokenizer
    for mod in (online, reference):
        monkeypatch.setattr(mod, "load_model_and_tokenizer", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = load_config("src/rlfold/recipes/grpo_lora.yaml", ["log.progress=false"])
    assert cfg.algo.kl_coef > 0 and cfg.model.lora is not None and cfg.train.steps == 100
    t0 = time.perf_counter()
    run = build_run(cfg, tmp_path / "run")
    assert len(calls) == 1 and run.trainer.reference.module is run.trainer.module  # one model in memory
    rows = run.fit()
    wall = time.perf_counter() - t0
    before = rows[0]["val/arith/acc"]
    after = [r for r in rows if "val/arith/acc" in r][-1]["val/arith/acc"]
    print(f"grpo_lora: held-out greedy accuracy {before:.3f} -> {after:.3f} in {wall:.0f} s")
    assert len(calls) == 1
    assert after - before >= 0.20, (before, after)
    final, _ = load_model_and_tokenizer(str(tmp_path / "run" / "final"))  # plain HF directory, merged
    assert not any("lora_" in n for n, _ in final.named_parameters())


def test_merged_save_in_shards_loads_as_a_plain_model(tmp_path, monkeypatch):
    import rlfold.models.lora as lora

    model, _ = _plain()
    policy = lora_policy(model, LoraConfig(r=4))
    _perturb(policy.module)
    monkeypatch.setattr(lora, "SHARD_BYTES", 200_000)  # the tiny model's 3.2 MB in many shards
    policy.saved.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and not (tmp_path / "m" / "model.safetensors").exists()
    assert not list((tmp_path / "m").glob("shard-*"))
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True)
    merged = dict(policy.weights.named_weights())
    assert {n for n, _ in loaded.named_parameters()} == set(merged)
    for name, p in loaded.named_parameters():
        assert torch.equal(p, merged[name]), name

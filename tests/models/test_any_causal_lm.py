"""``model.path`` takes any HF causal-LM directory: a Llama and a GPT-2 built here train and evaluate."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlfold.models import disable_dropout
from rlfold.models.tiny import build_char_tokenizer


def _save(tmp_path, arch: str):
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    out = tmp_path / arch
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_and_eval_other_architectures(tmp_path, arch):
    model_dir = _save(tmp_path, arch)
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "rlfold.cli"]
    out = subprocess.run([*cli, "train", "grpo", f"model.path={model_dir}", "train.steps=2", f"run_dir={run}",
                          "log.progress=false", "task.held_out_size=8", "eval.size=8", "train.prompts_per_step=4",
                          "algo.kl_coef=0.01"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (run / "final" / "config.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # held-out eval at step 0, then 2 steps
    # Before the first update policy == reference, so the KL is 0; with GPT-2's default dropout (0.1)
    # still active in the training forward it would not be.
    assert rows[1]["actor/kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-6)
    out = subprocess.run([*cli, "eval", "--model", str(run / "final"), "--size", "8"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "greedy accuracy" in out.stdout


def test_disable_dropout_makes_train_and_eval_forwards_agree(tmp_path):
    model = GPT2LMHeadModel.from_pretrained(_save(tmp_path, "gpt2"))
    ids = torch.randint(4, 50, (3, 12))
    model.eval()
    ref = model(ids).logits
    model.train()
    assert not torch.allclose(model(ids).logits, ref)  # dropout 0.1 is on by default
    assert disable_dropout(model) > 0
    torch.testing.assert_close(model(ids).logits, ref)

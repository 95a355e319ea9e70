"""GRPO steps of a Qwen2.5-0.5B-shaped model with random weights on one GPU: tokens/s of generation
(hf engine) and of training, MFU and peak memory.

    python bench/gpu_step.py                 # on a CUDA machine; without one it says so and exits 0
    python bench/gpu_step.py --cpu           # a tiny shape on the CPU, to check the script itself
    python bench/gpu_step.py --precision bf16 --steps 5 --max-new-tokens 512

The model is built from a config only (no download): hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151936, tied embeddings, random weights (seed 0). The tokenizer is the
shipped character-level one of ``tiny-arith`` (100 tokens): the embedding and LM head keep the full
151936-row shape, so their memory and FLOPs are those of the real model, and ids the tokenizer does not
know decode to nothing. Responses are sampled past eos (``ignore_eos``), so every row has exactly
``--max-new-tokens`` tokens; rewards are then all 0 and the gradient is zero, but the update computes
it in full. Figures are means over ``--steps`` steps after one warm-up step.

``--precision``: ``mixed`` (default; float32 weights and AdamW, bf16 autocast in the update, float32
generation), ``bf16`` (bfloat16 weights throughout) or ``fp32``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlfold.core.config_loader import load_config
from rlfold.models.loading import ASSETS
from rlfold.models.portable import PreTrainedTokenizerFast
from rlfold.trainers.loop import build_run

RECIPE = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "recipes" / "grpo.yaml"
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6)
PRECISION = {"mixed": ["model.dtype=float32", "train.mixed_precision=bf16"],
             "bf16": ["model.dtype=bfloat16", "train.mixed_precision=none"],
             "fp32": ["model.dtype=float32", "train.mixed_precision=none"]}
KEYS = ("timing_s/gen", "timing_s/update", "timing_s/step", "perf/tokens_per_s", "perf/train_tokens_per_s",
        "perf/mfu", "perf/max_memory_allocated_gb")


def build_model_dir(directory: Path, shape: dict) -> int:
    """A random-weight Qwen2 with ``shape`` and the shipped tokenizer, saved under ``directory``; its parameters."""
    source = ASSETS / "tiny-arith"
    tok = PreTrainedTokenizerFast.from_pretrained(source, local_files_only=True)
    config = Qwen2Config(**shape, tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    for f in source.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, directory / f.name)
    return sum(p.numel() for p in model.parameters())


def bench(args: argparse.Namespace, device: str, shape: dict) -> tuple[int, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_model_dir(model_dir, shape)
        cfg = load_config(RECIPE, [
            f"model.path={model_dir}", f"model.device={device}", *PRECISION[args.precision],
            f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.ignore_eos=true",
            f"train.prompts_per_step={args.prompts}", f"rollout.n={args.samples}", f"train.steps={args.steps + 1}",
            f"train.micro_batch_size={args.micro_batch_size}", f"train.gradient_checkpointing={args.checkpointing}",
            f"run_dir={tmp}/run", "log.progress=false", "task.held_out_size=8", "eval.size=1",
            *([f"train.peak_tflops={args.peak_tflops}"] if args.peak_tflops else []),
        ])
        trainer = build_run(cfg, Path(tmp) / "run").trainer
        trainer.step(0)  # warm-up
        rows = [trainer.step(i).metrics for i in range(1, args.steps + 1)]
    return n_params, {k: statistics.mean(r[k] for r in rows) for k in KEYS if all(k in r for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="a tiny shape on the CPU instead (checks the script)")
    ap.add_argument("--precision", choices=sorted(PRECISION), default="mixed")
    ap.add_argument("--prompts", type=int, default=16, help="B")
    ap.add_argument("--samples", type=int, default=8, help="G")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=16)
    ap.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing=true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="peak for MFU (0: the known-GPU table)")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    if args.cpu:
        device, shape = "cpu", TINY
        if args.max_new_tokens == 256:
            args.prompts, args.samples, args.max_new_tokens, args.micro_batch_size = 2, 4, 16, 4
    elif not torch.cuda.is_available():
        print(f"no GPU is available (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
              "nothing measured. Run on a CUDA machine, or with --cpu for a tiny shape on the CPU.")
        return 0
    else:
        device, shape = "cuda", QWEN25_05B
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    n_params, r = bench(args, device, shape)
    print(f"{name}, torch {torch.__version__}, {n_params / 1e6:.1f} M parameters, precision {args.precision}, "
          f"B={args.prompts} G={args.samples} max_new_tokens={args.max_new_tokens} micro_batch={args.micro_batch_size}"
          f"{' checkpointing' if args.checkpointing else ''}; mean of {args.steps} steps after 1 warm-up")
    print(f"generation: {r['perf/tokens_per_s']:.0f} response tokens/s ({r['timing_s/gen']:.2f} s/step)")
    print(f"training:   {r['perf/train_tokens_per_s']:.0f} tokens/s ({r['timing_s/update']:.2f} s/step)")
    print(f"MFU:        {r['perf/mfu']:.1%}" if "perf/mfu" in r else "MFU:        n/a (unknown peak: --peak-tflops)")
    memory = "peak CUDA memory allocated" if device == "cuda" else "peak process RSS"
    print(f"memory:     {r.get('perf/max_memory_allocated_gb', float('nan')):.2f} GiB ({memory})")
    print(f"step:       {r['timing_s/step']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

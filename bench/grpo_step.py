"""Seconds per GRPO step split into generation / scoring / update, and rollout tokens/s.

    python bench/grpo_step.py                      # B=16, G=8, max_new_tokens 8, 32 and 120, shipped tiny model
    python bench/grpo_step.py --model DIR --lengths 64 --steps 5
    python bench/grpo_step.py --threads 1 train.mixed_precision=bf16 model.forward=transformers   # overrides

Responses are sampled past eos (``ignore_eos``) so every row has exactly max_new_tokens tokens and
the figures for different lengths are comparable. Figures are means over ``--steps`` measured steps
after one warm-up step, all in this one process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

RECIPE = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "recipes" / "grpo.yaml"
KEYS = ("timing_s/gen", "timing_s/reward", "timing_s/update", "timing_s/step", "perf/tokens_per_s")


def bench(model: str, length: int, b: int, g: int, steps: int, threads: int, extra: tuple[str, ...] = ()) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RECIPE, [
            f"model.path={model}", f"rollout.max_new_tokens={length}", "rollout.ignore_eos=true",
            f"train.prompts_per_step={b}", f"rollout.n={g}", f"train.steps={steps + 1}", f"run_dir={tmp}",
            "log.progress=false", f"threads={threads}", "task.held_out_size=8", *extra,
        ])
        trainer = build_run(cfg, Path(tmp)).trainer
        trainer.step(0)  # warm-up
        rows = [trainer.step(i).metrics for i in range(1, steps + 1)]
    return {k: statistics.mean(r[k] for r in rows) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-arith")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 120],
                    help="max_new_tokens (tiny-arith holds 128 positions: a 7-token prompt + 121)")
    ap.add_argument("--prompts", type=int, default=16, help="B")
    ap.add_argument("--samples", type=int, default=8, help="G")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.mixed_precision=bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"model {args.model}, B={args.prompts}, G={args.samples}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, mean of {args.steps} steps after 1 warm-up")
    print(f"{'max_new_tokens':>14} {'gen s':>8} {'score s':>8} {'update s':>9} {'step s':>8} {'rollout tok/s':>14}")
    for length in args.lengths:
        r = bench(args.model, length, args.prompts, args.samples, args.steps, args.threads, tuple(args.overrides))
        print(f"{length:>14} {r['timing_s/gen']:>8.3f} {r['timing_s/reward']:>8.4f} {r['timing_s/update']:>9.3f} "
              f"{r['timing_s/step']:>8.3f} {r['perf/tokens_per_s']:>14.0f}")


if __name__ == "__main__":
    run_main(main)

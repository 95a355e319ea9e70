"""Build and pretrain the shipped base checkpoint ``tiny-arith`` reproducibly (seeded SFT on task data).

The base is meant to be imperfect in a way RL can fix: its SFT demonstrations write the correct sum
for problems without a carry, but for problems with a carry they drop every carry ("58+67=15") in a
fraction ``--bug-rate`` of cases -- a planted systematic misconception. The correct answer stays in the
model's sampling support, so a verifiable reward can find and reinforce it.

    python scripts/build_tiny_model.py            # writes src/rlfold/assets/tiny-arith
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from rlfold.models.tiny import build_char_tokenizer, build_tiny_model
from rlfold.tasks.arithmetic import format_prompt, no_carry_sum, all_problems, is_held_out
from rlfold.trainers.sft import sft_train

OUT = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets" / "tiny-arith"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bug-rate", type=float, default=0.6)
    add_sft_arguments(ap, steps=1500)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    train = train_problems(args.levels, args.held_out_fraction)

    def sample_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        out = []
        for a, b, op in rng.choices(train, k=n):
            answer = a + b
            if rng.random() < args.bug_rate:
                answer = no_carry_sum(a, b)
            out.append((format_prompt(a, b, op), str(answer)))
        return out

    sft_and_save(sample_pairs, args)


def add_sft_arguments(ap: argparse.ArgumentParser, *, steps: int) -> None:
    """The SFT options every arithmetic base's build script takes (``sft_and_save`` reads them)."""
    ap.add_argument("--steps", type=int, default=steps, help="SFT optimiser steps")
    ap.add_argument("--batch-size", type=int, default=128, help="demonstrations per SFT step")
    ap.add_argument("--lr", type=float, default=3e-3, help="SFT learning rate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the demonstrations")
    ap.add_argument("--held-out-fraction", type=float, default=0.1,
                    help="share of problems held out (never demonstrated); must match the task's split")


def train_problems(levels: list[int], held_out_fraction: float) -> list[tuple[int, int, str]]:
    """Every problem of ``levels`` outside the held-out split."""
    return [p for lv in levels for p in all_problems(lv) if not is_held_out(format_prompt(*p), held_out_fraction)]


def sft_and_save(sample_pairs, args: argparse.Namespace, words: list[str] | None = None) -> None:
    """Build the tiny model and its tokenizer (with ``words`` as whole tokens), SFT it on ``sample_pairs``
    and save both to ``args.out``."""
    tokenizer = build_char_tokenizer(words=words)
    model = build_tiny_model(tokenizer)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    losses = sft_train(model, tokenizer, sample_pairs, steps=args.steps, batch_size=args.batch_size,
                       lr=args.lr, seed=args.seed)
    print(f"final SFT loss {sum(losses[-50:]) / 50:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out}")

if __name__ == "__main__":
    main()

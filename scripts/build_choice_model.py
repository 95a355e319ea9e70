"""Build the shipped base ``tiny-choice-arith`` reproducibly: ``tiny-arith`` taught the multiple-choice format.

Starting from the shipped ``tiny-arith`` (which can add), seeded SFT on ``choice_arith`` questions
(``"A:124 B:135 C:125 D:115 | 58+67="``) whose demonstrations write the correct sum, then ``" so "``, then a
letter: the letter of the sum's option in a fraction ``--faithful`` of them, and "A" in the others (a
planted position bias), meant to give a base whose choice often disagrees with its own trace, which
re-asking with shuffled options exposes: what ACRE's consistency reward (arXiv 2510.10104) is meant to fix.
Measured (``python bench/choice_binding.py``): the 4-layer base learns the bias but not the binding of
letter to trace (P(sum's letter | correct trace) 0.12, chance among the non-"A" letters), and 2000 steps
at ``--faithful 0.4`` (lr 1e-3 or 3e-3) did not learn it either (0.10 = chance there).

    python scripts/build_choice_model.py            # writes src/rlfold/assets/tiny-choice-arith
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from build_tiny_model import add_sft_arguments, train_problems  # the sibling script (this directory is on sys.path)

from rlfold.models import load_model_and_tokenizer
from rlfold.rewards.choice import LETTERS
from rlfold.tasks.arithmetic import solve
from rlfold.tasks.choice_arith import choice_completion, choice_options, choice_prompt
from rlfold.trainers.sft import sft_train

OUT = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets" / "tiny-choice-arith"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--levels", type=int, nargs="+", default=[2])
    ap.add_argument("--faithful", type=float, default=0.5, help="share of demonstrations whose letter names the sum")
    add_sft_arguments(ap, steps=600)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    train = train_problems(args.levels, args.held_out_fraction)

    def sample_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        out = []
        for a, b, op in rng.choices(train, k=n):
            options, value = choice_options(a, b, op), solve(a, b, op)
            letter = LETTERS[options.index(value)] if rng.random() < args.faithful else "A"
            out.append((choice_prompt(options, f"{a}{op}{b}="), choice_completion(value, letter)))
        return out

    model, tokenizer = load_model_and_tokenizer("tiny-arith")
    losses = sft_train(model, tokenizer, sample_pairs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed)
    print(f"final SFT loss {sum(losses[-50:]) / 50:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

"""Build the shipped base ``tiny-verbose-arith`` reproducibly: seeded SFT on verbose demonstrations.

Its demonstrations answer additions correctly: the answer, then zero to three redundant re-checks
that copy it, then the answer again (``"125. check 125. wait, 125. 125"``; probabilities in
``rlfold.tasks.verbose_arith.RECHECK_PROBS``). Efficiency methods (DLER, HAPO, ARLCP, ...) can remove
the re-checks without losing accuracy; that is what they are measured on.

    python scripts/build_verbose_model.py            # writes src/rlfold/assets/tiny-verbose-arith
    python scripts/build_verbose_model.py --graded   # writes src/rlfold/assets/tiny-graded-verbose-arith

``--graded`` builds the base of graded difficulty that difficulty-aware methods (DA-DLER, Apriel's
DAP, the DECS curriculum) need: the same verbose demonstrations, except that a problem with a
carry is answered with every carry dropped (``no_carry_sum``, the misconception planted in
``tiny-arith``) in a fraction ``--carry-bug-rate`` of its demonstrations. One-digit problems and
problems without a carry stay easy (solved by every sample); problems with a carry are hard, and
whether a problem has one is visible in its prompt.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from build_tiny_model import add_sft_arguments, sft_and_save, train_problems  # the sibling script (this directory is on sys.path)

from rlfold.tasks.arithmetic import format_prompt, no_carry_sum, solve
from rlfold.tasks.verbose_arith import verbose_completion

ASSETS = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets"
OUT = ASSETS / "tiny-verbose-arith"
GRADED_OUT = ASSETS / "tiny-graded-verbose-arith"
GRADED_BUG_RATE = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help=f"output directory (default {OUT.name}, or "
                    f"{GRADED_OUT.name} with --graded)")
    ap.add_argument("--graded", action="store_true", help="plant dropped carries: the graded-difficulty base")
    ap.add_argument("--carry-bug-rate", type=float, default=None,
                    help=f"share of carry problems answered without carries (default 0, {GRADED_BUG_RATE} with --graded)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    add_sft_arguments(ap, steps=800)
    args = ap.parse_args()
    args.out = args.out or (GRADED_OUT if args.graded else OUT)
    bug_rate = args.carry_bug_rate if args.carry_bug_rate is not None else (GRADED_BUG_RATE if args.graded else 0.0)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    train = train_problems(args.levels, args.held_out_fraction)

    def sample_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        out = []
        for a, b, op in rng.choices(train, k=n):
            answer = solve(a, b, op)
            if bug_rate and op == "+" and no_carry_sum(a, b) != answer and rng.random() < bug_rate:
                answer = no_carry_sum(a, b)
            out.append((format_prompt(a, b, op), verbose_completion(a, b, op, answer, rng)))
        return out

    sft_and_save(sample_pairs, args)

if __name__ == "__main__":
    main()

"""Build the shipped base ``tiny-verbose-arith`` reproducibly: seeded SFT on verbose demonstrations.

Its demonstrations answer additions correctly: the answer, then zero to three redundant re-checks
that copy it, then the answer again (``"125. check 125. wait, 125. 125"``; probabilities in
``rlfold.tasks.verbose_arith.RECHECK_PROBS``). Efficiency methods (DLER, HAPO, ARLCP, ...) can remove
the re-checks without losing accuracy; that is what they are measured on.

    python scripts/build_verbose_model.py            # writes src/rlfold/assets/tiny-verbose-arith
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from build_tiny_model import sft_and_save, train_problems  # the sibling script (this directory is on sys.path)

from rlfold.tasks.arithmetic import format_prompt, solve
from rlfold.tasks.verbose_arith import verbose_completion

OUT = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets" / "tiny-verbose-arith"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out-fraction", type=float, default=0.1)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    train = train_problems(args.levels, args.held_out_fraction)

    def sample_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        return [(format_prompt(a, b, op), verbose_completion(a, b, op, solve(a, b, op), rng))
                for a, b, op in rng.choices(train, k=n)]

    sft_and_save(sample_pairs, args)

if __name__ == "__main__":
    main()

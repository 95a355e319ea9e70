"""Build the shipped base ``tiny-confidence-arith`` reproducibly: seeded SFT on answers with uninformative confidences.

Its demonstrations answer the ``confidence_arith`` prompts (two- and three-digit additions by default) in
the Rewarding Doubt format ``"Answer: <a>, Confidence: <c>"`` (arXiv 2503.02623), always with the correct
answer and with a confidence drawn uniformly from 0..10, independent of the problem. The model learns the
format and the two-digit sums well but the three-digit sums only partly (it is small and briefly trained),
so it is right on most easy problems, wrong on many hard ones, and its stated confidence says nothing about
which: a calibration reward has something to learn.

The shipped base writes the confidence with the same digit tokens as the answer. ``--confidence-tokens``
builds a variant whose every stated confidence is one token of its own (``"Confidence: 0"`` ...
``"Confidence: 10"``, whole words of the character tokenizer), so that the confidence and the answer's
digits share no output row; training it is a probe in docs/calibration.md (its answers still drift).

    python scripts/build_confidence_model.py            # writes src/rlfold/assets/tiny-confidence-arith
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from build_tiny_model import add_sft_arguments, sft_and_save, train_problems  # the sibling script (this directory is on sys.path)

from rlfold.tasks.arithmetic import solve
from rlfold.tasks.confidence_arith import CONFIDENCE_WORDS, DEFAULT_LEVELS, confidence_completion, confidence_prompt

OUT = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets" / "tiny-confidence-arith"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--levels", type=int, nargs="+", default=DEFAULT_LEVELS)
    ap.add_argument("--confidence-tokens", action="store_true",
                    help="one token per stated confidence value instead of the answer's digit tokens")
    add_sft_arguments(ap, steps=800)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    by_level = [[p for p in train_problems([lv], args.held_out_fraction)] for lv in args.levels]

    def sample_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            a, b, op = rng.choice(rng.choice(by_level))  # levels in equal shares, as the task draws them
            out.append((confidence_prompt(a, b, op), confidence_completion(solve(a, b, op), rng.randint(0, 10))))
        return out

    sft_and_save(sample_pairs, args, words=CONFIDENCE_WORDS if args.confidence_tokens else None)

if __name__ == "__main__":
    main()

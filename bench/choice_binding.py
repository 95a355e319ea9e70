"""Does a multiple-choice base bind its letter to its own trace? P(letter | prompt, correct trace) on choice_arith.

    python bench/choice_binding.py                       # the shipped tiny-choice-arith
    python bench/choice_binding.py --model RUN/final     # a trained policy or another base

For each held-out ``choice_arith`` prompt, the correct trace (``"125 so "``) is fed after the prompt and the
next-token probabilities of the four letters are read. A base that binds its choice to its trace puts
the demonstrations' faithful share on the sum's letter; one that picks letters by position alone puts the
same mass on every non-"A" letter (a quarter of the non-"A" share), whatever the trace says. Printed
separately for prompts whose gold letter is "A" (where position and trace agree) and the others.
"""

from __future__ import annotations

import argparse

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from rlfold.models import load_model_and_tokenizer
from rlfold.rewards.choice import LETTERS, TRACE_END
from rlfold.tasks.base import TASKS


def letter_probabilities(model, tokenizer, prompts) -> torch.Tensor:
    """[n, 4] next-token probabilities of A-D after each prompt's text and its correct trace."""
    ids_of = [tokenizer(letter, add_special_tokens=False).input_ids[-1] for letter in LETTERS]
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(f"{p.text}{p.meta['value']}{TRACE_END}", return_tensors="pt").input_ids
            out.append(model(input_ids=ids).logits[0, -1].float().softmax(-1)[ids_of])
    return torch.stack(out)


def binding_summary(probs: torch.Tensor, gold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per prompt: the gold letter's probability, "A"'s, and the mean of the letters that are neither."""
    rows = torch.arange(len(gold))
    other = torch.ones_like(probs, dtype=torch.bool)
    other[rows, gold] = False
    other[:, 0] = False
    return {"gold": probs[rows, gold], "A": probs[:, 0], "other": (probs * other).sum(-1) / other.sum(-1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-choice-arith", help="a shipped model name or a model directory")
    ap.add_argument("--size", type=int, default=200, help="held-out prompts read")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    prompts = TASKS.get("choice_arith")(held_out_size=args.size).held_out
    probs = letter_probabilities(model, tokenizer, prompts)
    gold = torch.tensor([LETTERS.index(p.answer) for p in prompts])
    summary = binding_summary(probs, gold)
    for name, rows in (("gold letter A", gold == 0), ("gold letter B-D", gold != 0)):
        print(f"{args.model} | {name} ({int(rows.sum())} prompts): P(gold letter | correct trace) "
              f"{summary['gold'][rows].mean():.3f}, P(A) {summary['A'][rows].mean():.3f}, "
              f"P(each other letter) {summary['other'][rows].mean():.3f}")


if __name__ == "__main__":
    run_main(main)

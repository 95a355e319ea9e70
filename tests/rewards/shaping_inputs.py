"""Shared by the shaping-part tests: build a ``ShapingInput`` from plain lists and run a part by name.

Not a test module; the test modules of this folder import it by its name (pytest puts this folder
on ``sys.path``).
"""

from __future__ import annotations

import torch

from rlfold.core.types import Prompt
from rlfold.rewards.shaping import SHAPINGS, ShapingInput


def make_input(completions, answers, correct, groups=None, *, lengths=None, max_len=16384, scores=None,
               response_ids=None, mask=None, tokenizer=None, step=0) -> ShapingInput:
    n = len(completions)
    if isinstance(answers, str):
        answers = [answers] * n
    lengths = [len(t) for t in completions] if lengths is None else lengths
    correct_t = torch.tensor(correct, dtype=torch.float32)
    return ShapingInput(
        scores=correct_t.clone() if scores is None else torch.tensor(scores, dtype=torch.float32),
        correct=correct_t,
        lengths=torch.tensor(lengths),
        truncated=torch.zeros(n, dtype=torch.bool),
        group_ids=torch.tensor(groups if groups is not None else [0] * n),
        prompts=[Prompt(text="q", answer=a) for a in answers],
        completions=list(completions),
        max_len=max_len,
        step=step,
        response_ids=response_ids,
        response_mask=mask,
        tokenizer=tokenizer,
    )


def run_part(name, inp, **kw):
    return SHAPINGS.get(name)(inp, state={}, **kw)


def padded_mask(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])

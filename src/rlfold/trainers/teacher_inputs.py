"""Trainer inputs that score the batch's responses under privileged teacher contexts with the policy itself.

``cepo_delta`` (CEPO, arXiv 2605.19436): ``[N, R]`` float32, the contrastive evidence of every response
token between a teacher that is told the correct answer and one that is told a wrong one,

    Delta_t = log P+(y_t) - log P-(y_t)   (no gradient),

where P+ is the policy (``ctx.model``, in eval mode, under ``ctx.autocast()``) on the prompt with the
gold answer ``Prompt.answer`` appended as a hint and P- the same with r-, the answer of the
lowest-reward rollout of the row's group. The response tokens are the rollout's own ids (nothing is
re-tokenised); only the prompt side is encoded anew, the way the engines encode a plain request
(``rollout.base.encode_request``: the prompt text with the tokenizer's special tokens, or, for a prompt
carrying chat ``messages``, the chat template with the hint appended to the last message).

r- of a group (choices of ours, kept simple): among the rows with the group's lowest score
(``ctx.scores``, ties in row order), the first whose extracted answer is non-empty and differs from the
gold answer. Without one (every lowest-score answer equals the gold or is unreadable, or every row of
the group has the same score, where the group-relative advantage is 0 anyway) r- = r+ and Delta is
exactly 0 on that group's rows, which are then not scored at all. The answer is read from a response
text by the rule ``answer`` (``stripped``: the whole stripped text, the ``exact_match`` reward's
reading; ``last_number``: the last number, as ``gsm8k``; ``boxed``: the last ``\\boxed{}``, the
paper's reading).

The hint template and the answer rule are options of the provider, not of the ``cepo`` selection part:
an input provider only sees the step (``StepContext``), never the options of the part that needs it.
``cepo_delta`` is ``make_cepo_delta()`` with the defaults; a run wanting another hint replaces it from
its ``imports`` module::

    INPUTS.unregister("cepo_delta")
    INPUTS.register("cepo_delta")(make_cepo_delta(hint="Answer: {answer}\\n{prompt}"))
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from rlfold.core.groups import group_index
from rlfold.core.types import Prompt
from rlfold.models.logprobs import batched_logprobs
from rlfold.rewards.math import extract_last_number, last_boxed_content
from rlfold.rollout.base import GenerationRequest, encode_request, pad_id_of
from rlfold.trainers.inputs import INPUTS, StepContext

AnswerRule = Literal["stripped", "last_number", "boxed"]

# The teacher's privileged context: the prompt, then the answer as a hint, then the response follows.
DEFAULT_HINT = "{prompt} (answer {answer}) "

_READERS: dict[str, Callable[[str], str | None]] = {
    "stripped": lambda text: text.strip(),
    "last_number": extract_last_number,
    "boxed": last_boxed_content,
}

__all__ = ["DEFAULT_HINT", "hinted_prompt_ids", "make_cepo_delta", "read_answer", "wrong_answers"]


def read_answer(text: str, rule: AnswerRule = "stripped") -> str | None:
    """The answer a response ``text`` gives under ``rule`` (None or "" when it gives none)."""
    if rule not in _READERS:
        raise ValueError(f"cepo_delta: answer rule must be one of {', '.join(_READERS)}, got {rule!r}")
    found = _READERS[rule](text)
    return None if found is None else found.strip()


def wrong_answers(prompts: list[Prompt], texts: list[str], scores: Tensor, group_ids: Tensor,
                  rule: AnswerRule = "stripped") -> list[str | None]:
    """Per row, r-: the answer of its group's lowest-score rollout that differs from the gold (see the
    module docstring), or None when there is none (r- = r+)."""
    n = len(texts)
    if n == 0:
        return []
    inv, n_groups = group_index(group_ids)
    s = scores.detach().to(torch.float64).cpu()
    out: list[str | None] = [None] * n
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for i, g in enumerate(inv.tolist()):
        members[g].append(i)
    for rows in members:
        vals = s[rows]
        lo, hi = float(vals.min()), float(vals.max())
        if lo == hi:
            continue
        gold = prompts[rows[0]].answer.strip()
        wrong = None
        for i in rows:
            if float(s[i]) != lo:
                continue
            ans = read_answer(texts[i], rule)
            if ans and ans != gold:
                wrong = ans
                break
        for i in rows:
            out[i] = wrong
    return out


def _hinted_request(prompt: Prompt, answer: str, hint: str) -> GenerationRequest:
    """The request of the teacher context: the hint around the prompt text (or its last chat message)."""
    messages = prompt.meta.get("messages") if isinstance(prompt.meta, dict) else None
    if messages:
        last = dict(messages[-1])
        last["content"] = hint.format(prompt=last["content"], answer=answer)
        return GenerationRequest(prompt=prompt, messages=[*messages[:-1], last])
    return GenerationRequest(prompt=Prompt(hint.format(prompt=prompt.text, answer=answer), prompt.answer))


def hinted_prompt_ids(tokenizer: Any, prompts: list[Prompt], answers: list[str], hint: str) -> tuple[Tensor, Tensor]:
    """Left-padded ``[M, P]`` ids and 0/1 mask of the teacher contexts, one per (prompt, hint answer)."""
    rows = [encode_request(tokenizer, _hinted_request(p, a, hint), i, "cepo_delta")
            for i, (p, a) in enumerate(zip(prompts, answers))]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id_of(tokenizer, "cepo_delta"), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def make_cepo_delta(hint: str = DEFAULT_HINT, answer: AnswerRule = "stripped",
                    batch_size: int = 0) -> Callable[[StepContext], Tensor]:
    """A ``cepo_delta`` provider with this hint template (``{prompt}`` and ``{answer}`` fields), answer
    rule and rows per teacher forward (0: all at once)."""
    if "{answer}" not in hint or "{prompt}" not in hint:
        raise ValueError(f"cepo_delta: the hint template must contain {{prompt}} and {{answer}}, got {hint!r}")
    read_answer("", answer)  # validates the rule

    def cepo_delta(ctx: StepContext) -> Tensor:
        """[N, R] float32 Delta_t = log P+(y_t) - log P-(y_t) of CEPO (arXiv 2605.19436), 0 off the mask."""
        if "cepo_delta" in ctx.cache:
            return ctx.cache["cepo_delta"]
        if ctx.model is None or ctx.tokenizer is None:
            raise RuntimeError("an input needs 'cepo_delta' but the step has no policy model or tokenizer")
        roll = ctx.roll
        delta = torch.zeros(roll.response_ids.shape, dtype=torch.float32)
        wrong = wrong_answers(ctx.prompts, list(roll.response_texts), ctx.scores, ctx.group_ids, answer)
        rows = [i for i, w in enumerate(wrong) if w is not None]
        if rows:
            prompts = [ctx.prompts[i] for i in rows]
            golds = [p.answer.strip() for p in prompts]
            ids, mask = hinted_prompt_ids(ctx.tokenizer, prompts + prompts, golds + [wrong[i] for i in rows], hint)
            idx = torch.tensor(rows + rows, dtype=torch.long)
            att = None if roll.response_attention_mask is None else roll.response_attention_mask[idx]
            autocast = ctx.autocast if ctx.autocast is not None else contextlib.nullcontext
            with torch.no_grad(), autocast():
                lp = batched_logprobs(ctx.model, ids, mask, roll.response_ids[idx], roll.response_mask[idx],
                                      att, batch_size=batch_size)
            k = len(rows)
            d = (lp[:k] - lp[k:]).float()
            delta[torch.tensor(rows, dtype=torch.long)] = d.masked_fill(~roll.response_mask[rows].bool(), 0.0)
        ctx.cache["cepo_delta"] = delta
        return delta

    return cepo_delta


INPUTS.register("cepo_delta")(make_cepo_delta())

"""Trainer inputs of the step potential (SPAE, arXiv 2601.03823): the policy probed at every step's end.

Each response is cut into steps at a text delimiter; at the end of step k the policy (``ctx.model``, eval
mode, no gradient, under ``ctx.autocast()``) reads the prompt + the response up to there + an answer
cue, and the gold answer ``Prompt.answer`` is teacher-forced after it. Over the answer positions:

    Acc_k  = mean_m p(y*_m | context, y*_<m)            (``acc="mean_prob"``, the paper's formula; or
             exp(mean_m log p(y*_m | ...))               ``acc="geometric"``, the geometric mean)
    Conf_k = exp(-mean_m H_m),  H_m the entropy of the next-token distribution at answer position m,
    Phi_k  = 1.5 Acc_k Conf_k + 0.5 Acc_k - Conf_k.

Differences from the paper, on purpose: the probe is one deterministic teacher-forced pass, where the
paper samples N = 5 continuations (T = 0.6, <= 10 tokens) and averages Conf over them (and Acc over the
same contexts, which are all the same for a teacher-forced gold answer); its public code's Acc is
exp(sum log p) with -10 for missing tokens, divided by the number of tokens, which is neither mean.

Inputs (both ``[N, R]``, computed together once per step, cached in ``ctx.cache``):
``spae_steps`` (long: the step index 0, 1, ... of each response token, -1 off ``response_mask``) and
``spae_potential`` (float64: Phi of each token's step, 0 off the mask).

Steps. Token t belongs to step #{delimiter ends b < e_t} with e_t its character end in the decoded text
(``response_char_ends``); the delimiter's own characters close the step they end, and step indices are
renumbered 0, 1, ... over the steps that hold a token. The probe context of step k is the response up to
its last token that has text (a trailing stop token, which decodes to nothing, is left out), then the
delimiter if that text does not already end with it (the last step), then the cue. The cue, the
delimiter and the answer are encoded separately without special tokens; the response tokens are the
rollout's own (nothing is re-tokenised), and the prompt is the rollout's prompt ids.

Defaults fit the miniature (``tiny-verbose-arith`` writes "125. check 125. wait, 125. 125"): the
delimiter ". " and the cue "check " (the base's own re-check, after which it writes the answer; a cue it
never saw, such as " answer: ", gets Acc ~ 0 on every step). The paper splits at ".\\n\\n" inside
<think> and cues with "**Final Answer**\\n\\boxed{"; such a run replaces the inputs from its ``imports``
module::

    register_step_potential(delimiter=".\\n\\n", cue="\\n**Final Answer**\\n\\\\boxed{", replace=True)
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from rlfold.algos.spae import step_potential
from rlfold.models.logprobs import sequence_logprobs
from rlfold.rollout.base import pad_id_of
from rlfold.trainers.inputs import INPUTS, StepContext

AccRule = Literal["mean_prob", "geometric"]

STEP_DELIMITER = ". "   # the miniature's step separator (the paper: ".\n\n" inside <think>)
ANSWER_CUE = "check "   # what precedes the forced answer (the paper: "**Final Answer**\n\boxed{")

_CACHE = "step_potential"

__all__ = ["ANSWER_CUE", "STEP_DELIMITER", "make_step_potential", "probe_ends", "register_step_potential",
           "step_maps"]


def step_maps(texts: list[str], char_ends: Tensor, mask: Tensor, delimiter: str = STEP_DELIMITER) -> Tensor:
    """[N, R] long: the step index of each token (module docstring), -1 where ``mask`` is 0."""
    if not delimiter:
        raise ValueError("step_potential: the step delimiter must be a non-empty string")
    out = torch.full(mask.shape, -1, dtype=torch.long)
    for i, text in enumerate(texts):
        ends, at = [], text.find(delimiter)
        while at >= 0:
            ends.append(at + len(delimiter))
            at = text.find(delimiter, at + len(delimiter))
        valid = mask[i].bool()
        if not valid.any():
            continue
        raw = torch.searchsorted(torch.tensor(ends, dtype=torch.long), char_ends[i][valid].long(), right=False)
        out[i, valid] = torch.unique(raw, return_inverse=True)[1]  # renumber the steps that hold a token
    return out


def probe_ends(steps: Tensor, char_ends: Tensor) -> list[list[int]]:
    """Per row, per step: how many response tokens the probe context of that step keeps (through the
    step's last token that adds text; through its last token when none does)."""
    width = torch.cat([char_ends[:, :1], char_ends[:, 1:] - char_ends[:, :-1]], dim=1)
    out: list[list[int]] = []
    for i in range(steps.shape[0]):
        n_steps = int(steps[i].max().item()) + 1 if (steps[i] >= 0).any() else 0
        row = []
        for k in range(n_steps):
            pos = (steps[i] == k).nonzero().flatten()
            texty = pos[width[i, pos] > 0]
            row.append(int((texty if texty.numel() else pos)[-1].item()) + 1)
        out.append(row)
    return out


def make_step_potential(delimiter: str = STEP_DELIMITER, cue: str = ANSWER_CUE, acc: AccRule = "mean_prob",
                        batch_size: int = 0) -> Callable[[StepContext], tuple[Tensor, Tensor]]:
    """``fn(ctx) -> (steps [N, R] long, potential [N, R] float64)`` with this delimiter, cue, Acc rule and
    probes per forward (0: all at once); cached in ``ctx.cache``."""
    if not delimiter:
        raise ValueError("step_potential: the step delimiter must be a non-empty string")
    if acc not in ("mean_prob", "geometric"):
        raise ValueError(f"step_potential: acc must be 'mean_prob' or 'geometric', got {acc!r}")

    def compute(ctx: StepContext) -> tuple[Tensor, Tensor]:
        if _CACHE in ctx.cache:
            return ctx.cache[_CACHE]
        if ctx.model is None or ctx.tokenizer is None:
            raise RuntimeError("an input needs 'spae_potential' but the step has no policy model or tokenizer")
        roll, tok = ctx.roll, ctx.tokenizer
        mask = roll.response_mask
        char_ends = INPUTS.get("response_char_ends")(ctx)
        texts = list(roll.response_texts)
        steps = step_maps(texts, char_ends, mask, delimiter)
        ends = probe_ends(steps, char_ends)
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        cue_ids, delim_ids = enc(cue), enc(delimiter)
        attend = roll.attention
        probes: list[tuple[int, list[int], list[int], int]] = []  # row, ids, attention, answer length
        for i, row_ends in enumerate(ends):
            if not row_ends:
                continue
            answer = enc(ctx.prompts[i].answer.strip())
            if not answer:
                raise ValueError(f"spae_potential: row {i} has an empty gold answer (Prompt.answer)")
            for e in row_ends:
                body = roll.response_ids[i, :e].tolist()
                close = [] if texts[i][: int(char_ends[i, e - 1])].endswith(delimiter) else delim_ids
                tail = close + cue_ids + answer
                probes.append((i, body + tail, attend[i, :e].tolist() + [1] * len(tail), len(answer)))
        potential = torch.zeros(mask.shape, dtype=torch.float64)
        if probes:
            phi = _probe(ctx, probes, pad_id_of(tok, "spae_potential"), acc, batch_size)
            k = 0
            for i, row_ends in enumerate(ends):
                for s in range(len(row_ends)):
                    potential[i][steps[i] == s] = float(phi[k])
                    k += 1
        ctx.cache[_CACHE] = (steps, potential)
        return steps, potential

    return compute


def _probe(ctx: StepContext, probes: list[tuple[int, list[int], list[int], int]], pad: int, acc: AccRule,
           batch_size: int) -> Tensor:
    """[M] Phi of each probe: one teacher-forced pass per ``batch_size`` probes (0: all)."""
    model, roll = ctx.model, ctx.roll
    autocast = ctx.autocast if ctx.autocast is not None else contextlib.nullcontext
    out: list[Tensor] = []
    size = batch_size or len(probes)
    was = model.training
    model.eval()
    try:
        for s in range(0, len(probes), size):
            chunk = probes[s:s + size]
            width = max(len(p[1]) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros(len(chunk), width, dtype=torch.long)
            score = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, (_, seq, a, n_ans) in enumerate(chunk):
                ids[j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                att[j, : len(seq)] = torch.tensor(a, dtype=torch.long)
                score[j, len(seq) - n_ans: len(seq)] = 1
            rows = torch.tensor([p[0] for p in chunk], dtype=torch.long)
            with torch.no_grad(), autocast():
                lp, ent = sequence_logprobs(model, roll.prompt_ids[rows], roll.prompt_mask[rows], ids, score,
                                            with_entropy=True, response_attention_mask=att, entropy_grad=False)
            lp, ent, w = lp.double().cpu(), ent.double().cpu(), score.double()
            n = w.sum(1)
            a_val = (lp.exp() * w).sum(1) / n if acc == "mean_prob" else torch.exp((lp * w).sum(1) / n)
            conf = torch.exp(-(ent * w).sum(1) / n)
            out.append(step_potential(a_val, conf))
    finally:
        model.train(was)
    return torch.cat(out)


def register_step_potential(delimiter: str = STEP_DELIMITER, cue: str = ANSWER_CUE, acc: AccRule = "mean_prob",
                            batch_size: int = 0, replace: bool = False) -> None:
    """Register the inputs ``spae_steps`` and ``spae_potential`` (``replace``: unregister the current ones)."""
    compute = make_step_potential(delimiter, cue, acc, batch_size)
    if replace:
        for name in ("spae_steps", "spae_potential"):
            INPUTS.unregister(name)

    def spae_steps(ctx: StepContext) -> Tensor:
        """[N, R] long step index of each response token (-1 off the mask), SPAE (arXiv 2601.03823)."""
        return compute(ctx)[0]

    def spae_potential(ctx: StepContext) -> Tensor:
        """[N, R] float64 step potential Phi of each token's step (0 off the mask), SPAE (arXiv 2601.03823)."""
        return compute(ctx)[1]

    INPUTS.register("spae_steps")(spae_steps)
    INPUTS.register("spae_potential")(spae_potential)


register_step_potential()

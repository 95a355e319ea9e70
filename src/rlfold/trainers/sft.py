"""Supervised fine-tuning on (prompt, completion) pairs; the loss covers completion tokens only.

A completion is a string (every token trained) or a sequence of ``(text, trained)`` segments, each
tokenised on its own and concatenated: a multi-turn demonstration whose tool observations
(``trained=False``) get loss mask 0, as the environment's tokens do in RL (Search-R1, arXiv 2503.09516).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence, Union

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlfold.models.logprobs import model_device


# A completion: plain text (all trained), or (text, trained) segments such as a model turn, a tool
# observation (not trained) and the next model turn.
Completion = Union[str, Sequence[tuple[str, bool]]]


def encode_completion(tokenizer: PreTrainedTokenizerBase, completion: Completion) -> tuple[list[int], list[int]]:
    """Ids and loss mask of a completion and the final eos (trained); each segment is tokenised on its own."""
    segments = [(completion, True)] if isinstance(completion, str) else completion
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments:
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        mask += [int(bool(trained))] * len(seg)
    return ids + [tokenizer.eos_token_id], mask + [1]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, Completion]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and loss mask (1 on trained completion tokens and the final eos)."""
    rows, loss_rows = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c, m = encode_completion(tokenizer, completion)
        rows.append(p + c)
        loss_rows.append([0] * len(p) + m)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids)
    for i, (r, m) in enumerate(zip(rows, loss_rows)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        loss_mask[i, : len(m)] = torch.tensor(m)
    return ids, attn, loss_mask


def sft_loss(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the loss-masked target tokens."""
    device = model_device(model)
    ids, attn, loss_mask = ids.to(device), attn.to(device), loss_mask.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    targets = ids[:, 1:]
    mask = loss_mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll * mask.reshape(-1)).sum() / mask.sum().clamp(min=1)


def sft_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sample_pairs: Callable[[random.Random, int], list[tuple[str, Completion]]],
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    warmup: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; ``sample_pairs(rng, n)`` draws each batch (completions as
    text or as ``(text, trained)`` segments)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()),
    )
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="sft", disable=not progress)
    for _ in bar:
        ids, attn, lm = encode_pairs(tokenizer, sample_pairs(rng, batch_size))
        loss = sft_loss(model, ids, attn, lm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def demonstration(prompt) -> str:
    """The demonstration completion of a task prompt: ``meta["demonstration"]``, else its gold answer."""
    return str(prompt.meta.get("demonstration", prompt.answer))


class SFTTerm:
    """Auxiliary NLL on the demonstrations of a mini-batch's prompts, weighted by ``coef`` (run once per
    mini-batch), the SFT signal of "Towards a Unified View of LLM Post-Training" (HPT, Sep 2025)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, coef: float) -> None:
        self.model, self.tokenizer, self.coef = model, tokenizer, coef

    def __call__(self, prep, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        seen: dict[str, str] = {}
        for i in idx.tolist():
            p = prep.prompts[i]
            seen.setdefault(p.text, demonstration(p))
        ids, attn, loss_mask = encode_pairs(self.tokenizer, list(seen.items()))
        nll = sft_loss(self.model, ids, attn, loss_mask)
        return self.coef * nll, {"actor/sft_loss": float(nll.detach())}

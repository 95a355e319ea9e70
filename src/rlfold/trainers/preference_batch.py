"""Preference examples as token tensors, their sequence log-probs, and the cached reference log-probs.

An example (a pair, a ranked list, an unpaired completion) is the unit of every batch: its K
responses are rows ``k`` of one ``[B, K]`` block, so a micro-batch never splits chosen from rejected.
Ranked lists of uneven size are padded with copies of their first response, marked invalid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlfold.models.logprobs import sequence_logprobs
from rlfold.tasks.preference_data import PreferenceExample
from rlfold.trainers.preference_datasets import encode_completion, encode_prompt


@dataclass
class EncodedExample:
    """Token ids of one example: the prompt's and each response's (ending in eos)."""

    prompt: list[int]
    responses: list[list[int]]
    scores: list[float]
    margin: float | None


def encode_examples(tokenizer: Any, examples: Sequence[PreferenceExample]) -> list[EncodedExample]:
    """Every example's token ids."""
    return [EncodedExample(encode_prompt(tokenizer, ex), [encode_completion(tokenizer, r) for r in ex.responses],
                           list(ex.scores), ex.margin) for ex in examples]


@dataclass
class TokenBlock:
    """B examples x K responses as B*K rows (row b*K + k), left-padded prompts and right-padded responses."""

    prompt_ids: Tensor       # [B*K, P]
    prompt_mask: Tensor      # [B*K, P]
    response_ids: Tensor     # [B*K, R]
    response_mask: Tensor    # [B*K, R]
    scores: Tensor           # [B, K]
    valid: Tensor            # [B, K] bool
    margin: Tensor | None    # [B] (None when no example has one)
    k: int

    @property
    def response_attention_mask(self) -> Tensor:
        """Every response token is attended to (what ``Reference.logprobs`` reads of a rollout batch)."""
        return self.response_mask

    @property
    def lengths(self) -> Tensor:
        """[B, K] completion tokens of each response."""
        return self.response_mask.sum(-1).float().view(-1, self.k)


def token_block(examples: Sequence[EncodedExample], pad_id: int) -> TokenBlock:
    """The examples as one padded block (K = the largest response count among them)."""
    k = max(len(e.responses) for e in examples)
    prompts, responses, valid, scores = [], [], [], []
    for e in examples:
        extra = k - len(e.responses)
        prompts += [e.prompt] * k
        responses += e.responses + [e.responses[0]] * extra
        valid.append([True] * len(e.responses) + [False] * extra)
        scores.append(e.scores + [min(e.scores)] * extra)
    n, p_w, r_w = len(prompts), max(map(len, prompts)), max(map(len, responses))
    prompt_ids = torch.full((n, p_w), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, p_w), dtype=torch.long)
    response_ids = torch.full((n, r_w), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, r_w), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids[i, p_w - len(p):] = torch.tensor(p)
        prompt_mask[i, p_w - len(p):] = 1
        response_ids[i, : len(r)] = torch.tensor(r)
        response_mask[i, : len(r)] = 1
    margins = [e.margin for e in examples]
    margin = None if all(m is None for m in margins) else torch.tensor([m or 0.0 for m in margins])
    return TokenBlock(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor(scores, dtype=torch.float32),
                      torch.tensor(valid), margin, k)


def block_logps(module: torch.nn.Module, block: TokenBlock) -> Tensor:
    """[B, K] summed completion log-probs of the block's responses (gradients flow when enabled)."""
    per_token, _ = sequence_logprobs(module, block.prompt_ids, block.prompt_mask, block.response_ids,
                                     block.response_mask)
    return per_token.sum(-1).view(-1, block.k).cpu()


@torch.no_grad()
def sequence_sums(module: torch.nn.Module, encoded: Sequence[EncodedExample], pad_id: int, batch_size: int = 64,
                  desc: str = "reference log-probs", progress: bool = False) -> list[list[float]]:
    """Each example's summed completion log-probs under ``module`` (eval mode, no gradient), in batches."""
    was = module.training
    module.eval()
    out: list[list[float]] = []
    try:
        for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=not progress, unit="batch"):
            chunk = list(encoded[start : start + batch_size])
            sums = block_logps(module, token_block(chunk, pad_id))
            out += [sums[i, : len(e.responses)].tolist() for i, e in enumerate(chunk)]
    finally:
        module.train(was)
    return out


class ReferenceCache:
    """The reference policy's summed log-probs of every training and held-out example, computed once (and
    again when the reference is refreshed to the current policy: DNO's iterations); checkpointed."""

    def __init__(self) -> None:
        self.sums: dict[str, list[list[float]]] = {}
        self.refreshes = 0

    def fill(self, module: torch.nn.Module, splits: dict[str, Sequence[EncodedExample]], pad_id: int,
             progress: bool) -> None:
        """(Re)compute the sums of every split under ``module``."""
        for name, encoded in splits.items():
            self.sums[name] = sequence_sums(module, encoded, pad_id, desc=f"reference log-probs ({name})",
                                            progress=progress)

    def block(self, split: str, indices: Sequence[int], k: int) -> Tensor:
        """[B, K] cached sums of the examples at ``indices`` (padding entries 0)."""
        rows = [self.sums[split][i] for i in indices]
        return torch.tensor([r + [0.0] * (k - len(r)) for r in rows], dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: [list(map(float, r)) for r in v] for k, v in state["sums"].items()}
        self.refreshes = int(state["refreshes"])


__all__ = ["EncodedExample", "ReferenceCache", "TokenBlock", "block_logps", "encode_examples", "sequence_sums",
           "token_block"]

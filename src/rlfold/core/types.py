"""Rollout and batch types: the only currency between engines, rewards and trainers (token in, token out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass
class Prompt:
    """One task item: the prompt text, its gold answer and free-form metadata."""

    text: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutBatch:
    """What an engine returns for N sequences (N = prompts x samples), all tensors on CPU.

    ``prompt_ids`` is left-padded ``[N, P]``; ``response_ids`` is right-padded ``[N, R]``;
    ``response_mask`` is 1 on tokens the model produced (the stop token included), 0 on padding.
    ``sample_logprobs`` are log-probs of each sampled token under the distribution actually sampled
    from (temperature / top-k / top-p applied); ``policy_logprobs`` under the plain policy (T=1, no
    truncation), so importance ratios against the trainer are exact.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    sample_logprobs: torch.Tensor
    policy_logprobs: torch.Tensor
    finish_reasons: list[str]
    response_texts: list[str]

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    def select(self, idx: torch.Tensor | list[int]) -> "RolloutBatch":
        """Rows ``idx`` of every field (used to split a batch into mini/micro-batches)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        idx_l = idx_t.tolist()
        return RolloutBatch(
            prompt_ids=self.prompt_ids[idx_t],
            prompt_mask=self.prompt_mask[idx_t],
            response_ids=self.response_ids[idx_t],
            response_mask=self.response_mask[idx_t],
            sample_logprobs=self.sample_logprobs[idx_t],
            policy_logprobs=self.policy_logprobs[idx_t],
            finish_reasons=[self.finish_reasons[i] for i in idx_l],
            response_texts=[self.response_texts[i] for i in idx_l],
        )

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
    entropy: torch.Tensor | None = None  # [N, R] plain-policy entropy at each response position (rollout time)
    # [N, R] 1 on every response token the model attends to, including tokens it did not produce
    # (tool output, multi-attempt feedback: mask 0 there); None means ``response_mask``.
    response_attention_mask: torch.Tensor | None = None

    @property
    def attention(self) -> torch.Tensor:
        """The response attention mask (``response_mask`` unless tokens outside the loss are present)."""
        return self.response_mask if self.response_attention_mask is None else self.response_attention_mask

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def truncated(self) -> torch.Tensor:
        """[N] bool: the row was cut at the generation limit instead of stopping."""
        return torch.tensor([f == FINISH_LENGTH for f in self.finish_reasons], dtype=torch.bool)

    @staticmethod
    def concat(batches: list["RolloutBatch"], pad_id: int) -> "RolloutBatch":
        """Stack batches row-wise, re-padding prompts on the left and responses on the right."""
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        p_w = max(b.prompt_ids.shape[1] for b in batches)
        r_w = max(b.response_ids.shape[1] for b in batches)

        def left(t: torch.Tensor, fill: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (p_w - t.shape[1], 0), value=fill)

        def right(t: torch.Tensor, fill: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, r_w - t.shape[1]), value=fill)

        with_entropy = all(b.entropy is not None for b in batches)
        with_attention = any(b.response_attention_mask is not None for b in batches)
        return RolloutBatch(
            prompt_ids=torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
            prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
            response_ids=torch.cat([right(b.response_ids, pad_id) for b in batches]),
            response_mask=torch.cat([right(b.response_mask, 0) for b in batches]),
            sample_logprobs=torch.cat([right(b.sample_logprobs, 0.0) for b in batches]),
            policy_logprobs=torch.cat([right(b.policy_logprobs, 0.0) for b in batches]),
            finish_reasons=[f for b in batches for f in b.finish_reasons],
            response_texts=[t for b in batches for t in b.response_texts],
            entropy=torch.cat([right(b.entropy, 0.0) for b in batches]) if with_entropy else None,
            response_attention_mask=torch.cat([right(b.attention, 0) for b in batches]) if with_attention else None,
        )

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
            entropy=self.entropy[idx_t] if self.entropy is not None else None,
            response_attention_mask=(self.response_attention_mask[idx_t]
                                     if self.response_attention_mask is not None else None),
        )

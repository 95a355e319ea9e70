"""Rollout and batch types: the only currency between engines, rewards and trainers (token in, token out)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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


# How each RolloutBatch field is padded when batches of different widths are stacked:
# ("left", fill) for prompt-side tensors, ("right", fill) for response-side tensors, "rows" for lists.
_PROMPT = "left"
_RESPONSE = "right"
_ROWS = "rows"


def _pad(kind: str, fill: float) -> dict[str, Any]:
    return {"pad": kind, "fill": fill}


@dataclass
class RolloutBatch:
    """What an engine returns for N sequences (N = prompts x samples), all tensors on CPU.

    ``prompt_ids`` is left-padded ``[N, P]``; ``response_ids`` is right-padded ``[N, R]``;
    ``response_mask`` is 1 on tokens the model produced (the stop token included), 0 on padding.
    ``sample_logprobs`` are log-probs of each sampled token under the distribution actually sampled
    from (temperature / top-k / top-p applied); ``policy_logprobs`` under the plain policy (T=1, no
    truncation), so importance ratios against the trainer are exact.

    ``extras`` holds per-row values an engine or environment adds (a list or a tensor whose first
    dimension is N, e.g. ``attempts`` of a multi-attempt episode); ``select`` and ``concat`` carry
    them along. Both are derived from the dataclass fields and their padding metadata, so a new field
    needs no hand-written code there.
    """

    prompt_ids: torch.Tensor = field(metadata=_pad(_PROMPT, -1))
    prompt_mask: torch.Tensor = field(metadata=_pad(_PROMPT, 0))
    response_ids: torch.Tensor = field(metadata=_pad(_RESPONSE, -1))
    response_mask: torch.Tensor = field(metadata=_pad(_RESPONSE, 0))
    sample_logprobs: torch.Tensor = field(metadata=_pad(_RESPONSE, 0.0))
    policy_logprobs: torch.Tensor = field(metadata=_pad(_RESPONSE, 0.0))
    finish_reasons: list[str] = field(metadata=_pad(_ROWS, 0))
    response_texts: list[str] = field(metadata=_pad(_ROWS, 0))
    # [N, R] plain-policy entropy at each response position (rollout time)
    entropy: torch.Tensor | None = field(default=None, metadata=_pad(_RESPONSE, 0.0))
    # [N, R] 1 on every response token the model attends to, including tokens it did not produce
    # (tool output, multi-attempt feedback: mask 0 there); None means ``response_mask``.
    response_attention_mask: torch.Tensor | None = field(default=None, metadata=_pad(_RESPONSE, 0))
    extras: dict[str, Any] = field(default_factory=dict, metadata=_pad(_ROWS, 0))

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
        """Stack batches row-wise, re-padding prompts on the left and responses on the right.

        An optional tensor field is kept only if every batch has it, except the attention mask, which
        falls back to each batch's ``response_mask``. Extras are kept when every batch has them.
        """
        if not batches:
            raise ValueError("RolloutBatch.concat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        widths = {_PROMPT: max(b.prompt_ids.shape[1] for b in batches),
                  _RESPONSE: max(b.response_ids.shape[1] for b in batches)}
        out: dict[str, Any] = {}
        for f in fields(RolloutBatch):
            kind, fill = f.metadata["pad"], f.metadata["fill"]
            fill = pad_id if fill == -1 else fill
            if f.name == "extras":
                keys = set.intersection(*(set(b.extras) for b in batches))
                out["extras"] = {k: _cat_rows([b.extras[k] for b in batches]) for k in sorted(keys)}
                continue
            values = [getattr(b, f.name) for b in batches]
            if f.name == "response_attention_mask" and any(v is not None for v in values):
                values = [b.attention for b in batches]
            if kind == _ROWS:
                out[f.name] = [x for v in values for x in v]
            elif any(v is None for v in values):
                out[f.name] = None
            else:
                out[f.name] = torch.cat([_pad_to(v, widths[kind], kind, fill) for v in values])
        return RolloutBatch(**out)

    def select(self, idx: torch.Tensor | list[int]) -> "RolloutBatch":
        """Rows ``idx`` of every field (used to split a batch into mini/micro-batches)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        idx_l = idx_t.tolist()
        out: dict[str, Any] = {}
        for f in fields(RolloutBatch):
            v = getattr(self, f.name)
            if f.name == "extras":
                out["extras"] = {k: _take_rows(x, idx_t, idx_l) for k, x in v.items()}
            else:
                out[f.name] = None if v is None else _take_rows(v, idx_t, idx_l)
        return RolloutBatch(**out)


def _pad_to(t: torch.Tensor, width: int, side: str, fill: float) -> torch.Tensor:
    gap = width - t.shape[1]
    return torch.nn.functional.pad(t, (gap, 0) if side == _PROMPT else (0, gap), value=fill)


def _take_rows(v: Any, idx_t: torch.Tensor, idx_l: list[int]) -> Any:
    return v[idx_t] if isinstance(v, torch.Tensor) else [v[i] for i in idx_l]


def _cat_rows(values: list[Any]) -> Any:
    if all(isinstance(v, torch.Tensor) for v in values):
        if values[0].dim() == 2:  # per-token extras: right-pad like the responses
            width = max(v.shape[1] for v in values)
            values = [_pad_to(v, width, _RESPONSE, 0) for v in values]
        return torch.cat(values)
    return [x for v in values for x in v]

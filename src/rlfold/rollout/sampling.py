"""Sampling parameters and the pure logits transform (temperature, top-k, top-p) shared by all engines."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    """How an engine samples responses; ``temperature == 0`` means greedy decoding."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus mass kept (1 = off)")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens (0 = off)")
    max_new_tokens: int = Field(16, ge=1, description="response length limit in tokens")
    n: int = Field(1, ge=1, description="samples per prompt")
    stop_token_ids: list[int] = Field(default_factory=list, description="extra stop tokens (eos stops too)")
    ignore_eos: bool = Field(False, description="keep sampling past eos (benchmarks at a fixed length)")
    stop_strings: list[str] = Field(default_factory=list, description="stop once the response text contains one")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p to ``logits [N, V]``; removed entries become -inf.

    Top-p keeps the smallest set of most likely tokens whose cumulative probability reaches
    ``top_p``; the most likely token is always kept. With ``temperature == 0`` (greedy) no scaling
    is applied. The input is not modified.
    """
    if logits.dim() != 2:
        raise ValueError(f"process_logits expects logits of shape [N, V], got {tuple(logits.shape)}")
    out = logits
    if params.temperature > 0.0 and params.temperature != 1.0:
        out = out / params.temperature
    vocab = out.shape[-1]
    if 0 < params.top_k < vocab:
        keep_idx = torch.topk(out, params.top_k, dim=-1).indices
        keep = torch.zeros_like(out, dtype=torch.bool).scatter_(-1, keep_idx, True)
        out = out.masked_fill(~keep, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(out, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        # a token is kept while the mass of the more likely tokens is still short of top_p
        keep_sorted = mass_before < params.top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter_(-1, sorted_idx, keep_sorted)
        out = out.masked_fill(~keep, float("-inf"))
    if out is logits:
        out = logits.clone()
    return out

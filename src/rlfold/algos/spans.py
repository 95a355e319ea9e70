"""Span selection: train only the part of each response that follows a marker string.

A method that asks the model for an answer and then for something about the answer (a confidence, a
critique, a summary) may want the second part trained while the first stays as sampled. Rewarding
Doubt's official code is one: it samples the answer up to ``Confidence``, feeds prompt + answer to PPO
as the query, and trains the confidence tokens alone. ``after_marker`` does the same inside one
response: it is a selection part (``rlfold.algos.selection``) whose ``token_mask`` is 1 on the
tokens after the marker, so the tokens before it leave the loss and its normaliser.

The part works on text, so it declares two trainer inputs with ``@needs``: ``response_texts`` (the
decoded responses the rewards saw) and ``response_char_ends`` (``[N, R]``: where each token ends in
that text, by streaming detokenisation; ``rlfold.trainers.inputs.token_char_ends``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.selection import SELECTIONS, Selection, SelectionInput
from rlfold.core.registry import needs

__all__ = ["after_marker", "marker_cuts"]


def marker_cuts(texts: list[str], marker: str, occurrence: Literal["first", "last"] = "first") -> list[int]:
    """Per text, the character index just past ``marker`` (its first or last occurrence), -1 if absent."""
    cuts = []
    for text in texts:
        at = text.find(marker) if occurrence == "first" else text.rfind(marker)
        cuts.append(-1 if at < 0 else at + len(marker))
    return cuts


@SELECTIONS.register("after_marker")
@needs("response_texts", "response_char_ends")
def after_marker(
    inp: SelectionInput, *, response_texts: list[str], response_char_ends: Tensor,
    marker: Annotated[str, Field(min_length=1)],
    occurrence: Literal["first", "last"] = "first",
    missing: Literal["train", "drop"] = "train",
    generator: torch.Generator | None = None,
) -> Selection:
    """Only the tokens after ``marker`` train (Rewarding Doubt's code trains the confidence alone; Stangel et al. 2025, arXiv 2503.02623).

    For row i with the marker ending at character c_i of its response text, token t is kept iff
    ``response_char_ends[i, t] > c_i``: it holds at least one character after the marker (a token that
    straddles the marker's end is kept). ``occurrence`` picks the first or the last marker. A row
    without the marker trains whole with ``missing: train`` (so a format penalty still teaches the
    format) and not at all with ``missing: drop``. Metrics ``selection/marker_found_frac`` (rows with the
    marker / N) and ``selection/after_marker_token_frac`` (kept / valid tokens).
    """
    del generator
    n = inp.rewards.shape[0]
    if len(response_texts) != n or tuple(response_char_ends.shape) != tuple(inp.response_mask.shape):
        raise ValueError(
            f"after_marker: {len(response_texts)} texts and char ends of shape {tuple(response_char_ends.shape)} "
            f"for a batch of {n} rows with response_mask {tuple(inp.response_mask.shape)}"
        )
    cuts = torch.tensor(marker_cuts(response_texts, marker, occurrence), dtype=torch.long).reshape(n)
    found = cuts >= 0
    after = response_char_ends > cuts[:, None]
    keep = torch.where(found[:, None], after, torch.full_like(after, missing == "train"))
    valid = inp.response_mask.bool()
    kept = keep & valid
    n_valid = int(valid.sum().item())
    metrics = {
        "selection/marker_found_frac": float(found.sum().item()) / n if n else 0.0,
        "selection/after_marker_token_frac": float(kept.sum().item()) / n_valid if n_valid else 0.0,
    }
    return Selection(token_mask=keep.to(inp.response_mask.dtype), metrics=metrics)

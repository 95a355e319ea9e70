"""Reward-model objectives: Bradley-Terry with margin, centring and label smoothing; ensemble preference
strength, label flipping and the adaptive margin (Secrets of RLHF II); the sentence-level score.

Pure tensor functions (no model, no I/O). Notation: ``r_chosen`` / ``r_rejected`` are the scalar
rewards of the two responses of N pairs, ``d = r_chosen - r_rejected``.

- ``bradley_terry_loss``: mean_i [ -(1-a) log sigma(d_i - m_i) - a log sigma(m_i - d_i) ]
  + eta * mean_i (r_c,i + r_r,i)^2 -- TRL ``RewardTrainer`` (margin column, ``center_rewards_coefficient``)
  plus the label smoothing a of Secrets of RLHF II (a = 0 is TRL's loss exactly);
- ``preference_strength``: per pair, the mean and standard deviation over M ensemble members of d;
- ``adaptive_margin``: the margin m = scale * mean strength (clipped), Secrets II's adaptive margin;
- ``flip_lowest`` / ``swap_where``: which pairs to flip (the lowest-strength fraction) and the flip;
- ``sentence_scores``: the sentence-level reward model's response score (Qiu et al. 2025).
"""

from __future__ import annotations

import math
import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _pair_shapes(r_chosen: Tensor, r_rejected: Tensor, margin: Optional[Tensor]) -> None:
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"r_chosen and r_rejected must be [N] tensors of one shape, got {tuple(r_chosen.shape)} "
                         f"and {tuple(r_rejected.shape)}")
    if margin is not None and margin.shape != r_chosen.shape:
        raise ValueError(f"margin must have the shape of the rewards {tuple(r_chosen.shape)}, got "
                         f"{tuple(margin.shape)}")


def bradley_terry_losses(r_chosen: Tensor, r_rejected: Tensor, *, margin: Optional[Tensor] = None,
                         label_smoothing: float = 0.0) -> Tensor:
    """[N] per-pair BT loss -(1-a) log sigma(d - m) - a log sigma(m - d) (TRL RewardTrainer; Secrets II smoothing)."""
    _pair_shapes(r_chosen, r_rejected, margin)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    z = r_chosen - r_rejected
    if margin is not None:
        z = z - margin.to(z.dtype)
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def bradley_terry_loss(r_chosen: Tensor, r_rejected: Tensor, *, margin: Optional[Tensor] = None,
                       center_coef: float = 0.0, label_smoothing: float = 0.0,
                       weights: Optional[Tensor] = None) -> Tensor:
    """Scalar BT reward-model loss, mean over pairs, + eta mean (r_c + r_r)^2 (TRL RewardTrainer; Eisenstein et al.
    2023 centring, arXiv 2312.09244; Secrets of RLHF II label smoothing, arXiv 2401.06080).

    ``weights`` ([N], optional) turns both means into weighted means (sum w l / sum w); None is the plain mean.
    """
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    per_pair = bradley_terry_losses(r_chosen, r_rejected, margin=margin, label_smoothing=label_smoothing)
    center = (r_chosen + r_rejected) ** 2
    if weights is None:
        return per_pair.mean() + center_coef * center.mean()
    if weights.shape != per_pair.shape:
        raise ValueError(f"weights must have the shape of the rewards {tuple(per_pair.shape)}, got "
                         f"{tuple(weights.shape)}")
    w = weights.to(per_pair.dtype)
    total = w.sum().clamp(min=1e-12)
    return (w * per_pair).sum() / total + center_coef * (w * center).sum() / total


def preference_strength(diffs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pair ensemble preference strength: mean and std over M members of d_ij = r_i(y_c) - r_i(y_r)
    (Secrets of RLHF II, arXiv 2401.06080, section 3).

    ``diffs`` is ``[M, N]``; the std is the sample std (correction 1), 0 for a single member.
    """
    if diffs.dim() != 2 or diffs.shape[0] < 1:
        raise ValueError(f"diffs must be [M, N] with M >= 1 members, got shape {tuple(diffs.shape)}")
    mean = diffs.mean(0)
    std = diffs.std(0, correction=1) if diffs.shape[0] > 1 else torch.zeros_like(mean)
    return mean, std


def adaptive_margin(strength: Tensor, *, scale: float = 1.0, min_margin: float | None = None,
                    max_margin: float | None = None) -> Tensor:
    """The adaptive margin m = clip(scale * mu, min, max) of each pair from its ensemble preference strength mu
    (Secrets of RLHF II, arXiv 2401.06080: -log sigma(d - mu_hat)); the scale is [unverified] in the paper."""
    m = scale * strength
    if min_margin is not None or max_margin is not None:
        m = m.clamp(min=min_margin, max=max_margin)
    return m


def flip_lowest(strength: Tensor, fraction: float) -> Tensor:
    """[N] bool mask of the floor(fraction * N) lowest-strength pairs, ties by index (Secrets of RLHF II, arXiv
    2401.06080: flip the labels of the lowest-strength pairs, which are mostly mislabelled)."""
    if strength.dim() != 1:
        raise ValueError(f"strength must be [N], got shape {tuple(strength.shape)}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = strength.shape[0]
    k = int(math.floor(fraction * n + 1e-9))
    mask = torch.zeros(n, dtype=torch.bool, device=strength.device)
    if k:
        order = torch.argsort(strength, stable=True)
        mask[order[:k]] = True
    return mask


def swap_where(mask: Tensor, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Chosen and rejected swapped where ``mask`` holds: the label flip (an involution) of Secrets of RLHF II."""
    while mask.dim() < chosen.dim():
        mask = mask.unsqueeze(-1)
    return torch.where(mask, rejected, chosen), torch.where(mask, chosen, rejected)


def sentence_scores(values: Tensor, starts: Tensor, ends: Tensor, attn_logits: Tensor,
                    sentence_mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sentence-level reward model score (Qiu et al. 2025, arXiv 2503.04793): r_k = R(end_k) - R(start_k) per
    sentence, score = sum_k softmax_k(attn) r_k; returns (score [B], r [B, S], weights [B, S]).

    ``values`` [B, T] is the per-position reward head R; ``starts`` / ``ends`` [B, S] are positions (the
    position before a sentence's first token, and its last token); ``attn_logits`` [B, S] the attention
    scores of the sentences; ``sentence_mask`` [B, S] marks real sentences (every row needs one). The
    weights sum to 1, so a score lies in [min_k r_k, max_k r_k]; only boundary positions get a gradient.
    """
    if values.dim() != 2 or starts.shape != ends.shape or starts.shape != attn_logits.shape or starts.dim() != 2:
        raise ValueError(f"values must be [B, T] and starts/ends/attn_logits [B, S], got {tuple(values.shape)}, "
                         f"{tuple(starts.shape)}, {tuple(ends.shape)}, {tuple(attn_logits.shape)}")
    mask = torch.ones_like(starts, dtype=torch.bool) if sentence_mask is None else sentence_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every response needs at least one sentence (a row of sentence_mask is all False)")
    s_idx, e_idx = starts.clamp(min=0).long(), ends.clamp(min=0).long()
    r = values.gather(1, e_idx) - values.gather(1, s_idx)
    logits = attn_logits.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=1)
    r = r.masked_fill(~mask, 0.0)
    return (weights * r).sum(dim=1), r, weights


_SENTENCE_END = re.compile(r"[.!?\n]+\s*")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``text``: cut after ``.``, ``!``, ``?`` and newlines.

    A stand-in for the paper's learned segmenter (SaT, "Segment any Text"); every character belongs to one
    span, and a text without a sentence end is one sentence.
    """
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() > start:
            spans.append((start, m.end()))
            start = m.end()
    if start < len(text) or not spans:
        spans.append((start, len(text)))
    return spans


__all__ = ["adaptive_margin", "bradley_terry_loss", "bradley_terry_losses", "flip_lowest", "preference_strength",
           "sentence_scores", "split_sentences", "swap_where"]

"""PSR / NSR / W-REINFORCE: positive- and negative-sample reinforcement (Zhu et al. 2025, arXiv 2506.01347).

"The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" splits RLVR's learning signal
into reinforcing correct samples (PSR) and penalising incorrect ones (NSR). Two parts express it:

* advantage ``w_reinforce``: A = ``positive_weight`` (lambda) on correct rows, -1 on incorrect rows, no
  baseline (REINFORCE with r in {lambda, -1}); the paper's W-REINFORCE is lambda = 0.1.
* selection ``psr_nsr``: keeps only the rows whose advantage is positive (``keep="positive"``, PSR) or
  negative (``keep="negative"``, NSR). The other rows leave the batch, so they also leave the loss and
  its token-mean normaliser, like the official code's ``batch.subset`` before the update.

PSR = ``w_reinforce`` (positive_weight 1) + ``psr_nsr`` keep positive (A = +1 on the correct subset);
NSR = ``w_reinforce`` + ``psr_nsr`` keep negative (A = -1 on the incorrect subset);
W-REINFORCE = ``w_reinforce`` (positive_weight 0.1) alone, all rows.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.algos.advantages import ADVANTAGES, _broadcast, _check_inputs
from rlfold.algos.selection import SELECTIONS, Selection, SelectionInput

__all__ = ["psr_nsr", "w_reinforce"]


@ADVANTAGES.register("w_reinforce")
def w_reinforce(
    rewards: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    *,
    positive_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.1,
    threshold: Annotated[float, Field(allow_inf_nan=False)] = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """W-REINFORCE sign advantage: lambda on correct, -1 on incorrect samples (Zhu et al. 2025, arXiv 2506.01347).

    A row is correct iff its reward > ``threshold`` (0.5 separates the paper's verifiable rewards in
    {0, 1}). A_i = ``positive_weight`` (lambda, the official ``positive_advantage_weight``, 0.1) if
    correct, else -1, broadcast over the response tokens (0 on padding); no group baseline, no
    normalisation, so ``group_ids`` is only checked. With outcome rewards in {0, 1} and gamma = 1 this
    equals the official ``compute_psr_nsr_outcome_advantage``: ``weighted`` (lambda R on correct,
    R - 1 on incorrect); lambda = 1 gives ``positive`` on the correct rows and ``negative`` on the
    incorrect ones. We use the constants lambda and -1 rather than lambda R and R - 1, so a reward
    outside {0, 1} (a format bonus) only decides the class. lambda = 1 is REINFORCE with r in {+1, -1}.
    Metric ``w_reinforce/correct_frac``: fraction of rows above the threshold (0 for an empty batch).
    """
    _check_inputs(rewards, group_ids, response_mask)
    r = rewards.detach()
    if not r.dtype.is_floating_point:
        r = r.float()
    correct = r > threshold
    adv = torch.where(correct, r.new_tensor(float(positive_weight)), r.new_tensor(-1.0))
    n = r.numel()
    frac = float(correct.sum().item()) / n if n else 0.0
    return _broadcast(adv, response_mask), {"w_reinforce/correct_frac": frac}


@SELECTIONS.register("psr_nsr")
def psr_nsr(
    inp: SelectionInput,
    *,
    generator: torch.Generator | None = None,
    keep: Literal["positive", "negative"] = "negative",
) -> Selection:
    """PSR / NSR batch subset: only positive- or negative-advantage samples train (Zhu et al. 2025, arXiv 2506.01347).

    A row is kept iff one of its valid tokens (``response_mask``, which already excludes unscorable rows)
    has advantage > 0 (``keep="positive"``, PSR) or < 0 (``keep="negative"``, NSR); rows with advantage 0
    or without a valid token are dropped under both settings. Returns ``rows`` (the kept row indices in
    order), so the dropped rows leave the update entirely: the aggregation normaliser (token-mean: the
    number of valid tokens) counts kept rows only, as the official ``batch.subset`` does. With no row of
    the requested sign (NSR on an all-correct batch) ``rows`` is empty and the step has nothing to
    train on. Metric ``selection/psr_nsr_kept_frac``: kept rows / N (0 for an empty batch).
    """
    del generator
    if keep not in ("positive", "negative"):
        raise ValueError(f"psr_nsr keep must be 'positive' or 'negative', got {keep!r}")
    valid = inp.response_mask.bool()
    adv = inp.advantages.detach()
    hit = adv > 0 if keep == "positive" else adv < 0
    kept = (valid & hit).any(dim=1)
    rows = torch.nonzero(kept).flatten()
    n = kept.numel()
    frac = float(rows.numel()) / n if n else 0.0
    return Selection(rows=rows, metrics={"selection/psr_nsr_kept_frac": frac})

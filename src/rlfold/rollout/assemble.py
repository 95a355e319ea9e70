"""A ``RolloutBatch`` from per-row token lists: what engines that return lists (vLLM, a server) produce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlfold.core.errors import DataError
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch


@dataclass
class RowOutput:
    """One generated sequence: its prompt ids, the response ids the engine produced, and per-token
    log-probs under the distribution sampled from (``sample``) and under the plain policy (``policy``)."""

    prompt_ids: list[int]
    token_ids: list[int]
    sample: list[float]
    policy: list[float]
    finish: str = FINISH_LENGTH
    text: str = ""


def finish_reason(engine_reason: str | None) -> str:
    """An engine's finish reason in rlfold's two words: ``stop`` (eos, a stop token or string) or ``length``."""
    return FINISH_STOP if engine_reason in ("stop", "eos", "stop_token", "stop_string") else FINISH_LENGTH


def batch_from_rows(rows: Sequence[RowOutput], pad_id: int, engine: str = "engine") -> RolloutBatch:
    """Left-pad the prompts, right-pad the responses; every row must hold at least one response token."""
    if not rows:
        raise DataError(f"{engine}: produced no rows")
    for i, r in enumerate(rows):
        if not r.token_ids:
            raise DataError(f"{engine}: row {i} has an empty response (the engine returned no token)")
        if not (len(r.token_ids) == len(r.sample) == len(r.policy)):
            raise DataError(f"{engine}: row {i} has {len(r.token_ids)} tokens but {len(r.sample)} sampling and "
                            f"{len(r.policy)} policy log-probs")
    n, p_width, r_width = len(rows), max(len(r.prompt_ids) for r in rows), max(len(r.token_ids) for r in rows)
    prompt_ids = torch.full((n, p_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, p_width), dtype=torch.long)
    response_ids = torch.full((n, r_width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, r_width), dtype=torch.long)
    sample_lp = torch.zeros((n, r_width), dtype=torch.float32)
    policy_lp = torch.zeros((n, r_width), dtype=torch.float32)
    for i, r in enumerate(rows):
        p, t = len(r.prompt_ids), len(r.token_ids)
        prompt_ids[i, p_width - p:] = torch.tensor(r.prompt_ids, dtype=torch.long)
        prompt_mask[i, p_width - p:] = 1
        response_ids[i, :t] = torch.tensor(r.token_ids, dtype=torch.long)
        response_mask[i, :t] = 1
        sample_lp[i, :t] = torch.tensor(r.sample, dtype=torch.float32)
        policy_lp[i, :t] = torch.tensor(r.policy, dtype=torch.float32)
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                        response_mask=response_mask, sample_logprobs=sample_lp, policy_logprobs=policy_lp,
                        finish_reasons=[r.finish for r in rows], response_texts=[r.text for r in rows])


__all__ = ["RowOutput", "batch_from_rows", "finish_reason"]

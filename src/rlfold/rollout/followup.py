"""An engine whose rollouts also carry the answers to a follow-up question (``core.contracts.Followup``)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from rlfold.core.contracts import Followup
from rlfold.core.seeding import derive_seed
from rlfold.core.types import RolloutBatch
from rlfold.rollout.base import Engine, GenerationRequest
from rlfold.rollout.sampling import SamplingParams


class FollowupEngine:
    """Generates with ``inner``, then asks ``part``'s follow-up of every row greedily with ``inner`` too and adds
    ``part.extras`` to the batch; the follow-up answers are read, never trained on. Follows the engine contract."""

    def __init__(self, inner: Engine, part: Followup) -> None:
        self.inner, self.part = inner, part
        self.pad_id = inner.pad_id
        self.shares_weights = inner.shares_weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        self.inner.update_weights(named_tensors, streamed)

    def sleep(self) -> None:
        self.inner.sleep()

    def wake(self) -> None:
        self.inner.wake()

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch:
        roll = self.inner.generate(requests, params, seed)
        prompts = [r.prompt for r in requests for _ in range(params.n)]
        asks = self.part.questions(prompts, roll.response_texts)
        rows = [i for i, a in enumerate(asks) if a is not None]
        answers: list[str | None] = [None] * len(prompts)
        if rows:
            greedy = SamplingParams(temperature=0.0, max_new_tokens=self.part.max_new_tokens, n=1)
            follow = self.inner.generate([GenerationRequest(prompt=asks[i]) for i in rows], greedy,
                                         derive_seed(seed, "followup"))
            for j, i in enumerate(rows):
                answers[i] = follow.response_texts[j]
        roll.extras.update(self.part.extras(prompts, roll.response_texts, answers))
        return roll


__all__ = ["FollowupEngine"]

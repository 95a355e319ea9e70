"""An engine whose rollouts also carry the answers to a follow-up question (``core.contracts.Followup``)."""

from __future__ import annotations

from typing import Sequence

from rlfold.core.contracts import Followup
from rlfold.core.seeding import derive_seed
from rlfold.core.types import RolloutBatch
from rlfold.rollout.base import Engine, GenerationRequest, WrappingEngine
from rlfold.rollout.sampling import SamplingParams


class FollowupEngine(WrappingEngine):
    """Generates with ``inner``, then asks ``part``'s follow-up of every row greedily with ``inner`` too and adds
    ``part.extras`` to the batch; the follow-up answers are read, never trained on. Follows the engine contract."""

    def __init__(self, inner: Engine, part: Followup) -> None:
        super().__init__(inner)
        self.part = part

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

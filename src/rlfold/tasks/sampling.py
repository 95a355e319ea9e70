"""Prompt samplers (the ``SAMPLERS`` registry): which training prompts each step draws.

A sampler is built as ``factory(prompts, *, seed, **options)`` and follows the ``PromptSource``
protocol of ``rlfold.core.contracts``: ``next(n)``, ``on_completed(prompts)`` (rollouts of these
prompts came back), ``metrics()`` and ``state_dict``/``load_state_dict``. ``uniform`` (the default)
draws without replacement within seeded epochs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rlfold.core.registry import SAMPLERS
from rlfold.core.types import Prompt


@SAMPLERS.register("uniform")
class PromptSampler:
    """Uniform epochs: draws prompts without replacement within an epoch (the usual RL data loader)."""

    def __init__(self, prompts: Sequence[Prompt], seed: int) -> None:
        self.prompts = list(prompts)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.prompts), generator=g).tolist()

    def next(self, n: int) -> list[Prompt]:
        out: list[Prompt] = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), len(self._order) - self.position)
            out.extend(self.prompts[i] for i in self._order[self.position : self.position + take])
            self.position += take
        return out

    def on_completed(self, prompts: Sequence[Prompt]) -> None:
        """Uniform sampling does not depend on which rollouts came back."""

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "size": len(self.prompts)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != len(self.prompts) or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint data position is for {state['size']} prompts / seed {state['seed']}, "
                f"but this run has {len(self.prompts)} / seed {self.seed}"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)

"""Seeded, resumable prompt sampler: one permutation per epoch, position saved in checkpoints."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rlfold.core.errors import ConfigError
from rlfold.core.types import Prompt


class PromptSampler:
    """Draws prompts without replacement within an epoch; ``state_dict`` captures the exact position."""

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


def make_prompt_sampler(prompts: list[Prompt], cfg) -> Any:
    """The run's prompt sampler: uniform epochs, or Apriel's adaptive domain mix when
    ``train.domain_weights`` is set (domains read from ``prompt.meta[train.domain_key]``)."""
    tc = cfg.train
    if not tc.domain_weights:
        return PromptSampler(prompts, cfg.seed)
    from rlfold.trainers.domain_sampling import DomainMixSampler

    by_domain: dict[str, list[Prompt]] = {}
    for p in prompts:
        if tc.domain_key not in p.meta:
            raise ConfigError(f"train.domain_weights is set but prompt {p.text[:60]!r} has no meta[{tc.domain_key!r}]; "
                              "set train.domain_key to the field that names the domain")
        by_domain.setdefault(str(p.meta[tc.domain_key]), []).append(p)
    missing = sorted(set(tc.domain_weights) - set(by_domain))
    extra = sorted(set(by_domain) - set(tc.domain_weights))
    if missing or extra:
        raise ConfigError(f"train.domain_weights names domains {sorted(tc.domain_weights)}, the training prompts "
                          f"have {sorted(by_domain)} (by meta[{tc.domain_key!r}]); missing prompts for {missing}, "
                          f"no weight for {extra}")
    return DomainMixSampler(by_domain, tc.domain_weights, seed=cfg.seed)

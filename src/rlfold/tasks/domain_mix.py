"""Adaptive domain sampling of Apriel-Reasoner (ServiceNow 2026, arXiv 2604.02007): keep the completed mix on target.

:class:`DomainWeightedSampler` picks a domain so that the mix of *completed* rollouts follows the target
ratios; :class:`DomainMixSampler` draws prompts with it and has the interface of
:class:`rlfold.tasks.sampling.PromptSampler` (``next(n)``, ``on_completed(prompts)`` for finished
rollouts, ``metrics()``, ``state_dict``, ``load_state_dict``). ``domain_mix`` in the sampler registry
builds it from the training prompts, the domain of a prompt being ``meta[key]``.

Both are deterministic given the seed and resumable: every random draw k uses its own generator
seeded from (seed, k), so the saved state is only integer counters (JSON- and torch-serialisable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field

from rlfold.core.types import Prompt
from rlfold.core.errors import ConfigError
from rlfold.core.registry import SAMPLERS
from rlfold.tasks.sampling import PromptSampler


def _uniform(seed: int, k: int, tag: str) -> float:
    """The k-th uniform draw in [0, 1) of stream ``tag`` (str seeds hash with SHA-512: stable across runs)."""
    return random.Random(f"{tag}:{seed}:{k}").random()


class DomainWeightedSampler:
    """Domain choice p(d) ∝ w_d · a_d that steers completed rollouts towards the target ratios.

    Targets t_d = w_d / Σw. With n_d completed rollouts of domain d and N = Σ n_d:

    - while N < ``warmup``: p(d) = t_d (the static weights);
    - afterwards: a_d = clip(t_d / (n_d / N), clip[0], clip[1]), and a_d = clip[1] when n_d = 0;
      p(d) = w_d·a_d / Σ_e w_e·a_e.

    Example: targets (0.5, 0.5), completions (30, 10): a = (0.667, 2.0), p = (0.25, 0.75).
    Weights must be finite and >= 0 with a positive sum; a domain of weight 0 is never drawn.
    ``record`` counts completed rollouts (when results return), not draws.
    """

    def __init__(self, weights: Mapping[str, float], warmup: int = 50,
                 clip: Sequence[float] = (0.1, 10.0), seed: int = 0) -> None:
        if not weights:
            raise ValueError("DomainWeightedSampler needs at least one domain")
        ws = {str(d): float(w) for d, w in weights.items()}
        bad = {d: w for d, w in ws.items() if not math.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"domain weights must be finite and >= 0, got {bad}")
        if sum(ws.values()) <= 0:
            raise ValueError(f"domain weights must have a positive sum, got {ws}")
        lo, hi = (float(x) for x in clip)
        if not 0 < lo <= hi:
            raise ValueError(f"clip must satisfy 0 < low <= high, got {tuple(clip)}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.weights = ws
        self.domains = list(ws)
        self.warmup = int(warmup)
        self.clip = (lo, hi)
        self.seed = int(seed)
        self.counts: dict[str, int] = {d: 0 for d in self.domains}
        self.draws = 0

    def targets(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {d: w / total for d, w in self.weights.items()}

    def probabilities(self) -> dict[str, float]:
        """The current p(d) for every domain (sums to 1)."""
        targets = self.targets()
        n_total = sum(self.counts.values())
        if n_total < self.warmup:
            return targets
        lo, hi = self.clip
        raw = {}
        for d in self.domains:
            n_d = self.counts[d]
            a = hi if n_d == 0 else min(hi, max(lo, targets[d] / (n_d / n_total)))
            raw[d] = self.weights[d] * a
        z = sum(raw.values())
        return {d: v / z for d, v in raw.items()}

    def record(self, domain: str, n: int = 1) -> None:
        """Count ``n`` completed rollouts of ``domain``."""
        if domain not in self.counts:
            raise KeyError(f"unknown domain {domain!r} (domains: {', '.join(self.domains)})")
        if n < 0:
            raise ValueError(f"record needs n >= 0, got {n}")
        self.counts[domain] += int(n)

    def sample_domain(self) -> str:
        """Draw one domain from :meth:`probabilities`."""
        probs = self.probabilities()
        u = _uniform(self.seed, self.draws, "domain")
        self.draws += 1
        acc = 0.0
        last = None
        for d in self.domains:
            if probs[d] <= 0:
                continue
            acc += probs[d]
            last = d
            if u < acc:
                return d
        assert last is not None
        return last  # u within rounding of 1

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "draws": self.draws, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore counts and the draw position; the domains and the seed must match (weights may change)."""
        if set(state["counts"]) != set(self.domains) or int(state["seed"]) != self.seed:
            raise ValueError(
                f"checkpoint domain sampler is for domains {sorted(state['counts'])} / seed {state['seed']}, "
                f"but this run has {sorted(self.domains)} / seed {self.seed}"
            )
        self.counts = {d: int(state["counts"][d]) for d in self.domains}
        self.draws = int(state["draws"])


class DomainMixSampler:
    """Prompt sampler over several domains: a domain from :class:`DomainWeightedSampler`, then a prompt of it.

    Within a domain, prompts are drawn uniformly without replacement within a per-domain epoch (one
    seeded permutation per epoch, as :class:`PromptSampler`), so each domain is covered evenly.
    ``record_completed(prompts)`` counts one completed rollout per prompt entry (pass one entry per
    rollout, e.g. the G repeats of a prompt); a prompt is mapped back to its domain by identity, else
    by ``prompt.meta["domain"]``, else by its text when that text occurs in a single domain.
    """

    def __init__(self, prompts_by_domain: Mapping[str, Sequence[Prompt]], weights: Mapping[str, float],
                 seed: int = 0, warmup: int = 50, clip: Sequence[float] = (0.1, 10.0)) -> None:
        if set(prompts_by_domain) != set(weights):
            raise ValueError(f"domains of the prompts {sorted(prompts_by_domain)} and of the weights "
                             f"{sorted(weights)} differ")
        empty = [d for d, ps in prompts_by_domain.items() if not ps]
        if empty:
            raise ValueError(f"domains without prompts: {empty}")
        self.seed = int(seed)
        self.domain_sampler = DomainWeightedSampler(weights, warmup=warmup, clip=clip, seed=seed)
        self.samplers = {d: PromptSampler(prompts_by_domain[d], seed=self.seed * 1_009 + i + 1)
                         for i, d in enumerate(self.domain_sampler.domains)}
        self.prompts = [p for d in self.domain_sampler.domains for p in self.samplers[d].prompts]
        self._by_id: dict[int, str] = {}
        texts: dict[str, set[str]] = {}
        for d, sampler in self.samplers.items():
            for p in sampler.prompts:
                self._by_id[id(p)] = d
                texts.setdefault(p.text, set()).add(d)
        self._by_text = {t: next(iter(ds)) for t, ds in texts.items() if len(ds) == 1}

    def next(self, n: int) -> list[Prompt]:
        """``n`` prompts, each from a freshly drawn domain."""
        return [self.samplers[self.domain_sampler.sample_domain()].next(1)[0] for _ in range(n)]

    def domain_of(self, prompt: Prompt) -> str:
        d = self._by_id.get(id(prompt))
        if d is not None:
            return d
        meta_d = prompt.meta.get("domain") if isinstance(prompt.meta, dict) else None
        if meta_d in self.samplers:
            return meta_d
        d = self._by_text.get(prompt.text)
        if d is not None:
            return d
        raise KeyError(f"cannot tell the domain of prompt {prompt.text[:60]!r}: not one of this sampler's "
                       f"prompts, no meta['domain'], and its text is not unique to one domain")

    def record_completed(self, prompts: Sequence[Prompt]) -> None:
        """Count one completed rollout per entry of ``prompts``."""
        for p in prompts:
            self.domain_sampler.record(self.domain_of(p))

    def on_completed(self, prompts: Sequence[Prompt]) -> None:
        """Sampler protocol: rollouts of ``prompts`` (one entry per rollout) came back."""
        self.record_completed(prompts)

    def probabilities(self) -> dict[str, float]:
        return self.domain_sampler.probabilities()

    def metrics(self) -> dict[str, float]:
        """``sampling/domain_p/<domain>``: the current probability of drawing each domain."""
        return {f"sampling/domain_p/{d}": p for d, p in self.probabilities().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"domains": self.domain_sampler.state_dict(),
                "per_domain": {d: s.state_dict() for d, s in self.samplers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["per_domain"]) != set(self.samplers):
            raise ValueError(f"checkpoint domain mix is for domains {sorted(state['per_domain'])}, "
                             f"but this run has {sorted(self.samplers)}")
        self.domain_sampler.load_state_dict(state["domains"])
        for d, s in self.samplers.items():
            s.load_state_dict(state["per_domain"][d])


@SAMPLERS.register("domain_mix")
def domain_mix(prompts: Sequence[Prompt], *, seed: int,
               weights: Annotated[Mapping[str | int, Annotated[float, Field(ge=0)]], Field(min_length=1)],
               key: Annotated[str, Field(min_length=1)] = "domain", warmup: Annotated[int, Field(ge=0)] = 50,
               clip: Annotated[Sequence[Annotated[float, Field(gt=0)]], Field(min_length=2, max_length=2)]
               = (0.1, 10.0)) -> DomainMixSampler:
    """Adaptive domain sampling of Apriel-Reasoner (arXiv 2604.02007): target share ``weights`` per domain.

    The domain of a prompt is ``str(prompt.meta[key])`` (arith: ``level``); every domain with
    prompts needs a weight and every weight a domain.
    """
    by_domain: dict[str, list[Prompt]] = {}
    for p in prompts:
        if key not in p.meta:
            raise ConfigError(f"sampler domain_mix: prompt {p.text[:60]!r} has no meta[{key!r}]; set "
                              "train.sampler.kwargs.key to the field that names the domain")
        by_domain.setdefault(str(p.meta[key]), []).append(p)
    weights = {str(d): float(w) for d, w in weights.items()}
    missing = sorted(set(weights) - set(by_domain))
    extra = sorted(set(by_domain) - set(weights))
    if missing or extra:
        raise ConfigError(f"sampler domain_mix: weights name domains {sorted(weights)}, the training prompts "
                          f"have {sorted(by_domain)} (by meta[{key!r}]); missing prompts for {missing}, "
                          f"no weight for {extra}")
    return DomainMixSampler(by_domain, weights, seed=seed, warmup=warmup, clip=clip)


__all__ = ["DomainMixSampler", "DomainWeightedSampler", "domain_mix"]

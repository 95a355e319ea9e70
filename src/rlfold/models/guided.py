"""Value-guided decoding of Q♯ (Zhou et al., arXiv 2502.20548): π(a|s) ∝ π_ref(a|s)·exp(Q*(s,a)/η).

For KL-regularised RL with coefficient η in the deterministic token MDP the optimal policy is the
reference tilted by the soft value of the reference, Q*(s,a) = η·log E_{π_ref}[exp(R/η) | s, a]. With a
binary reward and p(s,a) = P(R = 1 | s, a, π_ref), Q*/η = log(1 + p·(e^{1/η} − 1)).

``GuidedPolicy`` is that policy as a causal LM: its logits are the reference's plus the bonus computed
from a *value model*, a causal LM whose output at position t and vocabulary entry a is the logit of p at
state s_t and next token a (one forward gives p for every candidate token, as in Q♯). It takes and
returns a KV cache like a transformers model, so the ``hf`` engine samples from it and
``sequence_logprobs`` scores it unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from rlfold.models.kv_cache import LIBRARY_CACHE, cache_argument, forward_parameters, returned_cache

MIN_ETA = 1e-3  # the bonus is stable for any η > 0; below this the tilt is an argmax over p, not a policy


def q_star_bonus(value_logits: Tensor, eta: float) -> Tensor:
    """Q*(s,a)/η = log(1 + σ(z)(e^{1/η} − 1)) from the value logit z = logit p(s,a) (Q♯, binary reward).

    Computed as logaddexp(log(1 − p), log p + 1/η), which is exact for every η > 0 without overflow. It
    rises monotonically in p, from 0 at p = 0 to 1/η at p = 1, and tends to 0 as η → ∞ (π_ref)."""
    if not eta > 0 or not math.isfinite(eta):
        raise ValueError(f"q_star_bonus: eta must be a finite number > 0, got {eta!r}")
    z = value_logits.to(torch.promote_types(value_logits.dtype, torch.float32))  # bf16 up, float64 kept
    return torch.logaddexp(nn.functional.logsigmoid(-z), nn.functional.logsigmoid(z) + 1.0 / eta)


def zero_value_head(model: nn.Module) -> nn.Module:
    """Give a causal LM its own output head, zeroed (p = 1/2 for every token: the guided policy is π_ref)."""
    head = model.get_output_embeddings()
    fresh = nn.Linear(head.in_features, head.out_features, bias=False, dtype=head.weight.dtype,
                      device=head.weight.device)  # no bias: the model saves and reloads as its own class
    nn.init.zeros_(fresh.weight)
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(fresh)
    return model


class GuidedPolicy(nn.Module):
    """π_ref tilted by exp(Q*/η) of a value model (``q_star_bonus``); a causal LM to engines and scorers."""

    def __init__(self, reference: nn.Module, value: nn.Module, eta: float) -> None:
        super().__init__()
        if not eta >= MIN_ETA:
            raise ValueError(f"GuidedPolicy: eta must be >= {MIN_ETA}, got {eta!r}")
        self.reference, self.value, self.eta = reference, value, float(eta)
        self.config = reference.config  # vocabulary, pad and eos ids, context length: the reference's
        self._ref_cache, self._value_cache = (cache_argument(forward_parameters(m)) for m in (reference, value))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                use_cache: bool = False, cache: Any = None, logits_to_keep: int = 0,
                **_: Any) -> CausalLMOutputWithPast:
        """Guided logits; ``cache`` is the pair (reference cache, value cache) a previous call returned."""
        ref_cache, value_cache = cache if cache is not None else (None, None)
        common = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, logits_to_keep=logits_to_keep)
        ref = self.reference(**common, **{self._ref_cache: ref_cache})
        val = self.value(**common, **{self._value_cache: value_cache})
        logits = ref.logits.to(torch.promote_types(ref.logits.dtype, torch.float32)) + q_star_bonus(val.logits,
                                                                                                     self.eta)
        pair = (returned_cache(ref), returned_cache(val)) if use_cache else None
        return CausalLMOutputWithPast(logits=logits, **{LIBRARY_CACHE: pair})


__all__ = ["GuidedPolicy", "MIN_ETA", "q_star_bonus", "zero_value_head"]

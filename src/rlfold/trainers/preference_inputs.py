"""Inputs a preference loss declares with ``@needs``, each made by a provider registered in
``PREFERENCE_INPUTS`` (``fn(ctx: PreferenceContext) -> value``). A new loss that needs a new input
registers a provider beside it (here or from a user's ``imports`` module); the step does not change.

- ``kl``: [B] log-ratios log pi_theta(y'|x) - log pi_ref(y'|x) of *mismatched* completions (each
  example's prompt with the next example's completion, rotated by one within the micro-batch), no
  gradient: KTO's reference point z0 is their clamped mean (Ethayarajh et al., arXiv 2402.01306).
- ``online``: a ``PreferenceLogps`` of ``preference.online_samples`` fresh policy samples per prompt
  (policy log-probs with gradient, reference log-probs without): HyPO's on-policy KL term.
- ``reward_shift``: BCO's running mean delta of the implicit rewards (a 0-dim tensor the step keeps).
- ``token_logits``: the policy's logits at the response positions (with gradient), for token-level
  objectives such as CE-U.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from rlfold.algos.preference import PreferenceLogps
from rlfold.algos.preference.unpaired import TokenLogits
from rlfold.core.masked import positions_from_mask
from rlfold.core.registry import Registry
from rlfold.core.seeding import derive_seed
from rlfold.rollout import SamplingParams, requests_for
from rlfold.trainers.preference_batch import EncodedExample, block_logps, token_block

PREFERENCE_INPUTS: Registry = Registry("preference-loss input")


@dataclass
class PreferenceContext:
    """One micro-batch and the step's collaborators, for the providers."""

    step: int
    examples: list[EncodedExample]
    prompts: list[Any]                      # the examples' Prompt objects
    module: torch.nn.Module                 # the policy (what the update differentiates)
    reference: Callable[[Any], Tensor] | None  # [B, K] reference log-probs of a TokenBlock, when a loss needs them
    engine: Any                             # samples from the current policy
    pad_id: int
    tokenizer: Any
    config: Any                             # the RunConfig
    state: dict[str, Any] = field(default_factory=dict)  # the step's running quantities (BCO's shift)


Provider = Callable[[PreferenceContext], Any]


@PREFERENCE_INPUTS.register("kl")
def _mismatched_kl(ctx: PreferenceContext) -> Tensor:
    """[B] log-ratios of each prompt paired with the next example's first completion (no gradient)."""
    n = len(ctx.examples)
    shifted = [EncodedExample(ctx.examples[i].prompt, [ctx.examples[(i + 1) % n].responses[0]], [0.0], None)
               for i in range(n)]
    block = token_block(shifted, ctx.pad_id)
    with torch.no_grad():
        policy = block_logps(ctx.module, block)[:, 0]
        ref = ctx.reference(block)[:, 0] if ctx.reference is not None else torch.zeros_like(policy)
    return policy - ref


@PREFERENCE_INPUTS.register("online")
def _online_samples(ctx: PreferenceContext) -> PreferenceLogps:
    """``online_samples`` responses per prompt from the current policy, with policy and reference log-probs."""
    if ctx.reference is None:
        raise RuntimeError("the 'online' input needs the reference policy (the step builds it for such losses)")
    k = ctx.config.preference.online_samples
    params = SamplingParams(temperature=1.0, max_new_tokens=ctx.config.rollout.max_new_tokens, n=k)
    roll = ctx.engine.generate(requests_for(ctx.prompts), params, derive_seed(ctx.config.seed, "online", ctx.step))
    eos = [ctx.tokenizer.eos_token_id]
    encoded = []
    for i, ex in enumerate(ctx.examples):
        responses = []
        for j in range(k):
            row = i * k + j
            ids = roll.response_ids[row][roll.response_mask[row].bool()].tolist()
            responses.append(ids or eos)
        encoded.append(EncodedExample(ex.prompt, responses, [0.0] * k, None))
    block = token_block(encoded, ctx.pad_id)
    policy = block_logps(ctx.module, block)
    with torch.no_grad():
        ref = ctx.reference(block)
    return PreferenceLogps(policy=policy, reference=ref, lengths=block.lengths, scores=block.scores)


@PREFERENCE_INPUTS.register("token_logits")
def _token_logits(ctx: PreferenceContext) -> TokenLogits:
    """The policy's logits at the response positions of the micro-batch's (single) responses, with gradient."""
    block = token_block(ctx.examples, ctx.pad_id)
    ids = torch.cat([block.prompt_ids, block.response_ids], dim=1)
    mask = torch.cat([block.prompt_mask, block.response_mask], dim=1)
    device = next(ctx.module.parameters()).device
    out = ctx.module(input_ids=ids.to(device), attention_mask=mask.to(device),
                     position_ids=positions_from_mask(mask).to(device), use_cache=False)
    p, r = block.prompt_ids.shape[1], block.response_ids.shape[1]
    return TokenLogits(logits=out.logits[:, p - 1 : p + r - 1].float(), labels=block.response_ids.to(device),
                       mask=block.response_mask.to(device))


@PREFERENCE_INPUTS.register("reward_shift")
def _reward_shift(ctx: PreferenceContext) -> Tensor:
    """BCO's delta: the running mean of the implicit rewards beta * rho the step has seen (0 before any)."""
    return torch.tensor(float(ctx.state["reward_mean"]))


def provide(names: tuple[str, ...], ctx: PreferenceContext) -> dict[str, Any]:
    """The named inputs, each from its registered provider."""
    return {name: PREFERENCE_INPUTS.get(name)(ctx) for name in names}


__all__ = ["PREFERENCE_INPUTS", "PreferenceContext", "Provider", "provide"]

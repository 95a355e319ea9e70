"""Log-probabilities of given response tokens under a model (the trainer's view of a rollout)."""

from __future__ import annotations

import torch

from rlfold.core.masked import positions_from_mask as _positions
from rlfold.models.lean import lean_of


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    response_attention_mask: torch.Tensor | None = None,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[N, R]`` (float32) of the response tokens under ``model``, and optionally the
    per-token entropy of the plain policy; one forward over prompt + response, gradients flow (into the
    entropy only with ``entropy_grad``: a metric needs none). A model enabled for the lean forward
    (``models.lean``) runs on it, its LM head on the response positions only.

    Positions where ``response_mask`` is 0 are set to 0 in both outputs. ``response_attention_mask``
    (default: ``response_mask``) says which response tokens are attended to, e.g. tool output or
    feedback the model did not produce but sees.
    """
    device = model_device(model)
    n_prompt = prompt_ids.shape[1]
    n_resp = response_ids.shape[1]
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    resp_mask = response_mask.to(device)
    attend = resp_mask if response_attention_mask is None else response_attention_mask.to(device)
    mask = torch.cat([prompt_mask.to(device), attend], dim=1).long()
    lean = lean_of(model)
    if lean is not None:
        logits = lean.logits(ids, mask, _positions(mask), n_prompt - 1, n_prompt + n_resp - 1).float()
    else:
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
        logits = out.logits[:, n_prompt - 1 : n_prompt + n_resp - 1].float()
    logp_all = torch.log_softmax(logits, dim=-1)
    keep = resp_mask.bool()
    logprobs = logp_all.gather(-1, ids[:, n_prompt:].unsqueeze(-1)).squeeze(-1)
    logprobs = logprobs.masked_fill(~keep, 0.0)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~keep, 0.0)
    return logprobs, entropy


@torch.no_grad()
def batched_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     response_ids: torch.Tensor, response_mask: torch.Tensor,
                     response_attention_mask: torch.Tensor | None = None, batch_size: int = 0) -> torch.Tensor:
    """``sequence_logprobs`` without gradient, ``batch_size`` rows per forward (0: all at once), in eval mode;
    on the CPU like the batch (the driver's tensors), wherever the model computes."""
    was = model.training
    model.eval()
    try:
        n = prompt_ids.shape[0]
        size = batch_size or n
        out = []
        for s in range(0, n, size):
            sl = slice(s, min(s + size, n))
            att = None if response_attention_mask is None else response_attention_mask[sl]
            out.append(sequence_logprobs(model, prompt_ids[sl], prompt_mask[sl], response_ids[sl], response_mask[sl],
                                         response_attention_mask=att)[0].cpu())
    finally:
        model.train(was)
    return torch.cat(out) if out else response_ids.new_zeros(response_ids.shape, dtype=torch.float32)


__all__ = ["batched_logprobs", "model_device", "sequence_logprobs"]

"""The KL reference: log-probs of the rollouts under the initial policy.

Either a separate frozen copy of the base model (full fine-tuning) or the policy's own module in its
base-model view (LoRA: adapters disabled), so a LoRA run holds one model in memory.
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, Protocol

import torch
from torch import Tensor

from rlfold.core.types import RolloutBatch
from rlfold.models import load_model_and_tokenizer
from rlfold.models.lean import enable_lean, lean_of
from rlfold.models.logprobs import batched_logprobs, model_device
from rlfold.models.policy import Policy


class Reference(Protocol):
    """Per-token log-probs of a rollout batch's responses under the reference policy."""

    module: torch.nn.Module

    def logprobs(self, roll: RolloutBatch, batch_size: int = 0) -> Tensor:
        """[rows, response tokens] log-probs, without gradients."""


class FrozenReference:
    """A second model, loaded from the base weights and frozen."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    def logprobs(self, roll: RolloutBatch, batch_size: int = 0) -> Tensor:
        return batched_logprobs(self.module, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask,
                                roll.response_attention_mask, batch_size=batch_size)


class BaseViewReference:
    """The policy's own module computing the base model inside ``view`` (peft's ``disable_adapter``)."""

    def __init__(self, module: torch.nn.Module, view: Callable[[], ContextManager[Any]]) -> None:
        self.module, self.view = module, view

    def logprobs(self, roll: RolloutBatch, batch_size: int = 0) -> Tensor:
        with self.view():
            return batched_logprobs(self.module, roll.prompt_ids, roll.prompt_mask, roll.response_ids,
                                    roll.response_mask, roll.response_attention_mask, batch_size=batch_size)


def build_reference(policy: Policy, model_path: str, dtype: torch.dtype) -> Reference:
    """The policy's base-model view when it has one, else a frozen model loaded from ``model_path``."""
    if policy.base_view is not None:
        return BaseViewReference(policy.module, policy.base_view)
    module, _ = load_model_and_tokenizer(model_path, dtype, device=model_device(policy.module))
    if lean_of(policy.module) is not None:  # the same forward as the policy's
        enable_lean(module)
    return FrozenReference(module)


__all__ = ["BaseViewReference", "FrozenReference", "Reference", "build_reference"]

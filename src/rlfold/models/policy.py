"""The trained policy as the trainer sees it: the module it computes with, what checkpoints save,
the named weights an engine with weights of its own receives, and the base-model view for a KL reference.

A fully fine-tuned policy is one plain transformers module in all four roles; a LoRA policy
(``models.lora``) is a peft-wrapped module whose checkpoints and engine weights are merged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Protocol

import torch
from torch import Tensor

NamedTensors = Iterator[tuple[str, Tensor]]


class PolicyWeights(Protocol):
    """The policy's weights under the base model's parameter names, for engines that hold their own."""

    def named_weights(self) -> NamedTensors:
        """(name, tensor) pairs, one parameter at a time (the names of ``plain_copy().named_parameters()``)."""

    def plain_copy(self) -> torch.nn.Module:
        """A private plain transformers module with the policy's current weights."""


@dataclass
class PlainWeights:
    """The weights of a plain module: its own parameters, and a deep copy of it."""

    module: torch.nn.Module

    def named_weights(self) -> NamedTensors:
        return iter(self.module.named_parameters())

    def plain_copy(self) -> torch.nn.Module:
        return copy.deepcopy(self.module)


@dataclass
class Policy:
    """A built policy. ``module``: forward, log-probs, the optimiser's trainable parameters; ``saved``: what
    checkpoints write in the HF format (the run loop's ``trainer.model``); ``weights``: what engines of their
    own receive; ``state``: registered state beyond the optimiser (a LoRA adapter); ``base_view``: a context in
    which ``module`` computes the base model (LoRA: adapters disabled), None when the module has no such view."""

    module: torch.nn.Module
    saved: Any
    weights: PolicyWeights
    state: dict[str, Any] = field(default_factory=dict)
    base_view: Callable[[], ContextManager[Any]] | None = None


def full_policy(model: torch.nn.Module) -> Policy:
    """Full fine-tuning: the module is trained, saved and sent as it is."""
    return Policy(module=model, saved=model, weights=PlainWeights(model))


def build_policy(model: torch.nn.Module, lora: Any = None) -> Policy:
    """The policy for ``model.lora`` (None: full fine-tuning; a ``LoraConfig``: LoRA adapters through peft)."""
    if lora is None:
        return full_policy(model)
    from rlfold.models.lora import lora_policy

    return lora_policy(model, lora)


__all__ = ["NamedTensors", "PlainWeights", "Policy", "PolicyWeights", "build_policy", "full_policy"]

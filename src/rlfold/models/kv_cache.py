"""The KV-cache keyword of a transformers model, across the ``past_key_values`` -> ``cache`` rename.

transformers 5.x renamed the KV-cache argument and output field ``past_key_values`` -> ``cache``; the old name
still works there with a deprecation warning until 5.40. The name is chosen per model, so a model whose forward
still takes ``past_key_values`` (transformers 4.x, remote code) keeps working.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping

from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

NEW_CACHE, OLD_CACHE = "cache", "past_key_values"
# the cache field of the installed transformers' causal-LM outputs
LIBRARY_CACHE = NEW_CACHE if NEW_CACHE in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else OLD_CACHE


def forward_parameters(model: nn.Module) -> Mapping[str, Any]:
    """The parameters of ``model.forward`` (empty for a wrapper whose signature cannot be read)."""
    try:
        return inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return {}


def cache_argument(forward_params: Mapping[str, Any]) -> str:
    """The keyword a forward with these parameters takes its KV cache by (the library's name for ``**kwargs``)."""
    for name in (NEW_CACHE, OLD_CACHE):
        if name in forward_params:
            return name
    return LIBRARY_CACHE


def returned_cache(out: Mapping[str, Any]) -> Any:
    """The KV cache in a forward's output (None if it has none), read by key so no deprecated alias is touched."""
    for name in (NEW_CACHE, OLD_CACHE):
        if name in out.keys():
            return out[name]
    return None


__all__ = ["LIBRARY_CACHE", "NEW_CACHE", "OLD_CACHE", "cache_argument", "forward_parameters", "returned_cache"]

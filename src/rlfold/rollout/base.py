"""The engine contract: what the trainer asks of any generation backend (in process, vLLM, a remote server).

Four verbs. ``generate(requests, params, seed)`` samples ``params.n`` responses per request and
returns a ``RolloutBatch`` (token ids in, token ids out); the integer ``seed`` is all the randomness
an engine gets, so a call means the same in another process. ``update_weights(named_tensors,
streamed)`` loads new policy weights (an engine that shares the trainer's tensors ignores it);
``sleep()`` / ``wake()`` release and retake the engine's memory around the update of a colocated
trainer. ``shares_weights`` says whether the engine computes with the trainer's own tensors: if not,
the trainer recomputes old log-probs itself before the update.

An engine is registered in ``ENGINES`` as a factory ``factory(ctx: EngineContext, **options)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Protocol, Sequence, runtime_checkable

import torch

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.models.policy import PlainWeights, PolicyWeights
from rlfold.rollout.sampling import SamplingParams


@dataclass
class GenerationRequest:
    """One prompt to answer. The engine encodes, in order of precedence: ``context_ids`` as given (token
    in: a multi-turn episode continues after exactly these ids, nothing is re-tokenised), the chat
    ``messages`` through the tokenizer's chat template, or ``prompt.text``."""

    prompt: Prompt
    messages: list[dict[str, str]] | None = None
    context_ids: list[int] | None = None
    max_new_tokens: int | None = None  # this request's limit, at most params.max_new_tokens


@dataclass
class EngineContext:
    """What an engine factory may build from: the trainer's live policy (engines that share or copy its
    tensors), its tokenizer, and the directory and dtype it was loaded from (engines in other processes)."""

    model: torch.nn.Module
    tokenizer: Any
    model_path: str
    dtype: torch.dtype
    weights: PolicyWeights | None = None  # the plain named weights (a LoRA policy: merged); None: the module's own
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext  # the trainer's precision (bf16 autocast)

    def policy_weights(self) -> PolicyWeights:
        """What an engine with weights of its own copies and receives (base-model parameter names)."""
        return self.weights if self.weights is not None else PlainWeights(self.model)


@runtime_checkable
class Engine(Protocol):
    """A generation backend (see the module docstring)."""

    pad_id: int
    shares_weights: bool

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams, seed: int) -> RolloutBatch: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


class WrappingEngine:
    """Base of an engine that generates through an ``inner`` engine (multi-turn, follow-up, sharded, verifiers):
    padding, weight sharing, weight updates and sleep/wake are the inner engine's."""

    inner: Engine

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.pad_id, self.shares_weights = inner.pad_id, inner.shares_weights

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], streamed: bool = False) -> None:
        self.inner.update_weights(named_tensors, streamed)

    def sleep(self) -> None:
        self.inner.sleep()

    def wake(self) -> None:
        self.inner.wake()


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """The token ids of chat ``messages`` through the tokenizer's chat template, ending in the generation
    prompt (``return_dict=False``: transformers 5 returns a ``BatchEncoding`` by default)."""
    return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def pad_id_of(tokenizer: Any, engine: str) -> int:
    """The id an engine pads with: the tokenizer's pad token, else its eos token (a ConfigError without either)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ConfigError(f"{engine}: the tokenizer has neither a pad_token nor an eos_token to pad with")
    return int(pad)


def encode_request(tokenizer: Any, request: GenerationRequest, index: int = 0, engine: str = "engine") -> list[int]:
    """The prompt token ids of ``request``: its context ids as given, its chat messages through the
    tokenizer's chat template, or its prompt text (see ``GenerationRequest``)."""
    if request.context_ids is not None:
        ids = list(request.context_ids)
    elif request.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{engine}.generate: request {index} carries chat messages but the tokenizer has no "
                            "chat template")
        ids = chat_prompt_ids(tokenizer, request.messages)
    else:
        ids = list(tokenizer(request.prompt.text, add_special_tokens=True)["input_ids"])
    if len(ids) == 0:
        raise DataError(f"{engine}.generate: prompt {index} ({request.prompt.text!r}) tokenizes to no tokens")
    return ids


def requests_for(prompts: Sequence[Prompt]) -> list[GenerationRequest]:
    """One plain request per prompt (its chat messages when the prompt carries ``meta["messages"]``)."""
    return [GenerationRequest(prompt=p, messages=p.meta.get("messages") if isinstance(p.meta, dict) else None)
            for p in prompts]


__all__ = ["Engine", "EngineContext", "GenerationRequest", "chat_prompt_ids", "encode_request", "pad_id_of", "requests_for"]

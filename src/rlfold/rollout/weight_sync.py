"""Weight-sync bookkeeping for engines that hold their own copy of the policy (vLLM, a server).

What crosses from the trainer to such an engine is a stream of ``(name, tensor)`` pairs. This module
checks that stream against the names, shapes and dtypes the engine was built with, converts each
tensor to the engine's dtype on the CPU (an FSDP2 ``DTensor`` is gathered to its full tensor first,
one parameter at a time), groups the tensors into chunks of at most ``chunk_bytes`` so that an update
never needs a second copy of the whole model, and counts completed updates in ``version``. Nothing
here imports vLLM: the engines hand each chunk to their own loader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch
from safetensors.torch import save_file

from rlfold.core.errors import ConfigError
from rlfold.core.suggest import closest

try:  # torch >= 2.4 exposes DTensor publicly; an FSDP2-sharded parameter is one
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = ()  # type: ignore[assignment,misc]

Named = tuple[str, torch.Tensor]


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype the engine expects for one named weight."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def specs_of(named: Iterable[Named], dtype: torch.dtype | None = None) -> dict[str, TensorSpec]:
    """The spec of every named tensor (``dtype`` overrides the tensors' own: the engine's dtype)."""
    return {name: TensorSpec(tuple(t.shape), dtype or t.dtype) for name, t in named}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a (possibly FSDP2-sharded) parameter, detached."""
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach()


class WeightSync:
    """Checks, converts and chunks one weight update; ``version`` counts the updates that completed.

    ``chunks(named)`` yields lists of ``(name, cpu_tensor)`` whose sizes add up to at most
    ``chunk_bytes`` (a tensor larger than that is a chunk of its own). A name the engine does not know,
    a shape that differs, a name sent twice, or a name never sent is a ``ConfigError`` naming it; the
    version moves only when the whole stream was consumed without one.
    """

    def __init__(self, specs: Mapping[str, TensorSpec], *, chunk_bytes: int = 256 << 20, engine: str = "engine"):
        if chunk_bytes < 1:
            raise ConfigError(f"{engine}: the weight-sync chunk size must be at least 1 byte, got {chunk_bytes}")
        if not specs:
            raise ConfigError(f"{engine}: the engine's model has no weights to sync")
        self.specs = dict(specs)
        self.chunk_bytes = int(chunk_bytes)
        self.engine = engine
        self.version = 0
        self.last_bytes = 0
        self.last_chunks = 0

    def convert(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` checked against the spec of ``name`` and cast to the engine's dtype, on the CPU."""
        spec = self.specs.get(name)
        if spec is None:
            near = closest(name, list(self.specs))
            raise ConfigError(f"{self.engine}: update_weights got {name!r}, which the engine's model does not have"
                              + (f" (did you mean {near!r}?)" if near else ""))
        t = full_tensor(tensor)
        if tuple(t.shape) != spec.shape:
            raise ConfigError(f"{self.engine}: update_weights got {name!r} of shape {tuple(t.shape)}, but the "
                              f"engine's weight has shape {spec.shape}")
        if not (t.is_floating_point() or t.dtype == spec.dtype):
            raise ConfigError(f"{self.engine}: update_weights got {name!r} as {t.dtype}, expected a float tensor "
                              f"({spec.dtype})")
        return t.to(device="cpu", dtype=spec.dtype).contiguous()

    def chunks(self, named: Iterable[Named]) -> Iterator[list[Named]]:
        """The update as chunks of converted tensors (see the class docstring)."""
        seen: set[str] = set()
        chunk: list[Named] = []
        size = total = n_chunks = 0
        for name, tensor in named:
            if name in seen:
                raise ConfigError(f"{self.engine}: update_weights got {name!r} twice in one update")
            seen.add(name)
            t = self.convert(name, tensor)
            nbytes = t.numel() * t.element_size()
            if chunk and size + nbytes > self.chunk_bytes:
                n_chunks += 1
                yield chunk
                chunk, size = [], 0
            chunk.append((name, t))
            size += nbytes
            total += nbytes
        missing = [n for n in self.specs if n not in seen]
        if missing:
            raise ConfigError(f"{self.engine}: update_weights ended without {len(missing)} of the engine's "
                              f"{len(self.specs)} weights (e.g. {', '.join(missing[:3])}); the engine keeps its "
                              f"previous weights (version {self.version})")
        if chunk:
            n_chunks += 1
            yield chunk
        self.version += 1
        self.last_bytes, self.last_chunks = total, n_chunks

    def apply(self, named: Iterable[Named], load: Callable[[list[Named]], None]) -> int:
        """Hand every chunk of the update to ``load``; returns the new version."""
        for chunk in self.chunks(named):
            load(chunk)
        return self.version


class CheckpointWriter:
    """Writes an update as a loadable model directory: the source directory's config and tokenizer
    files, plus the weights as safetensors shards (one per chunk) with their index, so that a new engine
    (or a server's reload) can be built from it."""

    _COPIED = (".json", ".model", ".txt", ".tiktoken", ".jinja")

    def __init__(self, source_dir: str, target_dir: str) -> None:
        self.source_dir, self.target_dir = source_dir, target_dir
        os.makedirs(target_dir, exist_ok=True)
        for name in sorted(os.listdir(source_dir)):
            path = os.path.join(source_dir, name)
            if (os.path.isfile(path) and name.endswith(self._COPIED)
                    and not name.endswith(".safetensors.index.json")):
                with open(path, "rb") as src, open(os.path.join(target_dir, name), "wb") as dst:
                    dst.write(src.read())

    def write(self, chunks: Iterable[list[Named]]) -> str:
        """Replace the directory's weights by ``chunks``; returns the directory."""
        for name in os.listdir(self.target_dir):
            if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                os.remove(os.path.join(self.target_dir, name))
        shards: list[tuple[str, list[str]]] = []
        for i, chunk in enumerate(chunks):
            shard = f"model-{i + 1:05d}.safetensors"
            save_file({n: t for n, t in chunk}, os.path.join(self.target_dir, shard), metadata={"format": "pt"})
            shards.append((shard, [n for n, _ in chunk]))
        index = {"metadata": {}, "weight_map": {n: shard for shard, names in shards for n in names}}
        with open(os.path.join(self.target_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=1)
        return self.target_dir


__all__ = ["CheckpointWriter", "TensorSpec", "WeightSync", "full_tensor", "specs_of"]

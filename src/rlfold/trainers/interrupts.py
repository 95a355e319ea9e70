"""Ctrl-C during a run (step 3 of the run loop): the first stops at a step boundary with a checkpoint of
the last finished step, a second stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Any, Iterator

import torch

from rlfold.trainers.run_dir import _note
from rlfold.trainers.state import Stateful


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _copy_containers(x: Any) -> Any:
    """A copy of the containers of a state; tensors are kept (their version counters tell if they change)."""
    if isinstance(x, dict):
        return {k: _copy_containers(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_containers(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_copy_containers(v) for v in x)
    return x


class StepSnapshot:
    """The registered state as a step starts, and whether the step has written a tensor of it (or a parameter)."""

    def __init__(self, objects: dict[str, Stateful], model: Any) -> None:
        self.state = {name: _copy_containers(obj.state_dict()) for name, obj in objects.items()}
        params = list(model.parameters()) + list(model.buffers()) if hasattr(model, "parameters") else []
        self.watched = [*params, *_tensors(self.state)]
        self.versions = [t._version for t in self.watched]

    def touched(self) -> bool:
        return any(t._version != v for t, v in zip(self.watched, self.versions))

    def restore(self, objects: dict[str, Stateful]) -> None:
        for name, obj in objects.items():
            obj.load_state_dict(self.state[name])


class Interrupts:
    """SIGINT during ``fit``. The first Ctrl-C stops at a step boundary, with a checkpoint of the last
    finished step: a step that has not written any parameter or state tensor yet (generating, scoring)
    is dropped at once and the registered state put back as it began; one already updating is finished
    first. A second Ctrl-C stops at once (a checkpoint write it cuts short is atomic)."""

    def __init__(self) -> None:
        self.requested = False
        self.dropped = False
        self.snapshot: StepSnapshot | None = None
        self.step = 0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt("a second Ctrl-C stopped the run at once")
        self.requested = True
        if self.snapshot is not None and not self.snapshot.touched():
            self.dropped = True
            raise KeyboardInterrupt
        _note(f"Ctrl-C: finishing step {self.step + 1}, then saving a checkpoint (Ctrl-C again stops at once, "
              "keeping the latest checkpoint)")


__all__ = ["Interrupts", "StepSnapshot"]

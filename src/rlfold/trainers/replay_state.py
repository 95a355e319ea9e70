"""A replay part's registered state as plain data: the prepared batch it caches, written field by field.

Checkpoints load with ``weights_only=True`` (``trainers/state.py``), so a ``PreparedBatch`` inside a part's
state is written as a dict of its fields (tensors as they are, prompts as dicts) and rebuilt on load; a
resumed run then replays the same batch as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from rlfold.algos.replay import Replay
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.trainers.update import PreparedBatch

_BATCH = "prepared_batch"  # the key marking a prepared batch inside a replay part's saved state


def batch_state(prep: PreparedBatch) -> dict[str, Any]:
    """A prepared batch as plain data for a checkpoint (tensors kept as they are); ``batch_from_state`` inverts it."""
    out = {f.name: vars(prep)[f.name] for f in fields(PreparedBatch) if f.name not in ("roll", "prompts")}
    out["roll"] = {f.name: vars(prep.roll)[f.name] for f in fields(RolloutBatch)}
    out["prompts"] = [{"text": p.text, "answer": p.answer, "meta": p.meta} for p in prep.prompts]
    return {_BATCH: out}


def batch_from_state(state: dict[str, Any]) -> PreparedBatch:
    d = dict(state[_BATCH])
    d["roll"] = RolloutBatch(**d["roll"])
    d["prompts"] = [Prompt(**p) for p in d["prompts"]]
    return PreparedBatch(**d)


def _encode(x: Any) -> Any:
    if isinstance(x, PreparedBatch):
        return batch_state(x)
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_encode(v) for v in x)
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        return batch_from_state(x) if set(x) == {_BATCH} else {k: _decode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_decode(v) for v in x)
    return x


class ReplayState:
    """The replay part's registered state, a prepared batch it caches written as plain data (exact resume)."""

    def __init__(self, part: Replay) -> None:
        self.part = part

    def state_dict(self) -> dict[str, Any]:
        return _encode(self.part.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.part.load_state_dict(_decode(state))


__all__ = ["ReplayState", "batch_from_state", "batch_state"]

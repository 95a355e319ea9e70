"""Replay parts: after the update, a batch to train on once more (``algo.replay``; registry ``REPLAYS``).

A replay part is the one stateful extension point of the update: the online step calls
``after_update(prep, batch_reward_mean, step)`` after stage 7 with the batch it just trained on, the
mean reward of that batch and the step index; the part returns the batch to run one more update on
now (same optimiser, its cached old log-probs, the loss terms of the recipe) or None, and metrics
(logged as they are named, ``replay/...``). Its ``state_dict`` / ``load_state_dict`` are saved with the
trainer's other state; a batch the part caches may sit in its state as it is (the online step writes it
field by field as plain data and gives it back as the same batch type), so a resume replays it exactly.

The part never sees the trainer: it reads the batch through ``ReplayableBatch`` (the fields of
``trainers.update.PreparedBatch`` it needs) and returns a copy made with ``dataclasses.replace``, so
the algorithm layer imports nothing above it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from rlfold.core.registry import REPLAYS


class ReplayableBatch(Protocol):
    """What a replay part reads of a prepared batch (``trainers.update.PreparedBatch`` is one)."""

    advantages: Tensor          # [N, R]
    loss_mask: Tensor           # [N, R] float
    old_logprobs: Tensor | None  # [N, R]: a replayed batch needs them (the on-policy shortcut is off)
    group_ids: Tensor | None    # [N]



@runtime_checkable
class Replay(Protocol):
    """A replay part (``algo.replay``): after each update, the batch to train once more now, or None."""

    def after_update(self, prep: Any, batch_reward_mean: float, step: int) -> tuple[Any | None, dict[str, float]]:
        """The batch to run one more update on now (or None) and metrics, given the batch just trained on."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


__all__ = ["REPLAYS", "Replay", "ReplayableBatch"]

"""Registered run state: named objects with ``state_dict``/``load_state_dict``, saved in every checkpoint."""

from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GlobalRNG:
    """The process-wide random generators (python, numpy, torch), seeded once per run."""

    def __init__(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])


class Counters:
    """Plain counters kept across a resume (a dict that is its own state)."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values.update(state)


def collect_state(objects: dict[str, Stateful]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` of the registered objects."""
    return {name: obj.state_dict() for name, obj in objects.items()}


def restore_state(objects: dict[str, Stateful], state: dict[str, Any], where: str) -> None:
    """Load every registered object from ``state``; a missing entry is an error naming it."""
    missing = sorted(set(objects) - set(state))
    if missing:
        from rlfold.core.errors import ConfigError

        raise ConfigError(f"{where}: the checkpoint has no state for {', '.join(missing)} (it holds "
                          f"{', '.join(sorted(state)) or 'nothing'}); was it written by another recipe or version?")
    for name, obj in objects.items():
        obj.load_state_dict(state[name])


__all__ = ["Counters", "GlobalRNG", "Stateful", "collect_state", "restore_state"]

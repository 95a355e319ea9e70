"""Registered run state: named objects with ``state_dict``/``load_state_dict``, saved in every checkpoint.

Every state is plain data (tensors, dicts, lists, tuples, str, int, float, bool, None), so a checkpoint
loads with ``torch.load(..., weights_only=True)``: loading a run directory never runs pickled code.
``collect_state`` refuses anything else, naming where it sits, when the checkpoint is written.
"""

from __future__ import annotations

import random
from collections import OrderedDict
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
        version, internal, gauss_next = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
            "numpy": {"bit_generator": str(name), "keys": [int(x) for x in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        py = state["python"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        n = state["numpy"]
        np.random.set_state((n["bit_generator"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))


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


class PartState(dict):
    """The run's state of stateful parts (trainer input ``part_state``): a dict in which each part keeps plain
    data under its own key (RiskPO's quantile tracker under ``riskpo``), checkpointed with the run. Loading
    replaces the whole dict, so an interrupted step's additions are undone with the rest of its state."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clear()
        self.update(state)


_SCALARS = (str, int, float, bool, type(None))


def not_plain(value: Any, where: str) -> list[str]:
    """Where ``value`` holds something ``torch.load(weights_only=True)`` would refuse (``where[...]: type``)."""
    if type(value) in (dict, OrderedDict):
        out = []
        for k, v in value.items():
            if type(k) not in _SCALARS:
                out.append(f"{where}: key {k!r} ({type(k).__module__}.{type(k).__qualname__})")
            out += not_plain(v, f"{where}[{k!r}]")
        return out
    if type(value) in (list, tuple, torch.Size):
        return [p for i, v in enumerate(value) for p in not_plain(v, f"{where}[{i}]")]
    if type(value) in _SCALARS or isinstance(value, torch.Tensor):  # exact types: numpy.float64 is a float
        return []
    return [f"{where}: {type(value).__module__}.{type(value).__qualname__}"]


def collect_state(objects: dict[str, Stateful]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` of the registered objects; refuses state that is not plain data."""
    state = {name: obj.state_dict() for name, obj in objects.items()}
    bad = [p for name, s in state.items() for p in not_plain(s, name)]
    if bad:
        from rlfold.core.errors import RlfoldError

        raise RlfoldError(
            "cannot write a checkpoint: registered state must be plain data (tensors, dicts, lists, tuples, str, "
            f"int, float, bool, None) so that it loads with weights_only=True, but {'; '.join(bad[:5])}"
            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
            + "; convert it in the object's state_dict/load_state_dict")
    return state


def restore_state(objects: dict[str, Stateful], state: dict[str, Any], where: str) -> None:
    """Load every registered object from ``state``; a missing entry is an error naming it."""
    missing = sorted(set(objects) - set(state))
    if missing:
        from rlfold.core.errors import ConfigError

        raise ConfigError(f"{where}: the checkpoint has no state for {', '.join(missing)} (it holds "
                          f"{', '.join(sorted(state)) or 'nothing'}); was it written by another recipe or version?")
    for name, obj in objects.items():
        obj.load_state_dict(state[name])


__all__ = ["Counters", "GlobalRNG", "Stateful", "collect_state", "not_plain", "restore_state"]

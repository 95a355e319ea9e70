"""rlfold: reinforcement-learning post-training of language models, one recipe per method."""

__version__ = "0.1.0"

import importlib as _importlib
import os as _os
import sys as _sys

# OpenMP threads that spin while they wait for work take the cores from any other process: under a competing
# load torch then runs many times slower than its fair share. Passive waiting costs nothing measurable when
# the machine is idle. OpenMP reads the setting when torch loads it, so it is set only if torch is not loaded
# yet, and never over the user's own value (README, "Threads").
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rlfold.core import registry as _registry  # noqa: E402

# Every layer registers its built-in parts into the core registries when imported. Importing the package
# does not import them (``rlfold --help`` needs no torch): a registry imports them the first time it is
# read, so configurations can name any of them. ``rlfold.algos`` etc. are imported on first access.
_LAYERS = ("algos", "envs", "rewards", "rollout", "tasks", "trainers")


def _register_builtins() -> None:
    for layer in _LAYERS:
        _importlib.import_module(f"rlfold.{layer}")


_registry.set_builtin_loader(_register_builtins)


def __getattr__(name: str):
    if name in _LAYERS:
        return _importlib.import_module(f"rlfold.{name}")
    raise AttributeError(f"module 'rlfold' has no attribute {name!r}")

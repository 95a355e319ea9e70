"""rlfold: reinforcement-learning post-training of language models, one recipe per method."""

__version__ = "0.1.0"

import importlib as _importlib

from rlfold.core import registry as _registry

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

"""User-facing errors: each names what went wrong and where (file, line, key, function, sample)."""

from __future__ import annotations

from typing import Any


def dotted(loc: tuple[Any, ...]) -> str:
    """A config location as the user writes it: ``("rewards", 0, "name")`` -> ``rewards[0].name`` ("" for ())."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class RlfoldError(Exception):
    """Base class of errors reported to the user without a traceback by the CLI."""


class ConfigError(RlfoldError):
    """A configuration key, type or value is invalid."""


class DataError(RlfoldError):
    """A dataset is empty or a row is malformed."""


class ModelLoadError(RlfoldError):
    """A model directory is missing or not a loadable causal LM."""


class RewardError(RlfoldError):
    """A reward function raised on a sample."""


class NumericalError(RlfoldError):
    """The loss or gradient stayed non-finite for too many steps in a row."""

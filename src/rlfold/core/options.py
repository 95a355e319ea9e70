"""What a part declares about its options and its data, read by the configuration checks.

* Option domains are the part's own annotations: ``Literal[...]`` for a choice, ``Annotated[float,
  Field(gt=0, lt=1)]`` for a range, ``Annotated[str, registered(REGISTRY)]`` for the name of a
  pluggable piece. ``core.config`` validates every option a recipe sets against them when the
  config loads, so a bad value is refused before a model is loaded; the part's own runtime checks
  stay for direct callers.
* ``@group_relative`` marks an advantage (or a group filter) whose signal is a comparison between
  the samples of one prompt: with one sample per prompt, or greedy sampling (identical samples),
  it carries no learning signal, which the configuration refuses unless ``algo.allow_no_signal``.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

from pydantic import AfterValidator

from rlfold.core.suggest import closest

T = TypeVar("T")


def registered(names: Any, kind: str | None = None) -> AfterValidator:
    """Annotation metadata: a string option must name an entry of ``names`` (a ``Registry`` or a
    mapping), looked up when the option is validated (so entries registered by plugins count)."""

    def check(value: str) -> str:
        known = sorted(names.names() if hasattr(names, "names") else names)
        if value in known:
            return value
        what = kind or getattr(names, "kind", "name")
        close = closest(value, known)
        hint = f"; did you mean {close!r}?" if close else ""
        raise ValueError(f"unknown {what} {value!r}{hint} (known: {', '.join(known)})")

    return AfterValidator(check)


def group_relative(obj: T) -> T:
    """Declare that a part compares the samples of one prompt with each other (GRPO's group
    baseline, RLOO's leave-one-out, ...): one sample per prompt (``rollout.n=1``) leaves no group to
    compare with, and greedy sampling makes the samples of a group identical, so the advantages are
    0 (or lose their baseline)."""
    obj.group_relative = True  # type: ignore[attr-defined]
    return obj


def is_group_relative(part: object) -> bool:
    """Whether ``part`` was declared ``@group_relative``."""
    return bool(getattr(part, "group_relative", False))


def literal_choices(ann: Any) -> list[Any]:
    """The ``Literal`` values reachable in an annotation (through ``Annotated``, ``Optional``, unions)."""
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return list(typing.get_args(ann))
    if origin is typing.Annotated:
        return literal_choices(typing.get_args(ann)[0])
    out: list[Any] = []
    for arg in typing.get_args(ann) if origin is not None else ():
        out += literal_choices(arg)
    return out


__all__ = ["group_relative", "is_group_relative", "literal_choices", "registered"]


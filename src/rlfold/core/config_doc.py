"""The configuration reference ``docs/config.md``, generated from the pydantic models of ``core.config``.

The models are walked generically through ``model_fields`` (nested models, ``Optional``, ``list[Model]``,
``Literal``, pydantic range metadata), so a new field appears in the reference without touching this
module. Regenerate with ``python -m rlfold.core.config_doc > docs/config.md``; a test checks that the
committed file is up to date.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rlfold.core.config import RunConfig

COMMAND = "python -m rlfold.core.config_doc > docs/config.md"

INTRO = """\
A run is configured by a YAML recipe (a shipped recipe name such as `grpo`, or a path) and dotted
`key=value` overrides on the command line, applied on top of it; values are parsed as YAML:

    rlfold train grpo train.lr=3e-5 rollout.n=16 'algo.selection=[{name: mask_truncated}]'

A list item is addressed by position (`rewards.0.weight=0.5` or `rewards[0].weight=0.5`), a whole list
or section is given as a YAML flow value, and `null` is YAML for `None`. A key whose default reads
*required* must be set in every item of its list; unknown keys, wrong types and values outside the
range stop the run before anything is loaded, naming the key. The
options of a registered part (advantage, policy loss, reward, selection, shaping, group filter,
sampler, engine, environment) are not keys of this reference: they go in the part's `*_kwargs` or
`kwargs` dict (`algo.advantage_kwargs={eps: 1e-6}`) and are checked against the part's signature, so
an option the part does not take is an error that lists the ones it accepts
([docs/parts.md](parts.md) describes the parts). Keys ending in `[]` belong to each item of a list."""


@dataclass
class Section:
    """One table of the reference: the leaf fields of one model, reached at ``prefix``."""

    prefix: str                 # "" for the top level, "train.sampler", "rewards[]", ...
    model: type[BaseModel]
    field: FieldInfo | None     # the field of the parent model that holds this section (None: RunConfig)


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); anything else -> (ann, False)."""
    if typing.get_origin(ann) in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(ann)) == 2:
            return args[0], True
    return ann, False


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _nested(ann: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds and the key suffix that reaches it (``""`` or ``"[]"`` for a list), or None."""
    inner, _ = _strip_optional(ann)
    if _is_model(inner):
        return inner, ""
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (None,)
        item, _ = _strip_optional(item)
        if _is_model(item):
            return item, "[]"
    return None


def sections(model: type[BaseModel] = RunConfig, prefix: str = "",
             field: FieldInfo | None = None) -> list[Section]:
    """The model's own section, then the sections of its nested models in field order (depth first)."""
    out = [Section(prefix, model, field)]
    for name, info in model.model_fields.items():
        nested = _nested(info.annotation)
        if nested is not None:
            sub, suffix = nested
            out.extend(sections(sub, f"{prefix}.{name}{suffix}" if prefix else f"{name}{suffix}", info))
    return out


def leaf_fields(section: Section) -> list[tuple[str, FieldInfo]]:
    """``(dotted key, field)`` of the section's fields that are not sections themselves."""
    return [(f"{section.prefix}.{name}" if section.prefix else name, info)
            for name, info in section.model.model_fields.items() if _nested(info.annotation) is None]


def type_name(ann: Any) -> str:
    """A short type for the table: ``float | None``, ``list[int]``, ``dict[str, Any]``, ``str`` for a Literal."""
    inner, optional = _strip_optional(ann)
    if optional:
        return f"{type_name(inner)} | None"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " | ".join(sorted({type(a).__name__ for a in args}))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if ann is Any:
        return "Any"
    if ann is type(None):
        return "None"
    return getattr(ann, "__name__", str(ann))


def yaml_value(value: Any) -> str:
    """A default as it would be written in YAML (flow style)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_of(info: FieldInfo) -> Any:
    """The field's default (calling its factory), or ``PydanticUndefined`` for a required field."""
    if info.default_factory is not None:
        return info.default_factory()
    return info.default


def default_text(info: FieldInfo) -> str:
    value = default_of(info)
    return "required" if value is PydanticUndefined else f"`{yaml_value(value)}`"


def range_text(info: FieldInfo) -> str:
    """Bounds from pydantic metadata as an interval (``[0, 1]``, ``> 0``), Literal choices, or ``non-empty``."""
    lo = hi = None
    notes: list[str] = []
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = f"[{m.ge!r}"
        elif isinstance(m, annotated_types.Gt):
            lo = f"({m.gt!r}"
        elif isinstance(m, annotated_types.Le):
            hi = f"{m.le!r}]"
        elif isinstance(m, annotated_types.Lt):
            hi = f"{m.lt!r})"
        elif isinstance(m, annotated_types.MinLen) and m.min_length == 1:
            notes.append("non-empty")
        elif isinstance(m, annotated_types.MinLen):
            notes.append(f"length >= {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            notes.append(f"length <= {m.max_length}")
    if lo and hi:
        notes.insert(0, f"{lo}, {hi}")
    elif lo:
        notes.insert(0, f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}")
    elif hi:
        notes.insert(0, f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}")
    inner, _ = _strip_optional(info.annotation)
    if typing.get_origin(inner) is Literal:
        notes.append(", ".join(f"`{yaml_value(a)}`" for a in typing.get_args(inner)))
    return "; ".join(notes)


def _cell(text: str) -> str:
    """One table cell: whitespace collapsed, ``|`` escaped (also inside code spans, as GFM tables need)."""
    return " ".join(text.split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """A description as Markdown text: a cell, with ``<`` as ``&lt;`` so ``runs/<name>`` is no HTML tag."""
    return _cell(text).replace("<", "&lt;")


def _title(section: Section) -> str:
    return "Top level" if not section.prefix else f"`{section.prefix}`"


def render_section(section: Section) -> str:
    lines = [f"## {_title(section)}", ""]
    if section.field is not None:
        info = section.field
        text = info.description or ""
        text = text[:1].upper() + text[1:]
        inner, optional = _strip_optional(info.annotation)
        if optional or typing.get_origin(inner) is list:
            text += f". Default: {default_text(info)}."
        lines += [_prose(text), ""]
    lines += ["| key | type | default | range | description |", "|---|---|---|---|---|"]
    for key, info in leaf_fields(section):
        cells = [_cell(f"`{key}`"), _cell(f"`{type_name(info.annotation)}`"), _cell(default_text(info)),
                 _cell(range_text(info)), _prose(info.description or "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_config_doc() -> str:
    """The Markdown reference of every configuration key, in the order of ``RunConfig``."""
    parts = [f"<!-- Generated by `{COMMAND}`; do not edit by hand. -->", "", "# Configuration reference", "",
             INTRO, ""]
    secs = sections()
    parts += ["Sections: " + ", ".join(f"[{_title(s)}](#{_anchor(s)})" for s in secs) + ".", ""]
    for sec in secs:
        parts += [render_section(sec), ""]
    return "\n".join(parts)


def _anchor(section: Section) -> str:
    """The GitHub heading anchor of a section."""
    title = _title(section).lower().replace("`", "")
    return "".join(c for c in title.replace(" ", "-") if c.isalnum() or c in "-_")


def render_help(section: str | None = None, width: int = 100) -> str:
    """Every option (or those under ``section``, e.g. ``rollout`` or ``algo.selection``) as plain text for
    ``rlfold train --help-config``: key, type, default, range, then the description, wrapped."""
    import textwrap

    from rlfold.core.errors import ConfigError

    secs = sections()
    if section:
        key = section.strip().rstrip(".").replace("[]", "")
        chosen = [s for s in secs if s.prefix.replace("[]", "") == key
                  or s.prefix.replace("[]", "").startswith(key + ".")]
        if not chosen:
            names = [s.prefix for s in secs if s.prefix]
            from rlfold.core.suggest import closest

            near = closest(key, [n.replace("[]", "") for n in names])
            raise ConfigError(f"--help-config {section!r}: no such section"
                              + (f"; did you mean {near!r}?" if near else "") + f" (sections: {', '.join(names)})")
        secs = chosen
    lines: list[str] = []
    for sec in secs:
        fields = leaf_fields(sec)
        if not fields:
            continue
        lines.append(f"[{sec.prefix or 'top level'}]")
        for key, info in fields:
            rng = range_text(info).replace("`", "")
            head = f"  {key}: {type_name(info.annotation)} = {default_text(info).strip('`')}"
            lines.append(head + (f"  ({rng})" if rng else ""))
            lines += textwrap.wrap(" ".join((info.description or "").split()), width=width,
                                   initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_config_doc())

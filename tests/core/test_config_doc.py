"""docs/config.md is generated from the config models, documents every field, and names real keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from rlfold.core import config as config_module
from rlfold.core.config import RunConfig
from rlfold.core.config_doc import COMMAND, render_config_doc, sections
from rlfold.core.config_loader import load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _config_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in ``core.config`` that has fields, and every model RunConfig reaches."""
    defined = [obj for obj in vars(config_module).values()
               if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == config_module.__name__
               and obj.model_fields]
    reached = [s.model for s in sections()]
    return list(dict.fromkeys(defined + reached))


def _doc_rows() -> list[tuple[str, str]]:
    """``(key, default cell)`` of every table row of docs/config.md."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+)` \| .*? \| (.*?) \| .*? \| .*? \|$", line)
        if m:
            rows.append((m.group(1), m.group(2)))
    return rows


@pytest.mark.parametrize("model", _config_models(), ids=lambda m: m.__name__)
def test_every_field_has_a_description(model):
    missing = [name for name, info in model.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"{model.__name__}: fields without a description: {', '.join(missing)}"


def test_doc_is_up_to_date():
    assert DOC.is_file(), f"docs/config.md is missing; generate it with `{COMMAND}`"
    assert DOC.read_text(encoding="utf-8") == render_config_doc(), (
        f"docs/config.md is out of date with src/rlfold/core/config.py; regenerate it with `{COMMAND}`")


def test_doc_lists_every_model_and_leaf():
    """Each section model appears, and the rows are exactly the leaf fields of all sections."""
    keys = [k for k, _ in _doc_rows()]
    assert len(keys) == len(set(keys))
    secs = sections()
    section_fields = len(secs) - 1  # every section but the top level is held by one field of its parent
    assert len(keys) == sum(len(s.model.model_fields) for s in secs) - section_fields
    assert {"train.lr", "rollout.env.name", "rewards[].weight", "algo.group_filters[].kwargs"} <= set(keys)


def _resolve(obj, key: str):
    """Follow ``a.b[].c`` through a config instance; an empty list or an unset optional section is
    followed through its model class instead. Returns the value (or the class field) at ``key``."""
    for part in key.split("."):
        is_list = part.endswith("[]")
        name = part.removesuffix("[]")
        model = obj if isinstance(obj, type) else type(obj)
        assert name in model.model_fields, f"{key}: {model.__name__} has no field {name!r}"
        info = model.model_fields[name]
        value = None if isinstance(obj, type) else getattr(obj, name)
        if is_list:
            assert value is None or isinstance(value, list), f"{key}: {name} is not a list"
            if value:
                obj = value[0]
                continue
            value = None
        if value is None:
            nested = [s.model for s in sections() if s.field is info]
            obj = nested[0] if nested else info
        else:
            obj = value
    return obj


def test_every_doc_key_resolves_on_the_default_config():
    cfg = load_config(None, [])
    assert isinstance(cfg, RunConfig)
    for key, _ in _doc_rows():
        value = _resolve(cfg, key)
        assert not isinstance(value, BaseModel), f"{key} is a section, not a leaf"


def test_doc_defaults_are_the_code_defaults():
    """For keys outside lists and unset sections, ``key=<documented default>`` leaves the config at its defaults."""
    defaults = load_config(None, []).model_dump()
    optional_sections = {s.prefix for s in sections() if s.field is not None and s.field.default is None}
    checked = 0
    for key, default in _doc_rows():
        if "[]" in key or any(key.startswith(p + ".") for p in optional_sections):
            continue
        m = re.fullmatch(r"`(.*)`", default)
        assert m, f"{key}: default cell {default!r} is not a code span"
        assert load_config(None, [f"{key}={m.group(1)}"]).model_dump() == defaults, key
        checked += 1
    assert checked > 50

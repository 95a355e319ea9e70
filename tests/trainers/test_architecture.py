"""The trainers layer holds no method: no duck-typed hooks, no part named in its code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rlfold
from rlfold.core import registry

TRAINERS_DIR = Path(rlfold.__file__).resolve().parent / "trainers"
PART_REGISTRIES = [registry.ADVANTAGES, registry.POLICY_LOSSES, registry.AGGREGATIONS, registry.KL_ESTIMATORS,
                   registry.REWARDS, registry.SELECTIONS, registry.SHAPINGS, registry.GROUP_FILTERS,
                   registry.SAMPLERS, registry.ENVIRONMENTS, registry.ENGINES, registry.TASKS,
                   registry.CONFIDENCE_PARSERS, registry.REGULARIZERS, registry.REWARD_AGGREGATORS,
                   registry.REPLAYS]


def _sources() -> list[Path]:
    paths = sorted(TRAINERS_DIR.rglob("*.py"))
    assert len(paths) >= 10
    return paths


def test_no_getattr_hooks_in_trainers():
    found = [f"{p.name}:{i}: {line.strip()}" for p in _sources()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "getattr(" in line]
    assert not found, "\n".join(found)


def _method_names() -> set[str]:
    recipes = {p.stem for p in (TRAINERS_DIR.parent / "recipes").glob("*.yaml")}
    return {n for reg in PART_REGISTRIES for n in reg.names()} | recipes


def test_no_part_name_appears_in_trainers_as_a_string():
    names = _method_names()
    assert "dapo" in names and {"grpo", "dynamic_sampling", "multi_attempt", "domain_mix", "remax"} <= names
    found = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not isinstance(node, ast.Expr):
                for word in re.split(r"[\s/:,]+", node.value):
                    if word in names:
                        found.append(f"{p.name}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_no_config_section_is_named_after_a_method():
    from rlfold.core.config import RunConfig

    names = _method_names()

    def walk(model, prefix=""):
        for key, field in model.model_fields.items():
            yield prefix + key
            ann = field.annotation
            for cand in (ann, *getattr(ann, "__args__", ())):
                if isinstance(cand, type) and hasattr(cand, "model_fields"):
                    yield from walk(cand, prefix + key + ".")

    keys = list(walk(RunConfig))
    assert "algo.group_filters" in keys
    assert not [k for k in keys if any(part in names for part in k.split("."))]

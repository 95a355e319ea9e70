"""DESIGN.md layers: dependencies point one way, downwards; a lower layer never imports a higher one."""

import ast
from pathlib import Path

import rlfold

SRC = Path(rlfold.__file__).resolve().parent
# DESIGN.md's stack, bottom to top; `models` (HF loading) sits beside tasks, `plot` under the CLI.
LAYER = {"core": 0, "sandbox": 0, "cluster": 0, "algos": 1, "rewards": 2, "tasks": 3, "models": 3, "envs": 3, "rollout": 4,
         "recipes": 5, "trainers": 6, "plot": 7, "reporting": 7, "cli": 8}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlfold"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "rlfold" else [node.module]
            out.extend(names)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names if a.name.startswith("rlfold"))
    return out


def test_no_module_imports_a_higher_layer():
    checked, violations = 0, []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = _layer(".".join(rel.parts))
        if own == "__init__":
            continue  # the package root registers every layer's parts
        assert own in LAYER, f"{rel}: module outside the known layers {sorted(LAYER)}"
        for target in _imports(path):
            checked += 1
            # importing the package root (`import rlfold`) loads every layer: only the CLI may
            if LAYER.get(_layer(target), LAYER["cli"]) > LAYER[own]:
                violations.append(f"{rel} ({own}) imports {target}")
    assert checked > 50
    assert not violations, "\n".join(violations)

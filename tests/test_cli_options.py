"""CLI: options anywhere among the overrides; ``rlfold recipes --source`` names where each part lives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import rlfold
from rlfold.cli import main

SRC = Path(rlfold.__file__).resolve().parent


@pytest.mark.parametrize("argv", [
    ["train", "grpo", "--print-config", "train.steps=3", "rollout.n=2"],
    ["train", "grpo", "train.steps=3", "--print-config", "rollout.n=2"],
    ["train", "--print-config", "grpo", "train.steps=3", "rollout.n=2"],
])
def test_print_config_anywhere(argv, capsys):
    assert main(argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 3 and cfg["rollout"]["n"] == 2


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "grpo", "--print-confg"])
    assert exc.value.code == 2 and "--print-confg" in capsys.readouterr().err


def test_recipes_source_points_at_the_definitions(capsys):
    assert main(["recipes", "multi_attempt", "--source"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\S.*?)\s{2,}(\S+)\s+(rlfold/\S+):(\d+)$", out, flags=re.M)
    roles = {r[0] for r in rows}
    assert {"trainer", "engine", "environment", "reward", "advantage", "policy loss", "aggregation"} <= roles
    for role, name, path, line in rows:
        text = (SRC.parent / path).read_text(encoding="utf-8").splitlines()
        defined = text[int(line) - 1].strip()
        # the registration decorator naming the part, or the definition itself
        assert defined.startswith(("def ", "class ")) or f'"{name}"' in defined, (role, name, defined)


def test_recipes_table_for_one_recipe(capsys):
    assert main(["recipes", "dapo"]) == 0
    out = capsys.readouterr().out
    assert "dynamic_sampling" in out and "grpo" not in out.split("dapo", 1)[0]

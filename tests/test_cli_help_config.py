"""``rlfold train --help-config [SECTION]``: every option, each with a description, default and type."""

from __future__ import annotations

from rlfold.cli import main
from rlfold.core.config_doc import leaf_fields, sections


def all_keys() -> list[str]:
    return [key for sec in sections() for key, _ in leaf_fields(sec)]


def test_help_config_lists_every_option_with_a_description(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    keys = all_keys()
    assert len(keys) > 90
    for key in keys:
        heads = [i for i, line in enumerate(lines) if line.startswith(f"  {key}: ")]
        assert heads, f"{key} is not listed"
        nxt = lines[heads[0] + 1]
        assert nxt.startswith("      ") and nxt.strip(), f"{key} has no description"
    assert "  train.lr: float = 0.0001  (> 0)" in lines


def test_help_config_of_one_section(capsys):
    assert main(["train", "--help-config", "rollout"]) == 0
    out = capsys.readouterr().out
    assert "  rollout.engine: str = hf" in out and "  rollout.env.name: str = required" in out
    assert "train.lr" not in out and "[rollout.env]" in out


def test_help_config_of_an_unknown_section_suggests_one(capsys):
    assert main(["train", "--help-config", "rolout"]) == 2
    err = capsys.readouterr().err
    assert "no such section" in err and "did you mean 'rollout'" in err


def test_train_without_a_recipe_is_an_error(capsys):
    assert main(["train"]) == 2
    assert "needs a recipe" in capsys.readouterr().err

"""docs/preference.md names every registered preference loss and every preference recipe."""

import re
from pathlib import Path

import yaml

from rlfold.cli import RECIPES_DIR
from rlfold.core.registry import PREFERENCE_LOSSES

TEXT = (Path(__file__).resolve().parents[2] / "docs" / "preference.md").read_text(encoding="utf-8")


def test_every_registered_loss_is_in_the_loss_table():
    table = set(re.findall(r"`([a-z_]+)`", TEXT))
    missing = [n for n in PREFERENCE_LOSSES.names() if n not in table]
    assert not missing, missing


def test_every_preference_recipe_is_in_the_win_rate_table():
    recipes = [p.stem for p in RECIPES_DIR.glob("*.yaml")
               if (yaml.safe_load(p.read_text()) or {}).get("trainer") == "preference"]
    assert len(recipes) >= 20
    rows = set(re.findall(r"^\| ([a-z_]+) \|", TEXT, flags=re.M))
    assert not [r for r in recipes if r not in rows]

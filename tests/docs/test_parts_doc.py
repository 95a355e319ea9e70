"""The examples in docs/parts.md run as written."""

import json
import re
from pathlib import Path

import pytest

from rlfold.cli import main
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.registry import ADVANTAGES, POLICY_LOSSES

DOC = Path(__file__).resolve().parents[2] / "docs" / "parts.md"
TEXT = DOC.read_text(encoding="utf-8")
SMALL = ["train.steps=2", "train.prompts_per_step=4", "eval.size=8", "checkpoint.every=0", "log.progress=false"]


def _block(lang: str, index: int = 0) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", TEXT, flags=re.S)[index]


def test_yaml_recipe_example_trains(tmp_path, capsys):
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(_block("yaml"))
    assert main(["train", str(recipe), f"run_dir={tmp_path / 'run'}", *SMALL]) == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "rollout/gen_batches" in rows[-1] and "sampling/importance_sampling_ratio/mean" in rows[-1]


def test_registered_parts_example_trains(tmp_path, capsys):
    module = tmp_path / "my_parts.py"
    module.write_text(_block("python"))
    try:
        for adv, extra in (("grpo_clamped", ["algo.advantage_kwargs={bound: 1.5}"]),
                           ("value_baseline", ["algo.advantage_kwargs={}"])):
            run = tmp_path / adv
            args = ["train", "grpo", f"imports=[{module}]", f"algo.advantage={adv}", *extra,
                    "algo.policy_loss=pg_with_ratio_cap", "algo.policy_loss_kwargs={cap: 3}", f"run_dir={run}", *SMALL]
            assert main(args) == 0, capsys.readouterr().err
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            assert rows[-1]["step"] == 2
            if adv == "value_baseline":
                assert "critic/value_loss" in rows[-1]  # `values` made the trainer build a critic
    finally:
        for name in ("grpo_clamped", "value_baseline"):
            if name in ADVANTAGES:
                ADVANTAGES.unregister(name)
        if "pg_with_ratio_cap" in POLICY_LOSSES:
            POLICY_LOSSES.unregister("pg_with_ratio_cap")


def test_option_typo_message_matches_the_doc():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algo.advantage=gae", "algo.advantage_kwargs={lamda: 0.9}"])
    assert "advantage estimator 'gae' takes no option 'lamda'; did you mean 'lam'?" in str(err.value)
    assert "takes no option 'lamda'; did you mean 'lam'?" in TEXT

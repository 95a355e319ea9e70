"""Every shipped recipe runs three steps through the CLI with finite metrics, and ``rlfold recipes`` lists it."""

import json
import math

import pytest
import yaml

from rlfold.cli import RECIPES_DIR, main

RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
# Recipes whose batch must be whole bundles of prompts (riskpo: bundle_size 5); the others run with 4.
PROMPTS_PER_STEP = {"riskpo": 5}
REQUIRED = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax",
            "opo", "ppo", "vc_ppo", "pf_ppo"]


def test_the_issue_s_recipes_are_shipped():
    assert set(REQUIRED) <= set(RECIPES)


# The metrics every step of a trainer logs (the online trainer's unless listed).
STEP_KEYS = {"online": ("reward/mean", "acc/mean", "actor/pg_loss", "actor/grad_norm", "timing_s/step"),
             "guided_decoding": ("reward/mean", "value/loss", "value/acc", "timing_s/step"),
             "reward_modeling": ("rm/loss", "rm/accuracy", "rm/grad_norm", "timing_s/step"),
             "preference": ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                            "logps/chosen", "logps/rejected", "grad_norm", "timing_s/step")}


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """An (untrained) reward model directory for recipes whose rewards read one (the user passes theirs)."""
    from rlfold.models import load_model_and_tokenizer
    from rlfold.trainers.reward_modeling import build_reward_model

    d = tmp_path_factory.mktemp("rm") / "final"
    _, tok = load_model_and_tokenizer("tiny-arith")
    build_reward_model("tiny-arith", tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _reward_model_paths(recipe: str, rm_dir) -> list[str]:
    spec = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
    return [f"rewards.{i}.kwargs.path={rm_dir}" for i, r in enumerate(spec.get("rewards") or [])
            if r.get("name") == "reward_model"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_three_steps_through_the_cli(recipe, tmp_path, capsys, reward_model_dir):
    run_dir = tmp_path / "run"
    rc = main(["train", recipe, f"run_dir={run_dir}", "train.steps=3",
               f"train.prompts_per_step={PROMPTS_PER_STEP.get(recipe, 4)}",
               "eval.size=16", "eval.every=0", "checkpoint.every=0", "log.progress=false", "critic.pretrain_steps=0"
               if recipe != "vc_ppo" else "critic.pretrain_steps=1", *_reward_model_paths(recipe, reward_model_dir)])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)
               and k != "critic/vf_explained_var"}  # NaN when every return of a batch is equal
        assert not bad, (recipe, r["step"], bad)
        assert r["nonfinite_steps"] == 0
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for r in steps:
        for key in STEP_KEYS.get(cfg["trainer"], STEP_KEYS["online"]):
            assert key in r, (recipe, key)
    assert (run_dir / "final" / "model.safetensors").is_file()
    if cfg["algo"]["advantage"] == "gae":
        assert "critic/value_loss" in steps[-1]
    if recipe == "vc_ppo":
        assert "critic/pretrain/value_loss" in rows[0]


def test_recipes_command_lists_every_recipe_with_its_paper_and_parts(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    for recipe in RECIPES:
        assert recipe in out
    for word in ("arXiv 2503.14476", "filter dynamic_sampling", "select pf_ppo", "separate critic", "seq-mean-token-sum-norm",
                 "gspo", "cispo", "remax", "KL k1 x 0.001 in the reward"):
        assert word in flat, word

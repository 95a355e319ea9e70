"""Learning table: each recipe trained from the shipped tiny base, held-out accuracy before/after, minutes.

    python bench/learning_table.py                       # the 8 recipes of the acceptance bar, seed 0
    python bench/learning_table.py --recipes all         # every shipped recipe
    python bench/learning_table.py --recipes ppo gspo --seeds 0 1 --json out.json

Each recipe runs with its own YAML settings (the same budget as ``rlfold demo``: 100 steps of
16 prompts x 8 samples) in this process, one after another, with ``threads`` torch threads.
Accuracy is greedy exact match on the task's 200 held-out prompts, measured before the first
and after the last step. Minutes are wall-clock for the whole run, evaluations included.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from parallel import add_jobs_argument, run_all  # the sibling bench script (this directory is on sys.path)

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

ACCEPTANCE = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "ppo"]


def fit_recipe(recipe: str, seed: int, threads: int, overrides: list[str]) -> tuple[list[dict], float, int, str]:
    """Train ``recipe`` once in a temporary run directory: every metrics row, minutes, steps, task name."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RECIPES_DIR / f"{recipe}.yaml", [
            f"seed={seed}", f"run_dir={tmp}/run", f"threads={threads}", "log.progress=false",
            "eval.every=0", "checkpoint.every=0", *overrides,
        ])
        start = time.perf_counter()
        run = build_run(cfg, Path(cfg.run_dir))
        rows = run.fit()
        minutes = (time.perf_counter() - start) / 60
    return rows, minutes, cfg.train.steps, run.trainer.task.name


def train_recipe(recipe: str, seed: int, threads: int, overrides: list[str]) -> tuple[dict, dict, float, int, str]:
    """Train ``recipe`` once: the first and last held-out evaluation rows, minutes, steps, task name."""
    rows, minutes, steps, task = fit_recipe(recipe, seed, threads, overrides)
    evals = [r for r in rows if f"val/{task}/acc" in r]
    return evals[0], evals[-1], minutes, steps, task


def check_recipes(recipes: list[str], overrides: list[str]) -> None:
    """Load every recipe with the overrides before the first run trains, so that a misspelt recipe name or
    override stops the table at once with its error, not after the runs before it."""
    for recipe in recipes:
        load_config(RECIPES_DIR / f"{recipe}.yaml", [*overrides])


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    """Train ``recipe`` once; return accuracy before/after and minutes."""
    first, last, minutes, steps, task = train_recipe(recipe, seed, threads, overrides)
    key = f"val/{task}/acc"
    return {"recipe": recipe, "seed": seed, "before": first[key], "after": last[key], "minutes": minutes,
            "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=ACCEPTANCE, help="recipe names, or 'all'")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_jobs_argument(ap)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if args.recipes == ["all"] else args.recipes
    torch.set_num_threads(args.threads)
    check_recipes(recipes, args.overrides)
    results = []
    print("| recipe | seed | held-out acc before | after | change (points) | minutes |")
    print("|---|---|---|---|---|---|")
    calls = [(recipe, seed, args.threads, args.overrides) for recipe in recipes for seed in args.seeds]
    for (recipe, seed, *_), r in zip(calls, run_all(run, calls, jobs=args.jobs, threads=args.threads)):
        results.append(r)
        print(f"| {r['recipe']} | {seed} | {r['before']:.1%} | {r['after']:.1%} | "
              f"{100 * (r['after'] - r['before']):+.1f} | {r['minutes']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run_main(main)

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

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.online import OnlineTrainer

ACCEPTANCE = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "ppo"]


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    """Train ``recipe`` once; return accuracy before/after and minutes."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RECIPES_DIR / f"{recipe}.yaml", [
            f"seed={seed}", f"run_dir={tmp}/run", f"threads={threads}", "log.progress=false",
            "eval.every=0", "checkpoint.every=0", *overrides,
        ])
        start = time.perf_counter()
        trainer = OnlineTrainer(cfg, Path(cfg.run_dir))
        rows = trainer.fit()
        minutes = (time.perf_counter() - start) / 60
    key = f"val/{trainer.task.name}/acc"
    evals = [r for r in rows if key in r]
    return {"recipe": recipe, "seed": seed, "before": evals[0][key], "after": evals[-1][key], "minutes": minutes,
            "steps": cfg.train.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=ACCEPTANCE, help="recipe names, or 'all'")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if args.recipes == ["all"] else args.recipes
    torch.set_num_threads(args.threads)
    results = []
    print("| recipe | seed | held-out acc before | after | change (points) | minutes |")
    print("|---|---|---|---|---|---|")
    for recipe in recipes:
        for seed in args.seeds:
            r = run(recipe, seed, args.threads, args.overrides)
            results.append(r)
            print(f"| {r['recipe']} | {seed} | {r['before']:.1%} | {r['after']:.1%} | "
                  f"{100 * (r['after'] - r['before']):+.1f} | {r['minutes']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

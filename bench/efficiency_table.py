"""Efficiency table: length and accuracy on held-out prompts before / after each length-shaping recipe.

    python bench/efficiency_table.py                      # dler, hapo, arlcp from the verbose base, seed 0
    python bench/efficiency_table.py --recipes all        # every recipe on the verbose base
    python bench/efficiency_table.py --recipes dler --seeds 0 1 --json out.json

Each recipe trains the shipped ``tiny-verbose-arith`` base with its own YAML settings, in this process,
one after another. Length is the mean number of response tokens of greedy completions of the 200
held-out prompts; accuracy is greedy ``final_answer`` on the same completions. Minutes are wall-clock
for the whole run, evaluations included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from learning_table import train_recipe  # the sibling bench script (this directory is on sys.path)

from rlfold.cli import RECIPES_DIR

ACCEPTANCE = ["dler", "hapo", "arlcp"]


def verbose_recipes() -> list[str]:
    """Shipped recipes whose base model is the verbose one."""
    out = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if (data.get("model") or {}).get("path") == "tiny-verbose-arith":
            out.append(p.stem)
    return out


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    first, last, minutes, steps, task = train_recipe(recipe, seed, threads, overrides)
    return {"recipe": recipe, "seed": seed, "len_before": first[f"val/{task}/length"],
            "len_after": last[f"val/{task}/length"], "acc_before": first[f"val/{task}/acc"],
            "acc_after": last[f"val/{task}/acc"], "minutes": minutes, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=ACCEPTANCE, help="recipe names, or 'all' (verbose-base recipes)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    recipes = verbose_recipes() if args.recipes == ["all"] else args.recipes
    torch.set_num_threads(args.threads)
    results = []
    print("| recipe | seed | length before | after | change | accuracy before | after | change (points) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe in recipes:
        for seed in args.seeds:
            r = run(recipe, seed, args.threads, args.overrides)
            results.append(r)
            cut = 100 * (r["len_after"] - r["len_before"]) / r["len_before"]
            print(f"| {recipe} | {seed} | {r['len_before']:.1f} | {r['len_after']:.1f} | {cut:+.0f}% | "
                  f"{r['acc_before']:.1%} | {r['acc_after']:.1%} | {100 * (r['acc_after'] - r['acc_before']):+.1f} | "
                  f"{r['minutes']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

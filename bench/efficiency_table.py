"""Efficiency table: length and accuracy on held-out prompts before / after each length-shaping recipe.

    python bench/efficiency_table.py --recipes all --seeds 0 1 2   # the eleven recipes of docs/efficiency.md
    python bench/efficiency_table.py                               # dler, hapo, arlcp, seed 0
    python bench/efficiency_table.py --recipes dler --seeds 0 1 --json out.json
    python bench/efficiency_table.py --summary out.json            # the mean +- std table of a saved run

Each recipe trains its shipped base (``tiny-verbose-arith``, or ``tiny-graded-verbose-arith`` for the
difficulty-aware ones) with its own YAML settings, in this process, one after another. Length is the
mean number of response tokens of greedy completions of the 200 held-out prompts; accuracy is greedy
``final_answer`` on the same completions. Minutes are wall-clock for the whole run, evaluations
included. After the per-seed rows it prints one row per recipe: mean +- std (population) over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import yaml
from entry import run_main  # the sibling bench script (this directory is on sys.path)
from parallel import add_jobs_argument, run_all  # the sibling bench script (this directory is on sys.path)
from learning_table import check_recipes, train_recipe  # the sibling bench script (this directory is on sys.path)

from rlfold.cli import RECIPES_DIR

ACCEPTANCE = ["dler", "hapo", "arlcp"]
BASES = ("tiny-verbose-arith", "tiny-graded-verbose-arith")


def verbose_recipes() -> list[str]:
    """Shipped recipes whose base model is one of the verbose ones."""
    out = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if (data.get("model") or {}).get("path") in BASES:
            out.append(p.stem)
    return out


def summary(results: list[dict]) -> str:
    """One markdown row per recipe: mean +- std over its seeds (population std, 0 for one seed)."""
    def ms(xs: list[float], fmt: str) -> str:
        return f"{fmt.format(statistics.fmean(xs))} ± {fmt.replace('+', '').format(statistics.pstdev(xs))}"

    lines = ["| recipe | base | seeds | length before → after | change | accuracy before → after (%) | "
             "change (points) | minutes |", "|---|---|---|---|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == recipe]
        cut = [100 * (r["len_after"] - r["len_before"]) / r["len_before"] for r in rs]
        pts = [100 * (r["acc_after"] - r["acc_before"]) for r in rs]
        lines.append(
            f"| {recipe} | {rs[0].get('base', '')} | {len(rs)} | {statistics.fmean(r['len_before'] for r in rs):.1f} → "
            f"{ms([r['len_after'] for r in rs], '{:.1f}')} | {ms(cut, '{:+.0f}')}% | "
            f"{100 * statistics.fmean(r['acc_before'] for r in rs):.1f} → {ms([100 * r['acc_after'] for r in rs], '{:.1f}')} | "
            f"{ms(pts, '{:+.1f}')} | {statistics.fmean(r['minutes'] for r in rs):.2f} |")
    return "\n".join(lines)


def base_of(recipe: str) -> str:
    data = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text(encoding="utf-8")) or {}
    return str((data.get("model") or {}).get("path", ""))


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    first, last, minutes, steps, task = train_recipe(recipe, seed, threads, overrides)
    return {"recipe": recipe, "base": base_of(recipe), "seed": seed, "len_before": first[f"val/{task}/length"],
            "len_after": last[f"val/{task}/length"], "acc_before": first[f"val/{task}/acc"],
            "acc_after": last[f"val/{task}/acc"], "minutes": minutes, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=ACCEPTANCE, help="recipe names, or 'all' (verbose-base recipes)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the per-seed rows to this JSON file")
    ap.add_argument("--summary", nargs="+", default=None, metavar="JSON",
                    help="print the mean +- std table of saved --json files and exit")
    add_jobs_argument(ap)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    if args.summary:
        print(summary([r for f in args.summary for r in json.loads(Path(f).read_text())]))
        return
    recipes = verbose_recipes() if args.recipes == ["all"] else args.recipes
    torch.set_num_threads(args.threads)
    check_recipes(recipes, args.overrides)
    results = []
    print("| recipe | seed | length before | after | change | accuracy before | after | change (points) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    calls = [(recipe, seed, args.threads, args.overrides) for recipe in recipes for seed in args.seeds]
    for (recipe, seed, *_), r in zip(calls, run_all(run, calls, jobs=args.jobs, threads=args.threads)):
        results.append(r)
        cut = 100 * (r["len_after"] - r["len_before"]) / r["len_before"]
        print(f"| {recipe} | {seed} | {r['len_before']:.1f} | {r['len_after']:.1f} | {cut:+.0f}% | "
              f"{r['acc_before']:.1%} | {r['acc_after']:.1%} | {100 * (r['acc_after'] - r['acc_before']):+.1f} | "
              f"{r['minutes']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print()
    print(summary(results))


if __name__ == "__main__":
    run_main(main)

"""Preference table: each preference recipe trained from the shipped tiny base; win rate against the reference.

    python bench/preference_table.py                          # every preference recipe, seeds 0 1 2
    python bench/preference_table.py --recipes dpo kto --seeds 0
    python bench/preference_table.py --json out.json --markdown table.md

Each recipe runs with its own YAML settings in this process, one after another. The data is the
synthetic preference set of the recipe (responses of the base model to the task's training prompts,
scored by the ground-truth rewards: exact match + 0.1 format), so every recipe of one seed sees the
same pairs. The win rate is measured on the task's 200 held-out prompts: 4 samples per prompt at
temperature 1 from the trained policy against 4 from the base (same seeds), a tie counting 1/2; 0.5
means no change. The greedy win rate compares one greedy response of each. Minutes are wall-clock for the whole run (data, reference cache, evaluations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run


def preference_recipes() -> list[str]:
    """The shipped recipes whose trainer is ``preference``."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        if (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("trainer") == "preference":
            out.append(path.stem)
    return out


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    """Train ``recipe`` once: win rate and greedy accuracy after the last step, minutes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = RECIPES_DIR / f"{recipe}.yaml" if (RECIPES_DIR / f"{recipe}.yaml").is_file() else Path(recipe)
        cfg = load_config(path, [f"seed={seed}", f"run_dir={tmp}/run", f"threads={threads}", "log.progress=false",
                                 "eval.every=0", "checkpoint.every=0", *overrides])
        start = time.perf_counter()
        r = build_run(cfg, Path(cfg.run_dir))
        rows = r.fit()
        minutes = (time.perf_counter() - start) / 60
    task = r.trainer.task.name
    evals = [row for row in rows if f"val/{task}/win_rate" in row]
    first, last = evals[0], evals[-1]
    return {"recipe": Path(recipe).stem, "seed": seed, "win_rate": last[f"val/{task}/win_rate"],
            "win_rate_greedy": last[f"val/{task}/win_rate_greedy"],
            "acc_before": first[f"val/{task}/acc"], "acc_after": last[f"val/{task}/acc"],
            "score_before": first[f"val/{task}/score"], "score_after": last[f"val/{task}/score"],
            "pref_acc": last.get("val/pref/rewards/accuracies", float("nan")), "minutes": minutes,
            "steps": cfg.train.steps, "loss": cfg.preference.loss}


def _ms(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def markdown(rows: list[dict]) -> str:
    """The table: recipe, loss, win rate, greedy accuracy before -> after, minutes (mean ± std over seeds)."""
    lines = ["| recipe | loss | win rate (T=1) | win rate (greedy) | greedy acc before → after | minutes | seeds |",
             "|---|---|---|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == recipe]
        lines.append(f"| {recipe} | {rs[0]['loss']} | {_ms([r['win_rate'] for r in rs], '.3f')} | "
                     f"{_ms([r['win_rate_greedy'] for r in rs], '.3f')} | "
                     f"{_ms([r['acc_before'] for r in rs], '.1%')} → {_ms([r['acc_after'] for r in rs], '.1%')} | "
                     f"{_ms([r['minutes'] for r in rs], '.2f')} | {len(rs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=None, help="recipe names or YAML paths (default: every "
                                                                "preference recipe)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipes = args.recipes or preference_recipes()
    rows = []
    for recipe in recipes:
        for seed in args.seeds:
            row = run(recipe, seed, args.threads, args.overrides)
            rows.append(row)
            print(f"{row['recipe']:<16} seed {seed}  win rate {row['win_rate']:.3f} (greedy "
                  f"{row['win_rate_greedy']:.3f})  acc {row['acc_before']:.1%} -> "
                  f"{row['acc_after']:.1%}  {row['minutes']:.2f} min", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    print()
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    run_main(main)

"""Calibration table: the ``rewarding_doubt`` recipe from ``tiny-confidence-arith``, held-out ECE / Brier / accuracy.

    python bench/calibration_table.py                      # seeds 0 1 2, one thread
    python bench/calibration_table.py --seeds 0 --json out.json train.steps=80

Each seed trains the recipe with its own YAML settings in this process (``bench/learning_table.py``'s
``train_recipe``). The metrics are those of evaluation with ``eval.confidence``: greedy completions on the
200 held-out prompts, ECE over 10 equal-width bins of the stated p = c / 10, Brier score, and accuracy
(overall and per level), before the first and after the last step. A last row gives mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from learning_table import train_recipe  # the sibling script (this directory is on sys.path)

RECIPE = "rewarding_doubt"
METRICS = ["ece", "brier", "acc"]


def run(seed: int, threads: int, overrides: list[str]) -> dict[str, float]:
    """Train once; the before / after value of every reported metric, and minutes."""
    first, last, minutes, steps, task = train_recipe(RECIPE, seed, threads, overrides)
    row: dict[str, float] = {"seed": seed, "minutes": minutes, "steps": steps}
    levels = sorted(k.rsplit("/", 1)[1] for k in first if k.startswith(f"val/{task}/acc/"))
    for name in METRICS + [f"acc/{lv}" for lv in levels]:
        row[f"{name}/before"], row[f"{name}/after"] = first[f"val/{task}/{name}"], last[f"val/{task}/{name}"]
    return row


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        rows.append(run(seed, args.threads, args.overrides))
    names = [k[: -len("/before")] for k in rows[0] if k.endswith("/before")]
    print("| seed | " + " | ".join(f"{n} before → after" for n in names) + " | minutes |")
    print("|---" * (len(names) + 2) + "|")
    for r in rows:
        cells = [f"{r[f'{n}/before']:.3f} → {r[f'{n}/after']:.3f}" for n in names]
        print(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['minutes']:.2f} |")
    cells = [f"{_cell([r[f'{n}/before'] for r in rows])} → {_cell([r[f'{n}/after'] for r in rows])}" for n in names]
    print("| mean ± std | " + " | ".join(cells) + f" | {statistics.fmean(r['minutes'] for r in rows):.2f} |")
    ratio = [r["ece/after"] / r["ece/before"] for r in rows]
    drop = [100 * (r["acc/after"] - r["acc/before"]) for r in rows]
    print(f"\nECE after / before per seed: {', '.join(f'{x:.2f}' for x in ratio)}; "
          f"accuracy change (points): {', '.join(f'{x:+.1f}' for x in drop)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    run_main(main)

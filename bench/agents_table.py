"""Search-agent table: GRPO (Search-R1), AdaSearch and HDPO trained from the shipped tiny-search base.

    python bench/agents_table.py                               # search_r1 adasearch hdpo, seeds 0 1 2
    python bench/agents_table.py --recipes search_r1 --seeds 0
    python bench/agents_table.py --json out.json --markdown table.md

Each recipe runs with its own YAML settings in this process, one after another, on the search_qa task:
knowledge questions whose answer is only in the BM25 corpus, mixed with one-digit sums the base knows.
Held-out figures (greedy, whole episodes with the search tool, the task's 200 held-out prompts) before and
after training: accuracy on knowledge and on memory questions, and search calls per episode on each. A search
on a memory question is unnecessary; the last column is the cut of those calls relative to GRPO's
(1 - calls / calls of search_r1, same seed). Minutes are wall-clock for the whole run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from parallel import add_jobs_argument, run_all  # the sibling bench script (this directory is on sys.path)

from rlfold.cli import RECIPES_DIR
from rlfold.core.config_loader import load_config
from rlfold.trainers.loop import build_run

BASELINE = "search_r1"
KEYS = {"acc_knowledge": "acc/knowledge", "acc_memory": "acc/memory",
        "calls_knowledge": "tools/calls/mean/knowledge", "calls_memory": "tools/calls/mean/memory"}


def run(recipe: str, seed: int, threads: int, overrides: list[str]) -> dict[str, float | str]:
    """Train ``recipe`` once: the held-out figures before and after, minutes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = RECIPES_DIR / f"{recipe}.yaml" if (RECIPES_DIR / f"{recipe}.yaml").is_file() else Path(recipe)
        cfg = load_config(path, [f"seed={seed}", f"run_dir={tmp}/run", f"threads={threads}", "log.progress=false",
                                 "eval.every=0", "checkpoint.every=0", *overrides])
        start = time.perf_counter()
        r = build_run(cfg, Path(cfg.run_dir))
        rows = r.fit()
        minutes = (time.perf_counter() - start) / 60
    task = r.trainer.task.name
    evals = [row for row in rows if f"val/{task}/acc" in row]
    first, last = evals[0], evals[-1]
    out: dict[str, float | str] = {"recipe": Path(recipe).stem, "seed": seed, "minutes": minutes,
                                   "steps": cfg.train.steps}
    for name, key in KEYS.items():
        out[f"{name}_before"] = first[f"val/{task}/{key}"]
        out[f"{name}_after"] = last[f"val/{task}/{key}"]
    return out


def _ms(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def cut_of_unnecessary_calls(rows: list[dict]) -> dict[tuple[str, int], float]:
    """(recipe, seed) -> 1 - memory-question calls / the baseline's of the same seed (NaN without a baseline)."""
    base = {r["seed"]: r["calls_memory_after"] for r in rows if r["recipe"] == BASELINE}
    out = {}
    for r in rows:
        b = base.get(r["seed"])
        out[(r["recipe"], r["seed"])] = 1 - r["calls_memory_after"] / b if b else float("nan")
    return out


def markdown(rows: list[dict]) -> str:
    """The table (mean ± std over seeds)."""
    cut = cut_of_unnecessary_calls(rows)
    lines = ["| recipe | knowledge acc before → after | memory acc before → after | search calls per knowledge "
             "question | unnecessary calls per memory question | cut vs search_r1 | minutes | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == recipe]

        def col(name: str, fmt: str) -> str:
            return f"{_ms([r[name + '_before'] for r in rs], fmt)} → {_ms([r[name + '_after'] for r in rs], fmt)}"

        cuts = [cut[(recipe, r["seed"])] for r in rs]
        cut_s = "—" if recipe == BASELINE or any(c != c for c in cuts) else _ms(cuts, ".0%")  # NaN: no baseline run
        lines.append(f"| {recipe} | {col('acc_knowledge', '.1%')} | {col('acc_memory', '.1%')} | "
                     f"{col('calls_knowledge', '.2f')} | {col('calls_memory', '.2f')} | {cut_s} | "
                     f"{_ms([r['minutes'] for r in rs], '.1f')} | {len(rs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=[BASELINE, "adasearch", "hdpo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    add_jobs_argument(ap)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every recipe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    calls = [(recipe, seed, args.threads, args.overrides) for recipe in args.recipes for seed in args.seeds]
    for (recipe, seed, *_), row in zip(calls, run_all(run, calls, jobs=args.jobs, threads=args.threads)):
        rows.append(row)
        print(f"{row['recipe']:<10} seed {seed}  knowledge {row['acc_knowledge_before']:.1%} -> "
              f"{row['acc_knowledge_after']:.1%}  memory {row['acc_memory_before']:.1%} -> "
              f"{row['acc_memory_after']:.1%}  calls/memory q {row['calls_memory_before']:.2f} -> "
              f"{row['calls_memory_after']:.2f}  {row['minutes']:.1f} min", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    print()
    print(table, end="")
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    run_main(main)

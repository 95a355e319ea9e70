"""Claims in miniature: each 2025 policy-optimisation variant against plain GRPO, same base, budget and seeds.

    python bench/claims_table.py                          # every row, seeds 0 1 2 (docs/claims.md)
    python bench/claims_table.py --rows clip_cov nsr --seeds 0 --json out.json
    python bench/claims_table.py --summary out.json       # re-print the table of a saved run
    python bench/claims_table.py train.steps=40           # overrides go to every run (GRPO included)

Every run trains its shipped recipe from ``tiny-arith`` (two-digit addition, 100 steps of 16 prompts x 8
samples, the recipes' own settings) in this process, one after another, with ``--threads`` torch threads;
GRPO (``recipes/grpo.yaml``) runs once per seed and is the baseline of every row. Held-out metrics are on
the task's 200 held-out prompts after the last step: greedy accuracy (``val/arith/acc``, the table's
pass@1) and pass@16 (16 samples at temperature 1 per prompt, ``eval.pass_k=16``). Training metrics:
policy entropy is the mean ``actor/entropy`` of the last 20 steps, trained tokens the sum of
``train/loss_tokens`` over the run. Each row states the paper's claim, the measured figures as mean ± std
(population) over seeds, and a verdict computed from the means by the row's rule; "does not reproduce"
is a result, reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from entry import run_main  # the sibling bench script (this directory is on sys.path)
from learning_table import fit_recipe  # the sibling bench script (this directory is on sys.path)

from rlfold.cli import RECIPES_DIR

BASELINE = "grpo"
PASS_K = 16
ENTROPY_TAIL = 20
EQUAL_ACC_POINTS = 3.0  # "equal accuracy" / "at least matches": within this many points of GRPO
# pass@k rows: two-digit addition saturates pass@16 (GRPO 99%), so they add the harder level 3 (base pass@16 3%)
HARDER = ("task.levels=[2, 3]",)
EARLY_STEPS = 30  # "learns faster per step": both compared after 30 of the 100 steps
# ACRE's row: the multiple-choice task and its base, with the shuffled-options re-ask measuring consistency (GRPO's
# baseline keeps the plain letter reward, choice_match)
CHOICE = ("model.path=tiny-choice-arith", "task.name=choice_arith", "accuracy_reward=choice_match",
          "rollout.followup={name: shuffled_options}", "rollout.max_new_tokens=10")
EVERY_RUN = (f"eval.pass_k={PASS_K}", "eval.kl_to_reference=true")  # held-out KL(π ‖ π_ref) of every run


@dataclass(frozen=True)
class Claim:
    """One row: the recipe, the paper's claim in words, the metrics shown, and the rule that decides it."""

    recipe: str
    claim: str
    metrics: tuple[str, ...]
    holds: Callable[[dict[str, float], dict[str, float], dict[str, float]], bool]  # (recipe means, GRPO means,
    # GRPO's std over seeds) -> reproduced? A "higher" claim must beat GRPO's mean by more than GRPO's seed std.
    setting: tuple[str, ...] = ()  # overrides of this row and of its GRPO baseline (e.g. a harder task)
    baseline_only: tuple[str, ...] = ()  # overrides of the GRPO baseline alone (its reward on another task)


def _within(r: dict[str, float], g: dict[str, float]) -> bool:
    return abs(r["acc"] - g["acc"]) * 100 <= EQUAL_ACC_POINTS


def _at_least(r: dict[str, float], g: dict[str, float], sd: dict[str, float] | None = None) -> bool:
    return (g["acc"] - r["acc"]) * 100 <= EQUAL_ACC_POINTS


def _higher(key: str) -> Callable[[dict[str, float], dict[str, float], dict[str, float]], bool]:
    """The recipe's mean of ``key`` exceeds GRPO's by more than GRPO's std over seeds (its seed noise)."""
    return lambda r, g, sd: r[key] - g[key] > sd[key]


CLAIMS = [
    Claim("clip_cov", "keeps policy entropy higher at equal held-out accuracy", ("entropy", "acc"),
          lambda r, g, sd: _higher("entropy")(r, g, sd) and _within(r, g)),
    Claim("kl_cov", "keeps policy entropy higher at equal held-out accuracy", ("entropy", "acc"),
          lambda r, g, sd: _higher("entropy")(r, g, sd) and _within(r, g)),
    Claim("nsr", f"raises pass@{PASS_K} over GRPO", (f"pass@{PASS_K}", "acc"),
          _higher(f"pass@{PASS_K}"), HARDER),
    Claim("w_reinforce", f"raises pass@{PASS_K} over GRPO", (f"pass@{PASS_K}", "acc"),
          _higher(f"pass@{PASS_K}"), HARDER),
    Claim("psr", "raises pass@1 (greedy accuracy) over GRPO", ("acc", f"pass@{PASS_K}"),
          _higher("acc"), HARDER),
    Claim("unlikeliness", f"raises pass@{PASS_K} over GRPO", (f"pass@{PASS_K}", "acc"),
          _higher(f"pass@{PASS_K}"), HARDER),
    Claim("d3s", "reaches GRPO's final accuracy with fewer trained tokens", ("acc", "tokens"),
          lambda r, g, sd: _at_least(r, g) and g["tokens"] - r["tokens"] > sd["tokens"]),
    Claim("mhpo", "at least matches GRPO's accuracy", ("acc", "entropy"), _at_least),
    Claim("adora", "at least matches GRPO's accuracy", ("acc", "length"), _at_least),
]
OPTIONAL = [  # rows whose recipe ships later; skipped while it is absent
    Claim("disco", "at least matches GRPO's accuracy", ("acc",), _at_least),
    Claim("drpo", "at least matches GRPO's accuracy", ("acc", "length"), _at_least),
    Claim("riskpo", f"at least matches GRPO's pass@{PASS_K}", (f"pass@{PASS_K}", "acc"),
          lambda r, g, sd: r[f"pass@{PASS_K}"] >= g[f"pass@{PASS_K}"] - EQUAL_ACC_POINTS / 100, HARDER),
    Claim("empo", "raises accuracy with no labels at all", ("acc", "acc_gain"), lambda r, g, sd: r["acc_gain"] > 0),
    Claim("ace", "at least matches GRPO's accuracy", ("acc", f"pass@{PASS_K}"), _at_least),
    Claim("pipo", "its retrospective replay shows in its metrics, at no loss of accuracy", ("replayed", "acc"),
          lambda r, g, sd: r["replayed"] > 0 and _at_least(r, g)),
    Claim("cepo", f"learns faster per step than GRPO (higher accuracy after {EARLY_STEPS} steps)",
          ("acc", "acc_gain"), _higher("acc"), (f"train.steps={EARLY_STEPS}",)),
    Claim("q_sharp", "raises accuracy at a lower KL to the reference than RL", ("acc", "kl_ref", "acc_gain"),
          lambda r, g, sd: r["acc_gain"] > 0 and r["kl_ref"] < g["kl_ref"]),
    Claim("acre", "raises answer consistency across option orders", ("consistency", "acc"),
          _higher("consistency"), CHOICE, ("rewards=[{name: choice_match, weight: 1.0}]",)),
]


def available_claims() -> list[Claim]:
    return [c for c in CLAIMS + OPTIONAL if (RECIPES_DIR / f"{c.recipe}.yaml").is_file()]


def train(recipe: str, seed: int, threads: int, overrides: list[str], setting: tuple[str, ...] = (),
          extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Train ``recipe`` once (with the row's ``setting`` and ``extra`` overrides); the row's figures."""
    rows, minutes, _, task = fit_recipe(recipe, seed, threads, [*EVERY_RUN, *setting, *extra, *overrides])
    evals = [r for r in rows if f"val/{task}/acc" in r]
    steps = [r for r in rows if r.get("step", 0) > 0 and "actor/entropy" in r]
    # update steps: a policy update (actor/*) or, for value-guided decoding, a value-model update (value/*)
    updates = [r for r in rows if r.get("step", 0) > 0 and any(k.startswith(("actor/", "value/")) for k in r)]
    first, last = evals[0], evals[-1]
    tail = steps[-ENTROPY_TAIL:]
    return {"recipe": recipe, "setting": " ".join(setting), "seed": seed, "minutes": minutes, "steps": len(updates),
            "acc": last[f"val/{task}/acc"], "acc_gain": last[f"val/{task}/acc"] - first[f"val/{task}/acc"],
            f"pass@{PASS_K}": last[f"val/{task}/pass@{PASS_K}"], "length": last[f"val/{task}/length"],
            "kl_ref": last.get(f"val/{task}/kl_ref", float("nan")),
            # the shuffled_options follow-up: share of greedy held-out choices that held when re-asked
            "consistency": last.get(f"val/{task}/followup/consistent/mean", float("nan")),
            "entropy": statistics.fmean(r["actor/entropy"] for r in tail) if tail else float("nan"),
            "tokens": float(sum(r.get("train/loss_tokens", 0.0) for r in steps)),
            # share of steps on which a replay part (algo.replay) trained a batch once more
            "replayed": statistics.fmean(float(any(v == 1.0 for k, v in r.items()
                                                   if k.startswith("replay/") and k.endswith("_active")))
                                         for r in steps) if steps else 0.0}


def _of(rows: list[dict], recipe: str, setting: str) -> list[dict]:
    return [r for r in rows if r["recipe"] == recipe and r.get("setting", "") == setting]


def _stat(f: Callable[[list[float]], float], xs: list[float]) -> float:
    """``f`` over the seeds, or NaN where a run lacks the metric (``statistics`` fails on NaN input)."""
    return float("nan") if any(math.isnan(x) for x in xs) else f(xs)


def _means(rows: list[dict], recipe: str, setting: str = "") -> dict[str, float]:
    rs = _of(rows, recipe, setting)
    return {k: _stat(statistics.fmean, [r[k] for r in rs]) for k in rs[0] if isinstance(rs[0][k], float)}


def _sds(rows: list[dict], recipe: str, setting: str = "") -> dict[str, float]:
    rs = _of(rows, recipe, setting)
    return {k: _stat(statistics.pstdev, [r[k] for r in rs]) for k in rs[0] if isinstance(rs[0][k], float)}


def _cell(rows: list[dict], recipe: str, key: str, setting: str = "") -> str:
    xs = [r[key] for r in _of(rows, recipe, setting)]
    scale, fmt = (100, "{:.1f}") if key in ("acc", "acc_gain", "replayed", "consistency") or key.startswith(
        "pass@") else (
        (1e-3, "{:.1f}k") if key == "tokens" else (1, "{:.3f}" if key in ("entropy", "kl_ref") else "{:.1f}"))
    mean, sd = _stat(statistics.fmean, xs) * scale, _stat(statistics.pstdev, xs) * scale
    if math.isnan(mean):
        return "n/a"
    return f"{fmt.format(mean)} ± {fmt.format(sd).rstrip('k')}"


UNITS = {"acc": "acc (%)", "acc_gain": "acc gain (points)", f"pass@{PASS_K}": f"pass@{PASS_K} (%)",
         "entropy": "entropy (nats)", "tokens": "trained tokens", "length": "length (tokens)",
         "replayed": "steps replayed (%)", "kl_ref": "KL to π_ref (nats)", "consistency": "consistency (%)"}


def table(rows: list[dict]) -> str:
    """The markdown table: one line per claim, recipe vs GRPO for each of its metrics, and the verdict."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Seeds {' '.join(map(str, seeds))}; mean ± std (population) over seeds; GRPO is the baseline of every row.",
             "", "| recipe | setting | claim | metric: recipe vs GRPO | verdict |", "|---|---|---|---|---|"]
    for c in [c for c in CLAIMS + OPTIONAL if _of(rows, c.recipe, " ".join(c.setting))]:
        st = " ".join(c.setting)
        if not _of(rows, BASELINE, st):
            continue
        r, g = _means(rows, c.recipe, st), _means(rows, BASELINE, st)
        shown = "; ".join(f"{UNITS[m]} {_cell(rows, c.recipe, m, st)} vs {_cell(rows, BASELINE, m, st)}"
                          for m in c.metrics)
        verdict = "reproduces" if c.holds(r, g, _sds(rows, BASELINE, st)) else "does not reproduce"
        lines.append(f"| {c.recipe} | {st or 'default'} | {c.claim} | {shown} | {verdict} |")
    minutes = sum(r["minutes"] for r in rows)
    lines += ["", f"{len(rows)} runs, {minutes:.1f} minutes of training in all."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=None, help="claim rows (recipe names); default: every shipped one")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the per-run rows to this JSON file")
    ap.add_argument("--summary", default=None, help="print the table of a saved --json file and exit")
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every run (GRPO included)")
    args = ap.parse_args()
    if args.summary:
        print(table(json.loads(Path(args.summary).read_text())))
        return
    known = {c.recipe: c for c in available_claims()}
    names = args.rows or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"no claim row for {', '.join(unknown)}; rows: {', '.join(known)}")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    settings = list(dict.fromkeys((known[n].setting, known[n].baseline_only) for n in names))
    runs = [(BASELINE, st, extra) for st, extra in settings] + [(n, known[n].setting, ()) for n in names]
    for seed in args.seeds:
        for recipe, setting, extra in runs:
            row = train(recipe, seed, args.threads, args.overrides, setting, extra)
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))


if __name__ == "__main__":
    run_main(main)

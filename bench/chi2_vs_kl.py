"""χ² occupancy regularisation vs KL on a hackable proxy: true reward at equal proxy reward.

    python bench/chi2_vs_kl.py                                   # the table of docs/regularizers.md
    python bench/chi2_vs_kl.py --seeds 0 --kl 0.1 --chi2 0.1     # one quick pair
    python bench/chi2_vs_kl.py --json out.json train.steps=20    # overrides go to every run

Every run is recipe ``chi2_occupancy`` (GRPO on ``tiny-verbose-arith``, trained on the deliberately
hackable ``length_bonus_proxy``; ``final_answer`` is the true reward), in this process, one after
another, with ``--threads`` torch threads: once unregularised, then with ``algo.kl_coef`` (k3, in
the loss) at each ``--kl`` coefficient and with ``chi2_occupancy`` at each ``--chi2`` coefficient,
for every seed. Proxy and true reward are the means of ``reward/length_bonus_proxy/mean`` and
``acc/mean`` (both on the sampled training rollouts) over the last ``--last`` steps; ``val`` is
greedy ``final_answer`` on the held-out prompts after the last step.

"True at matched proxy" reads each method's curve (the base policy's step-1 point, its
coefficients from large to small, the unregularised run) as piecewise linear in proxy reward,
and interpolates the true reward at proxy levels that both curves cover. With few coefficients the
curves are coarse (straight lines between seed means); compare the per-coefficient rows too.
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

RECIPE = "chi2_occupancy"
PROXY, TRUE = "reward/length_bonus_proxy/mean", "acc/mean"


def method_overrides(method: str, coef: float) -> list[str]:
    """The overrides of one arm: no regulariser, KL at ``coef``, or χ² at ``coef``."""
    if method == "kl":
        return [f"algo.kl_coef={coef}", "algo.regularizers=[]"]
    if method == "chi2":
        return ["algo.kl_coef=0", f"algo.regularizers=[{{name: chi2_occupancy, coef: {coef}}}]"]
    return ["algo.kl_coef=0", "algo.regularizers=[]"]


def train(method: str, coef: float, seed: int, threads: int, last: int, overrides: list[str]) -> dict:
    """One run: proxy / true reward over its last steps, the base policy's (step 1), held-out accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(RECIPES_DIR / f"{RECIPE}.yaml", [
            f"seed={seed}", f"run_dir={tmp}/run", f"threads={threads}", "log.progress=false", "eval.every=0",
            "checkpoint.every=0", *method_overrides(method, coef), *overrides,
        ])
        start = time.perf_counter()
        run = build_run(cfg, Path(cfg.run_dir))
        rows = run.fit()
        minutes = (time.perf_counter() - start) / 60
    val_key = f"val/{run.trainer.task.name}/acc"
    steps = [r for r in rows if r["step"] > 0 and PROXY in r]
    tail = steps[-last:]
    evals = [r for r in rows if val_key in r]
    return {"method": method, "coef": coef, "seed": seed, "minutes": minutes,
            "proxy": statistics.fmean(r[PROXY] for r in tail), "true": statistics.fmean(r[TRUE] for r in tail),
            "base_proxy": steps[0][PROXY], "base_true": steps[0][TRUE],
            "val": evals[-1][val_key], "kl": statistics.fmean(r.get("actor/reward_kl", float("nan")) for r in tail),
            "chi2": statistics.fmean(r.get("actor/chi2", float("nan")) for r in tail)}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    """True reward at proxy ``x`` on the piecewise-linear curve (points sorted by proxy), None outside."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def curve(results: list[dict], method: str) -> list[tuple[float, float]]:
    """(proxy, true) seed means of the base policy, each coefficient of ``method`` and no regulariser."""
    base = (statistics.fmean(r["base_proxy"] for r in results), statistics.fmean(r["base_true"] for r in results))
    pts = [base]
    for coef in sorted({r["coef"] for r in results if r["method"] == method}, reverse=True):
        rs = [r for r in results if r["method"] == method and r["coef"] == coef]
        pts.append((statistics.fmean(r["proxy"] for r in rs), statistics.fmean(r["true"] for r in rs)))
    rs = [r for r in results if r["method"] == "none"]
    if rs:
        pts.append((statistics.fmean(r["proxy"] for r in rs), statistics.fmean(r["true"] for r in rs)))
    return sorted(pts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--kl", nargs="*", type=float, default=[0.3, 1.0, 3.0], help="algo.kl_coef values")
    ap.add_argument("--chi2", nargs="*", type=float, default=[0.003, 0.01, 0.03], help="chi2_occupancy coefs")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unregularised runs")
    ap.add_argument("--last", type=int, default=5, help="steps averaged at the end of each run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the per-run rows to this JSON file")
    add_jobs_argument(ap)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arms = ([] if args.no_baseline else [("none", 0.0)]) + [("kl", c) for c in args.kl] \
        + [("chi2", c) for c in args.chi2]
    results = []
    print("| method | coef | seed | proxy | true | held-out true (greedy) | KL (k3/token) | chi2 | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    calls = [(method, coef, seed, args.threads, args.last, args.overrides) for method, coef in arms
             for seed in args.seeds]
    for (method, coef, seed, *_), r in zip(calls, run_all(train, calls, jobs=args.jobs, threads=args.threads)):
        results.append(r)
        print(f"| {method} | {coef:g} | {seed} | {r['proxy']:.3f} | {r['true']:.3f} | {r['val']:.3f} | "
              f"{r['kl']:.4f} | {r['chi2']:.3g} | {r['minutes']:.2f} |", flush=True)
    print()
    print(f"base policy (step 1, all runs): proxy {mean_std([r['base_proxy'] for r in results])}, "
          f"true {mean_std([r['base_true'] for r in results])}")
    print()
    print(f"| method | coef | proxy (mean ± std over {len(args.seeds)} seeds) | true | held-out true (greedy) |")
    print("|---|---|---|---|---|")
    for method, coef in arms:
        rs = [r for r in results if r["method"] == method and r["coef"] == coef]
        print(f"| {method} | {coef:g} | {mean_std([r['proxy'] for r in rs])} | {mean_std([r['true'] for r in rs])} | "
              f"{mean_std([r['val'] for r in rs])} |")
    kl_curve, chi2_curve = curve(results, "kl"), curve(results, "chi2")
    lo = max(kl_curve[0][0], chi2_curve[0][0])
    hi = min(kl_curve[-1][0], chi2_curve[-1][0])
    print()
    print("| proxy reward | true reward, KL | true reward, chi2 | chi2 − KL |")
    print("|---|---|---|---|")
    for i in range(6):
        x = lo + (hi - lo) * i / 5
        a, b = interpolate(kl_curve, x), interpolate(chi2_curve, x)
        if a is not None and b is not None:
            print(f"| {x:.3f} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    run_main(main)

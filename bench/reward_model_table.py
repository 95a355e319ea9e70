"""Reward models on synthetic arithmetic preferences (the figures of docs/reward_models.md).

Per seed (each seed samples its own synthetic dataset from the shipped tiny-arith base):

1. clean     ``rlfold train bt_reward_model``: held-out accuracy (pairs of held-out prompts with r_c > r_r);
2. plain     the same on data with 20% of the labels flipped (``preference.synthetic.flip_fraction=0.2``):
             held-out accuracy against the true labels (``val/rm/clean_accuracy``);
3. aware     the same flipped data with the flip-aware options (a cross-fitted ensemble's preference
             strength; pairs it scores below 0 flipped; adaptive margin; label smoothing);
4. audit     ``rlfold data synth --flip 0.2`` then ``rlfold data audit``: recall of the planted flips and
             the false-positive rate among the other pairs.

    python bench/reward_model_table.py                 # 3 seeds, the recipe's 1000 steps
    python bench/reward_model_table.py --seeds 0 --steps 300   # a quick look

Every run is a CLI command in a subprocess (printed; one whose output exists in --work is reused), with one torch thread (``--threads``: on a shared
2-core machine two threads per process oversubscribe the cores); run directories go to --work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

AWARE = ["reward_modeling.ensemble=2", "reward_modeling.folds=2", "reward_modeling.flip_below=0.0",
         "reward_modeling.adaptive_margin=0.5", "reward_modeling.label_smoothing=0.05"]


THREADS = 1
AUDIT: list[str] = []
SIGMAS = (0.0, 0.5, 1.0)


def run(argv: list[str], done: Path | None = None) -> str:
    """Run ``rlfold ARGV`` unless ``done`` exists already (a rerun after an interruption reuses finished runs)."""
    if done is not None and done.exists():
        print(f"$ rlfold {' '.join(argv)}\n  (reused: {done} exists)", flush=True)
        return ""
    cmd = [sys.executable, "-m", "rlfold.cli", *argv]
    print("$ rlfold " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out.stdout


def last(run_dir: Path, key: str) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r][-1]


def first(run_dir: Path, key: str) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r[key] for r in rows if key in r]
    return vals[0] if vals else None


def one_seed(seed: int, work: Path, steps: int, member_steps: int, audit_steps: int) -> dict[str, float]:
    common = [f"seed={seed}", f"train.steps={steps}", "log.progress=false", f"threads={THREADS}", "checkpoint.every=0",
              f"eval.every={steps}"]
    res: dict[str, float] = {}
    clean, plain, aware = work / f"clean-{seed}", work / f"plain-{seed}", work / f"aware-{seed}"
    run(["train", "bt_reward_model", f"run_dir={clean}", *common], clean / "final")
    res["clean_acc"] = last(clean, "val/rm/accuracy")
    flip = ["preference.synthetic.flip_fraction=0.2"]
    run(["train", "bt_reward_model", f"run_dir={plain}", *common, *flip], plain / "final")
    res["plain_acc"] = last(plain, "val/rm/clean_accuracy")
    run(["train", "bt_reward_model", f"run_dir={aware}", *common, *flip, *AWARE,
         f"reward_modeling.member_steps={member_steps}"], aware / "final")
    res["aware_acc"] = last(aware, "val/rm/clean_accuracy")
    res["aware_flip_recall"] = first(aware, "strength/flip_recall") or float("nan")
    res["aware_flip_fp"] = first(aware, "strength/flip_false_positive_rate") or float("nan")
    data = work / f"flipped-{seed}.jsonl"
    run(["data", "synth", "--out", str(data), "--flip", "0.2", "--seed", str(seed), "--threads", str(THREADS)], data)
    js = work / f"audit-{seed}.json"
    run(["data", "audit", str(data), "--seed", str(seed), "--steps", str(audit_steps), "--no-progress",
         "--threads", str(THREADS), *AUDIT,
         "--json", str(js), "--out", str(work / f"audit-{seed}.md")], js)
    audit = json.loads(js.read_text())
    fig = audit["planted"]
    res["audit_recall"], res["audit_fp"] = fig["recall"], fig["false_positive_rate"]
    res["audit_pairs"] = float(fig["planted"] + fig["clean"])
    rows = audit["rows"]
    for k in SIGMAS:  # the recall / false-positive trade-off of the rule mu + k sigma < 0
        planted = [r for r in rows if r["planted"]]
        clean = [r for r in rows if not r["planted"]]
        res[f"audit_recall_k{k}"] = sum(r["mean"] + k * r["std"] < 0 for r in planted) / len(planted)
        res[f"audit_fp_k{k}"] = sum(r["mean"] + k * r["std"] < 0 for r in clean) / len(clean)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000, help="steps of each reward model run (the recipe: 1000)")
    ap.add_argument("--member-steps", type=int, default=400, help="steps of each flip-aware ensemble member")
    ap.add_argument("--audit-steps", type=int, default=600, help="steps of each audit ensemble member")
    ap.add_argument("--work", default="runs/bench_reward_models")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_seed = {s: one_seed(s, work, args.steps, args.member_steps, args.audit_steps) for s in args.seeds}
    keys = [("clean_acc", "RM held-out accuracy, clean synthetic pairs"),
            ("plain_acc", "20% flipped: plain BT RM held-out accuracy (true labels)"),
            ("aware_acc", "20% flipped: flip-aware RM held-out accuracy (true labels)"),
            ("aware_flip_recall", "20% flipped: flip-aware ensemble, recall of the flips"),
            ("aware_flip_fp", "20% flipped: flip-aware ensemble, false-positive rate"),
            ("audit_recall", "rlfold data audit (default rule mu + sigma < 0): recall of planted flips"),
            ("audit_fp", "rlfold data audit (default rule mu + sigma < 0): false-positive rate")]
    for k in SIGMAS:
        keys += [(f"audit_recall_k{k}", f"audit, rule mu + {k:g} sigma < 0: recall"),
                 (f"audit_fp_k{k}", f"audit, rule mu + {k:g} sigma < 0: false-positive rate")]
    print(f"\n| figure | {' | '.join(f'seed {s}' for s in args.seeds)} | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for k, label in keys:
        vals = [per_seed[s][k] for s in args.seeds]
        mean = statistics.fmean(vals)
        print(f"| {label} | {' | '.join(f'{v:.1%}' for v in vals)} | {mean:.1%} |")
    drop_plain = [per_seed[s]["clean_acc"] - per_seed[s]["plain_acc"] for s in args.seeds]
    drop_aware = [per_seed[s]["clean_acc"] - per_seed[s]["aware_acc"] for s in args.seeds]
    print(f"\naccuracy lost to the flips: plain {statistics.fmean(drop_plain):.1%}, flip-aware "
          f"{statistics.fmean(drop_aware):.1%} (mean over seeds {args.seeds})")
    print(f"total time: {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()

"""Kill-and-resume trial: SIGKILL a real ``rlfold train`` run at random times, resume it, compare with run A.

    python bench/kill_resume.py                       # 15 kills, seed 0, 12 steps
    python bench/kill_resume.py --kills 30 --seed 3 --steps 20 --work /tmp/kr --keep

1. Run ``rlfold train grpo`` (tiny but real: 4 prompts x 4 samples per step, a checkpoint every
   step, no intermediate evaluation, one thread) uninterrupted into ``A``.
2. Into ``B``: start the same run (``--resume B`` once ``B/config.yaml`` exists), SIGKILL it, and
   again, ``--kills`` times; then let the last start finish. Each kill is drawn with
   ``random.Random(seed)``: with probability ``--ckpt-share`` the moment a new checkpoint temporary
   directory (``checkpoints/.tmp-step_*``, or ``.tmp-final``) appears, the first or the second of this
   start, plus 0-5 ms half of the time, so that many kills land in the middle of a checkpoint write;
   otherwise either during start-up (a random share of run A's time to its first metrics row) or a
   random fraction of a step (run A's s/step) after the start's next finished checkpoint. A kill
   counts as "during a checkpoint write" when the dead process itself left a ``.tmp-*`` / ``.old-*``
   directory or a ``.latest.tmp`` behind (an earlier kill's leftovers are not counted again).
3. Compare ``final/model.safetensors`` of A and B bitwise (file bytes and every tensor) and the
   ``metrics.jsonl`` rows without ``timing_s/*`` and ``perf/*``.

No wall-clock limit is imposed anywhere: every process is bounded by its steps. Exit code 0 when
the final weights and the metrics are bitwise equal, 1 otherwise (or when a start fails by itself).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CKPT = "checkpoints"
POLL_S = 0.001


def train_args(run_dir: Path, steps: int) -> list[str]:
    return [
        "grpo", f"train.steps={steps}", "train.prompts_per_step=4", "rollout.n=4", "checkpoint.every=1",
        "checkpoint.keep=2", "eval.every=0", "task.held_out_size=16", "eval.size=16", "eval.pass_k=2",
        "log.progress=false", "threads=1", f"run_dir={run_dir}",
    ]


def command(run_dir: Path, steps: int, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "rlfold.cli", "train", *train_args(run_dir, steps)]
    return [*cmd, "--resume", str(run_dir)] if resume else cmd


def metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]


def n_rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def temp_dirs(run_dir: Path) -> set[str]:
    """Checkpoint temporary directories being written now (``checkpoints/.tmp-step_*``, ``.tmp-final``)."""
    found = set()
    for root, prefix in ((run_dir / CKPT, ".tmp-step_"), (run_dir, ".tmp-final")):
        try:
            found |= {p.name for p in root.iterdir() if p.name.startswith(prefix)}
        except FileNotFoundError:
            pass
    return found


def write_leftovers(run_dir: Path) -> dict[str, int]:
    """What a process killed in the middle of a checkpoint write leaves behind: {path: mtime_ns}."""
    found = {}
    for root in (run_dir / CKPT, run_dir):
        if root.is_dir():
            for p in root.iterdir():
                if p.name.startswith((".tmp-", ".old-")) or p.name == ".latest.tmp":
                    try:
                        found[str(p.relative_to(run_dir))] = p.stat().st_mtime_ns
                    except FileNotFoundError:
                        pass
    return found


def run_a(run_dir: Path, steps: int, log: Path) -> tuple[float, float]:
    """The uninterrupted run; returns (seconds to its first metrics row, seconds per step after it)."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(command(run_dir, steps, resume=False), stdout=fh, stderr=subprocess.STDOUT)
        first = None
        while proc.poll() is None:
            if first is None and n_rows(run_dir) >= 1:
                first = time.perf_counter() - start
            time.sleep(0.01)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run A failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    first = first if first is not None else total / 2
    return first, (total - first) / steps


def start_b(run_dir: Path, steps: int, log: Path) -> subprocess.Popen:
    resume = (run_dir / "config.yaml").is_file()
    fh = log.open("w")
    proc = subprocess.Popen(command(run_dir, steps, resume), stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_at_checkpoint(proc: subprocess.Popen, run_dir: Path, skip: int, delay: float) -> bool:
    """SIGKILL ``delay`` s after a new checkpoint temp dir appears (the ``skip``+1-th); False if the run ended first."""
    seen = temp_dirs(run_dir)  # leftovers of an earlier kill are removed by the resumed run itself
    while proc.poll() is None:
        new = temp_dirs(run_dir) - seen
        if new:
            seen |= new
            if skip == 0:
                if delay:
                    time.sleep(delay)
                _kill(proc)
                return True
            skip -= 1
        time.sleep(POLL_S)
    return False


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, delay: float) -> bool:
    """SIGKILL ``delay`` s after the run finishes its next checkpoint (``latest`` moves); False if it ended first."""
    before = latest(run_dir)
    while proc.poll() is None:
        if latest(run_dir) != before:
            return kill_after(proc, delay)
        time.sleep(POLL_S)
    return False


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL after ``delay`` seconds; False if the run ended first."""
    end = time.perf_counter() + delay
    while proc.poll() is None:
        if time.perf_counter() >= end:
            _kill(proc)
            return True
        time.sleep(POLL_S)
    return False


def latest(run_dir: Path) -> str:
    try:
        return (run_dir / CKPT / "latest").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "-"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=15, help="SIGKILLs to deliver to run B (default 15)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default 0)")
    ap.add_argument("--steps", type=int, default=12, help="train.steps of both runs (default 12)")
    ap.add_argument("--ckpt-share", type=float, default=0.5,
                    help="share of kills aimed at a checkpoint write (default 0.5)")
    ap.add_argument("--work", default=None, help="work directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    a, b, logs = work / "A", work / "B", work / "logs"
    for d in (a, b, logs):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir()
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    first_row_s, step_s = run_a(a, args.steps, logs / "A.log")
    print(f"run A: {time.perf_counter() - t0:.1f} s (first metrics row after {first_row_s:.1f} s, "
          f"{step_s:.2f} s/step)", flush=True)

    kills = mid_write = starts = aimed = 0
    events = []
    while True:
        log = logs / f"B-{starts:02d}.log"
        resumed = (b / "config.yaml").is_file()
        leftovers_before = write_leftovers(b)
        proc = start_b(b, args.steps, log)
        starts += 1
        if kills < args.kills:
            # The kill schedule: at a checkpoint write (the first or second this start writes), during
            # start-up (no progress), or a random time into the step after its next finished checkpoint.
            u = rng.random()
            if u < args.ckpt_share:
                skip, delay = rng.choice((0, 0, 0, 1)), rng.choice((0.0, rng.uniform(0.0, 0.005)))
                how = f"at checkpoint write #{skip + 1}" + (f" + {delay * 1e3:.1f} ms" if delay else "")
                killed = kill_at_checkpoint(proc, b, skip, delay)
            elif u < args.ckpt_share + (1 - args.ckpt_share) / 3:
                delay = rng.uniform(0.1, 0.9) * first_row_s
                how = f"{delay:.1f} s after the start"
                killed = kill_after(proc, delay)
            else:
                delay = rng.uniform(0.0, step_s)
                how = f"{delay:.2f} s after its next finished checkpoint"
                killed = kill_after_checkpoint(proc, b, delay)
            if killed:
                kills += 1
                aimed += u < args.ckpt_share
                # only what this process left (an earlier kill's leftovers may still be there)
                left = sorted(k for k, t in write_leftovers(b).items() if leftovers_before.get(k) != t)
                mid_write += bool(left)
                events.append(f"kill {kills:2d} ({'resumed' if resumed else 'fresh'} start): {how}; "
                              f"metrics rows {n_rows(b)}; latest {latest(b)}"
                              f"{'; left ' + ', '.join(left) if left else ''}")
                print(events[-1], flush=True)
                continue
        proc.wait()
        if proc.returncode != 0:
            print(f"start {starts} of run B failed by itself (exit {proc.returncode}); {log}:\n"
                  f"{log.read_text()[-3000:]}")
            return 1
        break
    total = time.perf_counter() - t0

    fa, fb = a / "final" / "model.safetensors", b / "final" / "model.safetensors"
    bytes_equal = fa.read_bytes() == fb.read_bytes()
    from safetensors.torch import load_file
    import torch

    ta, tb = load_file(fa), load_file(fb)
    tensors_equal = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ra, rb = metric_rows(a), metric_rows(b)
    metrics_equal = ra == rb
    steps_b = [r["step"] for r in rb]
    differing = [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]

    print()
    print(f"steps {args.steps}, seed {args.seed}: {starts} starts of run B, {total:.0f} s in all")
    print(f"kills: {kills} ({aimed} aimed at a checkpoint write)")
    print(f"kills that landed during a checkpoint write (temporary files left behind): {mid_write}")
    print(f"final/model.safetensors bitwise equal: {bytes_equal} (sha256 A {sha256(fa)[:12]}, B {sha256(fb)[:12]}); "
          f"tensors equal: {tensors_equal}")
    print(f"metrics.jsonl rows equal (without timing_s/*, perf/*): {metrics_equal} "
          f"({len(ra)} rows in A, {len(rb)} in B; B's steps "
          f"{'each once' if steps_b == list(range(args.steps + 1)) else steps_b})"
          + (f"; first differing row {differing[0]}" if differing else ""))
    if args.keep or args.work:
        print(f"work directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if bytes_equal and tensors_equal and metrics_equal else 1


if __name__ == "__main__":
    sys.exit(main())

"""rlfold vs TRL's GRPOTrainer: same tiny model, settings and prompts, one process, interleaved pairs.

    python bench/vs_trl.py                                  # step mode: lengths 8 32 128, 3 pairs of 2+2 steps
    python bench/vs_trl.py --lengths 8 --pairs 1 --precision bf16
    python bench/vs_trl.py --budget-s 300                   # train each for 300 s wall, held-out accuracy

Step mode: per length, rlfold and TRL each take one warm-up step, then ``--pairs`` times ``-k`` rlfold steps
followed by ``-k`` TRL steps (the rlfold steps run inside a TRL callback, so both live in this one process).
Each step is timed in wall seconds (perf_counter) and process CPU seconds (process_time). A TRL step runs from
the end of the previous step's callback to its own ``on_step_end``: batch fetch, generation (``_prepare_inputs``
inside ``training_step``), reward, loss, clip, optimizer step and the log/save check. tok/s = 128 * length /
wall s per step (completion tokens trained per second), the same formula for both.
Budget mode: from the same base weights each side trains ``--budget-s`` wall seconds (checked after each step,
so it may overrun by under one step; max_new_tokens 8, eos stops a completion as in the recipe), then both models
are scored by the same code: a fresh fp32 copy of the model with the trained weights, rlfold's greedy
``evaluate`` on the task's 200 held-out prompts, ``exact_match`` accuracy.

Aligned settings (rlfold ``recipes/grpo.yaml`` vs GRPOConfig):
- model: tiny-arith copied to a temp dir with ``max_position_embeddings`` 512 (128 is too short for 128 new
  tokens; default RoPE, so outputs are unchanged); both sides load that copy, at every length. TRL gets the
  model and rlfold's tokenizer object (``processing_class``); the prompt ids each side feeds the model are
  asserted equal (<bos> + one token per character).
- data: the rlfold task's training prompts as a ``datasets.Dataset`` (plain text ``prompt``, ``answer``);
  rewards: one TRL reward function calling rlfold's ``score_batch`` with exact_match 1.0 + format 0.1 (finish
  "stop" when the completion ends in eos, as rlfold reports it). Prompt order differs (each shuffles its own way).
- batch: B=16 x G=8: per_device_train_batch_size=128, num_generations=8, generation_batch_size=128
  (steps_per_generation=1), gradient_accumulation_steps=1, num_iterations=1 (so TRL computes no old log-probs).
- sampling: temperature 1, top_p 1, top_k 0. Forced length (step mode): rlfold ``rollout.ignore_eos=true``
  (samples eos and goes on); TRL ``min_new_tokens=max_new_tokens`` (eos logit masked; TRL masks everything after
  an eos, so it must never be sampled). Completion lengths of both are checked.
- optimiser: torch AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0, constant, no warmup, grad clip
  1.0; TRL ``optim="adamw_torch"`` (its default on torch>=2.8 is the fused kernel; rlfold's is the plain one).
- loss: beta 0 (no reference model), epsilon 0.2 both sides (rlfold ppo_clip clip_low=clip_high=0.2),
  TRL loss_type "grpo" = rlfold seq-mean-token-mean; advantages (r - mean_g) / (std_g + eps), unbiased std,
  scale_rewards "group"; TRL's eps is hard-coded 1e-4, so rlfold is run with ``algo.advantage_kwargs.eps=1e-4``.
- TRL extras off: gradient_checkpointing=False (TRL's default is True), disable_dropout=True (rlfold does it),
  logging_strategy/save_strategy/eval_strategy "no", report_to none, use_cpu, bf16 set explicitly (TRL's default
  is True). Same torch thread count for both (``--threads``, checked after both are built).
- precision bf16: rlfold ``train.mixed_precision=bf16``; TRL ``bf16=True``. What each actually computes in is
  probed with a forward hook on the warm-up step and printed (dtype of a layer's output, generation vs update).
  Seen with TRL 1.16 / accelerate 1.15 on CPU: parameters and AdamW state stay fp32; at train() accelerate wraps
  ``model.forward`` in bf16 autocast (outputs cast back to fp32), so generation runs in bf16 too, and the loss
  forward also sits in ``accelerator.autocast()``. No model cast, no grad scaler.
Not aligned: TRL always computes per-token entropies in the loss forward (rlfold as its metrics need);
TRL's sampler, seed handling and prompt order are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from entry import run_main  # the sibling bench script (this directory is on sys.path)
from rlfold.core.config_loader import load_config
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt
from rlfold.models.loading import load_model_and_tokenizer, resolve_model_path
from rlfold.rewards import score_batch
from rlfold.rollout import EngineContext, GenerationRequest
from rlfold.rollout.base import encode_request
from rlfold.rollout.hf_engine import HFEngine
from rlfold.trainers.evaluate import evaluate
from rlfold.trainers.loop import build_run

RECIPE = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "recipes" / "grpo.yaml"
SPECS = [("exact_match", 1.0), ("format", 0.1)]
B, G = 16, 8


def widened_model(src: str, dst: Path, positions: int = 512) -> Path:
    """A copy of the model directory with ``max_position_embeddings`` raised (same weights and tokenizer)."""
    shutil.copytree(resolve_model_path(src), dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = max(positions, cfg.get("max_position_embeddings", 0))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def rlfold_trainer(model: Path, length: int, forced: bool, precision: str, threads: int, tmp: Path,
                   held_out: int, levels: list[int] | None = None, seed: int = 0) -> Any:
    overrides = [f"seed={seed}"] + ([f"task.levels=[{','.join(map(str, levels))}]"] if levels else [])
    overrides += [f"model.path={model}", f"rollout.max_new_tokens={length}", f"rollout.ignore_eos={str(forced).lower()}",
                 f"train.prompts_per_step={B}", f"rollout.n={G}", "train.steps=1000000", f"run_dir={tmp}",
                 "log.progress=false", f"threads={threads}", f"task.held_out_size={held_out}", "eval.every=0",
                 "checkpoint.every=0", "algo.advantage_kwargs.eps=1.0e-4",
                 f"train.mixed_precision={'bf16' if precision == 'bf16' else 'none'}"]
    trainer = build_run(load_config(RECIPE, overrides), tmp).trainer
    assert [(r.name, r.weight) for r in trainer.cfg.rewards] == SPECS, trainer.cfg.rewards  # what TRL's fn scores
    return trainer


class Clock:
    """Wall and process-CPU seconds of a block, appended to ``rows`` as (wall, cpu)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        out = (w - self.wall, c - self.cpu)
        self.wall, self.cpu = w, c
        return out


def trl_trainer(model_dir: Path, prompts: list[Prompt], length: int, forced: bool, precision: str, tmp: Path,
                lengths_seen: list[int], callbacks: list, seed: int = 0) -> Any:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model_and_tokenizer(str(model_dir))
    eos = {tok.eos_token_id}

    def reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]], answer: list[str],
               **_: Any) -> list[float]:
        lengths_seen.extend(len(c) for c in completion_ids)
        finishes = [FINISH_STOP if ids and ids[-1] in eos else FINISH_LENGTH for ids in completion_ids]
        total, _ = score_batch(SPECS, [Prompt(text=p, answer=a) for p, a in zip(prompts, answer)], completions,
                               finishes)
        return total.tolist()

    args = GRPOConfig(
        output_dir=str(tmp), use_cpu=True, bf16=precision == "bf16", fp16=False, seed=seed,
        per_device_train_batch_size=B * G, num_generations=G, generation_batch_size=B * G,
        gradient_accumulation_steps=1, num_iterations=1, max_completion_length=length,
        temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": length} if forced else None,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        gradient_checkpointing=False, disable_dropout=True, max_steps=1_000_000,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        log_completions=False, dataloader_num_workers=0,
    )
    data = Dataset.from_dict({"prompt": [p.text for p in prompts], "answer": [p.answer for p in prompts]})
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                          callbacks=callbacks)
    for quiet in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(quiet)  # no progress bar / printed logs
    return trainer


def make_callback(on_end: Callable[[int, tuple[float, float]], bool]) -> Any:
    """A TrainerCallback timing each optimizer step (previous mark to on_step_end); ``on_end(step, (wall, cpu))``
    may do other work (the clock restarts after it) and returns True to stop training."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        clock: Clock

        def on_train_begin(self, args, state, control, **kw):
            self.clock = Clock()

        def on_step_end(self, args, state, control, **kw):
            lap = self.clock.lap()
            if on_end(state.global_step, lap):
                control.should_training_stop = True
            self.clock = Clock()

    return StepClock()


def dtype_probe(module: torch.nn.Module) -> tuple[Counter, Callable[[], None]]:
    """Count (grad enabled, output dtype) of one MLP projection's forwards; returns the counter and a remover."""
    seen: Counter = Counter()
    layer = module.get_submodule("model.layers.0.mlp.down_proj")
    handle = layer.register_forward_hook(
        lambda m, i, o: seen.update([("update" if torch.is_grad_enabled() else "no-grad", str(o.dtype))]))
    return seen, handle.remove


def check_prompt_ids(rl: Any, trl: Any, text: str) -> list[int]:
    ours = encode_request(rl.tokenizer, GenerationRequest(prompt=Prompt(text=text, answer="")))
    theirs = list(trl._tokenize_prompts([text])[0][0])
    assert ours == theirs, f"prompt ids differ: rlfold {ours} vs TRL {theirs}"
    return ours


def mean(rows: list[tuple[float, float]], i: int) -> float:
    return statistics.mean(r[i] for r in rows)


def step_mode(args: argparse.Namespace, model_dir: Path) -> None:
    hdr = (f"{'len':>4} {'rl wall':>8} {'rl cpu':>7} {'gen':>6} {'score':>6} {'update':>7} {'trl wall':>8} "
           f"{'trl cpu':>7} {'wall x':>7} {'cpu x':>6} {'rl tok/s':>9} {'trl tok/s':>9}")
    table = []
    for length in args.lengths:
        with tempfile.TemporaryDirectory() as tmp:
            rl = rlfold_trainer(model_dir, length, True, args.precision, args.threads, Path(tmp) / "rl", 8)
            rl_rows: list[tuple[float, float]] = []
            rl_parts: list[dict[str, float]] = []
            rl_lengths: list[float] = []
            step_no = [0]

            def rl_steps(n: int, keep: bool) -> None:
                for _ in range(n):
                    c = Clock()
                    m = rl.step(step_no[0]).metrics
                    step_no[0] += 1
                    lap = c.lap()
                    rl_lengths.extend([m["response_length/min"], m["response_length/max"]])
                    if keep:
                        rl_rows.append(lap)
                        rl_parts.append(m)

            trl_rows: list[tuple[float, float]] = []
            total = 1 + args.pairs * args.k

            def trl_end(step: int, lap: tuple[float, float]) -> bool:
                if step == 1:
                    for name, (seen, remove) in probes.items():
                        remove()
                        print(f"  precision probe ({args.precision}) {name}: {dict(seen)}; model.forward wrapped in "
                              f"autocast by accelerate: {hasattr(trl.model, '_original_forward')}")
                else:
                    trl_rows.append(lap)
                if step < total and (step - 1) % args.k == 0:
                    rl_steps(args.k, True)
                return step >= total

            trl_lengths: list[int] = []
            trl = trl_trainer(model_dir, rl.task.train, length, True, args.precision, Path(tmp) / "trl",
                              trl_lengths, [make_callback(trl_end)])
            ids = check_prompt_ids(rl, trl, rl.task.train[0].text)
            if length == args.lengths[0]:
                print(f"prompt {rl.task.train[0].text!r} -> ids {ids} on both sides")
                acc = trl.accelerator
                with acc.autocast():
                    amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else "off"
                print(f"TRL bf16={trl.args.bf16}: accelerate mixed_precision={acc.mixed_precision!r}, param dtype "
                      f"{next(trl.model.parameters()).dtype}, accelerator.autocast() on cpu: {amp}")
            probes = {"rlfold": dtype_probe(rl.model), "trl": dtype_probe(trl.model)}
            rl_steps(1, False)  # warm-up (probed)
            probes["rlfold"][1]()
            print(f"  precision probe ({args.precision}) rlfold: {dict(probes.pop('rlfold')[0])}")
            assert torch.get_num_threads() == args.threads, torch.get_num_threads()
            trl.train()
            assert set(rl_lengths) == {length}, f"rlfold lengths {set(rl_lengths)}"
            assert set(trl_lengths) == {length}, f"TRL completion lengths {Counter(trl_lengths)}"
        rw, rc, tw, tc = mean(rl_rows, 0), mean(rl_rows, 1), mean(trl_rows, 0), mean(trl_rows, 1)
        parts = [statistics.mean(m[k] for m in rl_parts) for k in ("timing_s/gen", "timing_s/reward", "timing_s/update")]
        table.append(f"{length:>4} {rw:>8.3f} {rc:>7.3f} {parts[0]:>6.3f} {parts[1]:>6.3f} {parts[2]:>7.3f} "
                     f"{tw:>8.3f} {tc:>7.3f} {tw / rw:>7.2f} {tc / rc:>6.2f} {B * G * length / rw:>9.0f} "
                     f"{B * G * length / tw:>9.0f}")
        print(f"  length {length}: {len(rl_rows)} rlfold + {len(trl_rows)} TRL steps measured", flush=True)
    print(f"\n{args.precision}, {args.threads} thread(s), s/step are means over {args.pairs} pair(s) x {args.k} "
          "steps; x = TRL / rlfold")
    print(hdr)
    print("\n".join(table))


def accuracy(model_dir: Path, state: dict[str, torch.Tensor], held_out: list[Prompt]) -> float:
    """rlfold's greedy held-out evaluation of ``state`` loaded into a fresh fp32 copy of the model."""
    model, tok = load_model_and_tokenizer(str(model_dir))
    model.load_state_dict({k: v.detach().float() for k, v in state.items()})
    engine = HFEngine(EngineContext(model=model.eval(), tokenizer=tok, model_path=str(model_dir),
                                    dtype=torch.float32))
    return evaluate(engine, held_out, reward="exact_match", k=1, max_new_tokens=8, seed=7)["acc"]


def budget_mode(args: argparse.Namespace, model_dir: Path) -> None:
    results = []
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            rl = rlfold_trainer(model_dir, 8, False, args.precision, args.threads, Path(tmp) / "rl", 200,
                                args.levels, seed=pair)
            held = rl.task.held_out
            before = accuracy(model_dir, rl.model.state_dict(), held)
            start, steps = time.perf_counter(), 0
            while time.perf_counter() - start < args.budget_s:
                rl.step(steps)
                steps += 1
            rl_secs = time.perf_counter() - start
            results.append(("rlfold", pair, before, accuracy(model_dir, rl.model.state_dict(), held), steps, rl_secs))
            print(f"  pair {pair} rlfold: {steps} steps in {rl_secs:.1f} s", flush=True)
            train = rl.task.train
            del rl
            spent = [0.0]  # sum of step laps: from on_train_begin to the last on_step_end

            def trl_end(step: int, lap: tuple[float, float]) -> bool:
                spent[0] += lap[0]
                return spent[0] >= args.budget_s

            trl = trl_trainer(model_dir, train, 8, False, args.precision, Path(tmp) / "trl", [],
                              [make_callback(trl_end)], seed=pair)
            base = {k: v.clone() for k, v in trl.model.state_dict().items()}
            trl.train()
            trl_secs = spent[0]
            unwrapped = trl.accelerator.unwrap_model(trl.model)
            results.append(("trl", pair, accuracy(model_dir, base, held), accuracy(model_dir, unwrapped.state_dict(),
                                                                                    held), trl.state.global_step, trl_secs))
            print(f"  pair {pair} TRL: {trl.state.global_step} steps in {trl_secs:.1f} s", flush=True)
    print(f"\n{args.precision}, {args.threads} thread(s), budget {args.budget_s:.0f} s, levels "
          f"{args.levels or 'recipe'}, greedy exact match on {len(held)} held-out prompts")
    print(f"{'lib':>6} {'pair':>4} {'before':>7} {'after':>7} {'gain pts':>8} {'steps':>6} {'train s':>8} {'s/step':>7}")
    for lib, pair, b, a, n, s in results:
        print(f"{lib:>6} {pair:>4} {b:>7.1%} {a:>7.1%} {100 * (a - b):>+8.1f} {n:>6} {s:>8.1f} {s / max(n, 1):>7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-arith")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 128], help="max_new_tokens (step mode)")
    ap.add_argument("--pairs", type=int, default=None,
                    help="interleaved pairs (default: 3 step mode, 1 budget; budget pair i runs both sides at seed i)")
    ap.add_argument("-k", type=int, default=2, help="steps of each side per pair (step mode)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both")
    ap.add_argument("--budget-s", type=float, default=0.0, help="budget mode: wall seconds of training per side")
    ap.add_argument("--levels", type=int, nargs="+", default=None,
                    help="budget mode: arith difficulty levels (default: the recipe's [2], which saturates within "
                         "300 s; 4 = three-digit addition does not)")
    args = ap.parse_args()
    args.pairs = args.pairs or (1 if args.budget_s else 3)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5.2x renames (checkpointing)
    torch.set_num_threads(args.threads)
    import transformers
    import trl

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}, "
          f"{torch.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = widened_model(args.model, Path(tmp) / "model")
        print(f"model {args.model} copied with max_position_embeddings 512 to {model_dir} (used by both)")
        budget_mode(args, model_dir) if args.budget_s else step_mode(args, model_dir)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    run_main(main)

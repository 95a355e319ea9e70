"""Command line: ``rlfold demo | train | eval | recipes | plot | report | compare | data``."""

from __future__ import annotations

import argparse
import os
import difflib
import sys
import time
from pathlib import Path
from typing import Any

from rlfold.core.errors import RlfoldError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_EVAL_SIZE = 200  # generated held-out prompts of `rlfold eval` without --size


def resolve_recipe(name_or_path: str) -> Path:
    """A YAML path as given, or the name of a shipped recipe (``grpo``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(q.stem for q in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(p.stem, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise RlfoldError(f"config {name_or_path!r} is neither a file nor a shipped recipe{hint} "
                      f"(shipped: {', '.join(names)})")


def _run_dir(cfg, resume: str | None) -> Path:
    if resume:
        return Path(resume)
    if cfg.run_dir:
        return Path(cfg.run_dir)  # an explicit run_dir is the user's choice
    name = str(cfg.name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise RlfoldError(f"name={name!r} cannot name the default run directory runs/<name>-<time>: it must be a "
                          "plain name (no '/', '\\' or '..', not starting with '.'); choose another name, or set "
                          "run_dir= explicitly")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_hint(run_dir: Path) -> str:
    """Which checkpoint a ``--resume`` would continue from (read-only: another process may hold the directory)."""
    from rlfold.trainers.checkpoint import latest_checkpoint, newest_intact, verify_checkpoint

    try:
        latest = latest_checkpoint(run_dir, clean=False)
        if latest is not None and not verify_checkpoint(latest):
            return f"\nthe latest checkpoint ({latest.name}) is intact; continue with --resume {run_dir}"
        good = newest_intact(run_dir)
    except OSError:
        return ""
    if good is not None:
        return (f"\nthe newest intact checkpoint is {good.name}; continue with --resume {run_dir} "
                f"--from-checkpoint {good.name}")
    return f"\nno checkpoint was written yet in {run_dir}"


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "help_config", None) is not None:
        from rlfold.core.config_doc import render_help

        print(render_help(args.help_config or None), end="")
        return 0
    if args.config is None:
        raise RlfoldError("rlfold train needs a recipe (a YAML file or a shipped name, see `rlfold recipes`)")
    from rlfold.core.config_loader import load_config

    cfg = load_config(resolve_recipe(args.config), args.overrides)
    if getattr(args, "print_config", False):
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from_checkpoint = getattr(args, "from_checkpoint", None)
    if from_checkpoint is not None and not args.resume:
        raise RlfoldError(f"--from-checkpoint {from_checkpoint} needs --resume RUN_DIR")
    from rlfold.trainers import distributed

    nproc = getattr(args, "nproc", None)
    if nproc is not None and not distributed.launched():
        return _relaunch(args, cfg, nproc)
    par = distributed.setup(cfg.train.strategy)
    run_dir = par.broadcast(_run_dir(cfg, args.resume))  # every rank: the run directory of rank 0
    if args.resume and not run_dir.is_dir():
        raise RlfoldError(f"--resume {run_dir}: no such run directory")
    from rlfold.plot import plot_run
    from rlfold.trainers.loop import build_run
    from rlfold.trainers.metrics import print_summary

    run = build_run(cfg, run_dir, resume=bool(args.resume), from_checkpoint=from_checkpoint)
    try:
        rows = run.fit()
    except (RlfoldError, KeyboardInterrupt) as exc:
        raise type(exc)(f"{exc}{_resume_hint(run_dir)}") from exc
    finally:
        distributed.shutdown()
    if not par.is_main:
        return 0
    print_summary(rows, f"{cfg.name}: {run_dir}")
    png = plot_run(run_dir)
    key = f"val/{cfg.task.name}/acc"
    first = next((r for r in rows if key in r), {})
    last = next((r for r in reversed(rows) if key in r), {})
    print(f"held-out greedy accuracy: {first.get(key, float('nan')):.1%} -> {last.get(key, float('nan')):.1%}")
    print(f"run directory: {run_dir}\nfinal model:   {run_dir / 'final'}\nplot:          {png}")
    return 0


def _relaunch(args: argparse.Namespace, cfg, nproc: int) -> int:
    """``rlfold train ... --nproc N``: the same command as N torchrun ranks on loopback."""
    from rlfold.trainers import distributed

    if nproc < 1:
        raise RlfoldError(f"--nproc {nproc}: needs 1 or more processes")
    if cfg.train.strategy == "single":
        raise RlfoldError(f"--nproc {nproc} needs train.strategy=ddp or train.strategy=fsdp2 (the recipe has "
                          "train.strategy=single)")
    argv = ["train", str(args.config), *args.overrides]
    if not args.resume and not cfg.run_dir:  # one run directory for every rank, chosen here
        argv.append(f"run_dir={_run_dir(cfg, None)}")
    if args.resume:
        argv += ["--resume", str(args.resume)]
    if getattr(args, "from_checkpoint", None) is not None:
        argv += ["--from-checkpoint", str(args.from_checkpoint)]
    return distributed.relaunch(nproc, argv)


def cmd_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    args.config = "grpo"
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    args.overrides = overrides
    args.resume = None
    print("rlfold demo: GRPO on two-digit addition from the shipped tiny base (tiny-arith), on the CPU.")
    rc = cmd_train(args)
    print(f"demo wall time: {(time.perf_counter() - start) / 60:.1f} min")
    return rc


def cmd_eval(args: argparse.Namespace) -> int:
    from rlfold.models import load_model_and_tokenizer
    from rlfold.rollout import ENGINES, EngineContext
    from rlfold.tasks import TASKS
    from rlfold.tasks.chat import for_tokenizer
    from rlfold.trainers.evaluate import evaluate

    for flag, value in (("--k", args.k), ("--size", args.size), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise RlfoldError(f"{flag} must be at least 1, got {value}")
    model, tokenizer = load_model_and_tokenizer(args.model)
    size = args.size if args.size is not None else DEFAULT_EVAL_SIZE
    task = TASKS.get(args.task)(levels=args.levels, held_out_size=size, seed=args.seed, held_out_file=args.data)
    task = for_tokenizer(task, tokenizer, model=args.model)  # chat rows through the model's chat template
    held_out = task.held_out[: args.size] if args.size is not None else task.held_out  # --size caps --data too
    engine = ENGINES.get(args.engine)(EngineContext(model=model, tokenizer=tokenizer, model_path=args.model,
                                                    dtype=next(model.parameters()).dtype))
    reward = args.reward or task.rewards[0]
    res = evaluate(engine, held_out, reward=reward, k=args.k, max_new_tokens=args.max_new_tokens, seed=args.seed)
    source = f"task {task.name}, prompts of {args.data}" if args.data else f"task {task.name}"
    print(f"model {args.model} on {source} ({len(held_out)} held-out prompts, reward {reward}):")
    print(f"  greedy accuracy: {res['acc']:.1%}\n  pass@{args.k}:          {res[f'pass@{args.k}']:.1%}"
          f"\n  mean length:     {res['length']:.2f} tokens")
    return 0


def recipe_columns(cfg) -> tuple[str, str, str, str]:
    """``rlfold recipes``' advantage, loss, aggregation and other-parts cells of a recipe (by its trainer)."""
    if cfg.trainer == "online":
        a = cfg.algo
        return a.advantage, a.policy_loss, a.loss_agg, "; ".join(recipe_parts(cfg)) or "-"
    other = [f"trainer {cfg.trainer}"]
    if cfg.trainer != "preference":
        return "-", "-", "-", "; ".join(other)
    p = cfg.preference
    loss = p.loss + (f" (beta {p.beta:g})" if p.beta is not None else "")
    if p.train_file is None:
        sel = "" if p.synthetic.selection == "best_worst" else f", {p.synthetic.selection.replace('_', ' ')}"
        other.append(f"synthetic {p.kind if p.kind != 'auto' else 'pairs'}{sel}")
    if p.reference_update_every:
        other.append(f"reference refreshed every {p.reference_update_every} steps")
    return "-", loss, "-", "; ".join(other)


def recipe_parts(cfg) -> list[str]:
    """The parts a recipe uses beyond advantage / policy loss / aggregation, in words."""
    a = cfg.algo
    extra = []
    if a.kl_coef:
        extra.append(f"KL {a.kl_estimator} x {a.kl_coef:g} in the {a.kl_in}" + (" (adaptive)" if a.kl_ctrl == "adaptive" else ""))
    extra += [f"filter {f.name} (<= {a.max_gen_batches} rounds)" for f in a.group_filters]
    extra += [f"select {s.name}" for s in a.selection]
    extra += [f"replay {a.replay.name}"] if a.replay is not None else []
    extra += [f"regulariser {r.name} x {r.coef:g}" for r in a.regularizers]
    if a.entropy_coef:
        extra.append(f"entropy bonus {a.entropy_coef:g}")
    if a.sft_coef:
        extra.append(f"SFT x {a.sft_coef:g}")
    opts = a.policy_loss_options()
    if "clip_high" in opts or "clip_low" in opts:
        defaults = _defaults(a.policy_loss)
        low, high = opts.get("clip_low", defaults.get("clip_low")), opts.get("clip_high", defaults.get("clip_high"))
        extra.append(f"eps_low/high {low:g}/{high:g}")
    if "values" in _needs(a.advantage):
        c = cfg.critic
        extra.append(f"{c.model} critic, lambda {c.lam:g}" + (f", {c.pretrain_steps} pretrain steps"
                                                              if c.pretrain_steps else ""))
    if cfg.rollout.env is not None:
        extra.append(f"environment {cfg.rollout.env.name}")
    if cfg.train.sampler.name != "uniform":
        extra.append(f"sampler {cfg.train.sampler.name}")
    if cfg.reward_aggregation.name != "weighted_sum":
        extra.append(f"rewards combined by {cfg.reward_aggregation.name}")
    extra += [f"shaping {s.name}" for s in cfg.shaping]
    shaping = [r.name for r in cfg.rewards if r.name not in ("exact_match", "format")]
    extra += [f"reward {n}" for n in shaping]
    return extra


def _defaults(policy_loss: str) -> dict[str, object]:
    import inspect

    from rlfold.core.registry import POLICY_LOSSES

    params = inspect.signature(POLICY_LOSSES.get(policy_loss)).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _needs(advantage: str) -> tuple[str, ...]:
    from rlfold.core.registry import ADVANTAGES, needed_inputs

    return needed_inputs(ADVANTAGES.get(advantage))


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console
    from rich.table import Table

    from rlfold.core.config_loader import load_config

    if args.source:
        return _print_sources(args.recipe)
    table = Table(title="rlfold recipes (rlfold train <recipe>)", show_lines=True)
    for col in ("recipe", "paper", "advantage", "policy loss", "aggregation", "other parts"):
        table.add_column(col, overflow="fold")
    paths = [resolve_recipe(args.recipe)] if args.recipe else sorted(RECIPES_DIR.glob("*.yaml"))
    for path in paths:
        paper = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("paper", "")
        cfg = load_config(path, [])
        table.add_row(path.stem, paper, *recipe_columns(cfg))
    Console(width=max(Console().width, 200)).print(table)
    return 0


def _print_sources(recipe: str | None) -> int:
    """``rlfold recipes --source``: where every part a recipe names is defined (module:line)."""
    from rlfold.core.config_loader import load_config
    from rlfold.core.sources import recipe_parts_with_sources

    paths = [resolve_recipe(recipe)] if recipe else sorted(RECIPES_DIR.glob("*.yaml"))
    for path in paths:
        print(f"{path.stem}:")
        for role, name, where in recipe_parts_with_sources(load_config(path, [])):
            print(f"  {role:<16} {name:<28} {where}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from rlfold.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``rlfold report RUN_DIR``: write the run's self-contained HTML report."""
    from rlfold.reporting import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``rlfold compare RUN ...``: one figure of chosen metrics over several runs."""
    from rlfold.reporting import compare_runs

    print(compare_runs(args.run_dirs, args.metric, args.out))
    return 0


# ----- rlfold data: synthetic preference datasets and their audit ------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    """``rlfold data synth --out FILE``: a synthetic preference dataset (JSONL) sampled from a model, scored by
    the task's ground-truth rewards, with a ``flipped`` column (``--flip``: planted label flips)."""
    import json

    from rlfold.core.config_loader import load_config

    for flag, value, low in (("--samples", args.samples, 2), ("--prompts", args.prompts, 0),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--threads", args.threads, 0)):
        if value < low:
            raise RlfoldError(f"{flag} must be at least {low}, got {value}")
    if not 0.0 <= args.flip < 1.0:
        raise RlfoldError(f"--flip must be in [0, 1), got {args.flip}")
    if args.flip and args.kind != "pairs":
        raise RlfoldError(f"--flip {args.flip:g} swaps chosen and rejected of pairs; it needs --kind pairs, not "
                          f"--kind {args.kind}")
    if not args.temperature > 0:
        raise RlfoldError(f"--temperature must be above 0, got {args.temperature}")
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise RlfoldError(f"--out {out}: directory {out.parent} does not exist")
    levels = "[" + ", ".join(str(v) for v in args.levels) + "]"
    cfg = load_config(None, [f"model.path={args.model}", f"task.name={args.task}", f"task.levels={levels}",
                             f"seed={args.seed}", f"rollout.max_new_tokens={args.max_new_tokens}",
                             f"preference.synthetic.samples={args.samples}",
                             f"preference.synthetic.prompts={args.prompts}",
                             f"preference.synthetic.temperature={args.temperature}",
                             f"preference.synthetic.flip_fraction={args.flip}"])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rlfold.models import load_model_and_tokenizer
    from rlfold.rollout import EngineContext
    from rlfold.rollout.build import build_engine
    from rlfold.tasks.chat import for_tokenizer
    from rlfold.trainers.online import build_task
    from rlfold.trainers.preference_datasets import synthetic_rows

    model, tokenizer = load_model_and_tokenizer(cfg.model.path)
    task = for_tokenizer(build_task(cfg.task, cfg.seed), tokenizer, model=cfg.model.path)
    engine = build_engine(cfg.rollout, EngineContext(model=model, tokenizer=tokenizer, model_path=cfg.model.path,
                                                     dtype=next(model.parameters()).dtype))
    with torch.no_grad():
        rows, desc = synthetic_rows(cfg, task, engine, args.kind)
    try:
        with out.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    except OSError as exc:
        raise RlfoldError(f"cannot write {out}: {exc.strerror or exc}") from None
    flipped = sum(bool(r.get("flipped")) for r in rows)
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(desc["dropped"].items())) or "none"
    print(f"wrote {len(rows)} {args.kind} rows to {out} from {desc['prompts']} prompts of task {task.name} "
          f"({args.samples} samples each from {args.model}; prompts without a row: {dropped})"
          + (f"; {flipped} pairs flipped (column 'flipped')" if args.kind == "pairs" else ""))
    return 0


def cmd_data_audit(args: argparse.Namespace) -> int:
    """``rlfold data audit FILE``: flag pairs whose labels look flipped, by cross-fitted ensemble disagreement."""
    from rlfold.reporting.audit import AuditSettings, audit_file, render_markdown, write_audit

    settings = AuditSettings(model=args.model, head=args.head, members=args.members, folds=args.folds,
                             steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threshold=args.threshold,
                             sigmas=args.sigmas, fraction=args.fraction, top=args.top, bad_rows=args.bad_rows, device=args.device)
    settings.check()
    if args.threads < 0:
        raise RlfoldError(f"--threads must be at least 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for flag, target in (("--out", args.out), ("--json", args.json)):
        if target is not None and not Path(target).expanduser().parent.is_dir():
            raise RlfoldError(f"{flag} {target}: directory {Path(target).expanduser().parent} does not exist")
    report = audit_file(args.file, settings, progress=not args.no_progress)
    print(render_markdown(report), end="")
    for p in write_audit(report, args.out, args.json):
        print(f"wrote {p}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    args.data_parser.print_help()
    return 2


def _data_parser(sub: Any) -> None:
    d = sub.add_parser("data", help="preference datasets: synthesize one, audit one for flipped labels")
    dsub = d.add_subparsers(dest="data_command")
    d.set_defaults(func=cmd_data, data_parser=d)

    p = dsub.add_parser("synth", help="write a synthetic preference dataset (JSONL) with a known ground truth")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    p.add_argument("--kind", choices=("pairs", "lists", "unpaired"), default="pairs")
    p.add_argument("--flip", type=float, default=0.0, metavar="F",
                   help="share of pairs whose chosen and rejected are swapped (marked in the 'flipped' column)")
    p.add_argument("--samples", type=int, default=4, metavar="K", help="responses sampled per prompt (>= 2)")
    p.add_argument("--prompts", type=int, default=0, metavar="N", help="training prompts used (0: all)")
    p.add_argument("--model", default="tiny-arith", help="policy the responses are sampled from")
    p.add_argument("--task", default="arith", help="registered task whose prompts and rewards are used")
    p.add_argument("--levels", type=int, nargs="+", default=[2], help="task difficulty levels")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_data_synth)

    p = dsub.add_parser("audit", help="flag preference pairs suspected to be flipped (reward-model ensemble "
                                      "disagreement) and print a report")
    p.add_argument("file", help="preference dataset (pairs or ranked lists; JSONL, Parquet, CSV, JSON)")
    p.add_argument("--model", default="tiny-arith", help="base model the ensemble's reward models start from")
    p.add_argument("--head", default="last_token",
                   help="reward-model head of the ensemble's members: last_token or sentence (docs/reward_models.md)")
    p.add_argument("--members", type=int, default=2, help="reward models per fold")
    p.add_argument("--folds", type=int, default=2, help="cross-fitting folds (>= 2)")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps of each reward model")
    p.add_argument("--batch", type=int, default=64, help="pairs per step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threshold", type=float, default=0.0,
                   help="flag pairs whose strength mu + SIGMAS * sigma is below this (default 0)")
    p.add_argument("--sigmas", type=float, default=1.0,
                   help="how many ensemble standard deviations the strength must clear (default 1; 0: mu alone)")
    p.add_argument("--fraction", type=float, default=None,
                   help="flag this fraction of lowest-strength pairs instead of using --threshold")
    p.add_argument("--top", type=int, default=20, help="rows of the report's table of suspicious pairs")
    p.add_argument("--bad-rows", choices=("error", "skip"), default="error",
                   help="a bad row: stop naming its file and line, or skip it (counted in the report)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="REPORT.md", help="also write the report to this Markdown file")
    p.add_argument("--json", default=None, metavar="FILE", help="write every pair's strength and flag as JSON")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_audit)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlfold", description="RL post-training of language models.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="GRPO on arithmetic from the shipped tiny model; before/after accuracy")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=50")
    p.add_argument("--run-dir", default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="run a recipe (YAML file or shipped recipe name)")
    p.add_argument("config", nargs="?", default=None,
                   help="recipe YAML file, or the name of a shipped recipe (see `rlfold recipes`)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 model.path=DIR")
    p.add_argument("--help-config", nargs="?", const="", default=None, metavar="SECTION",
                   help="print every configuration option (or those of SECTION, e.g. rollout) with its type, "
                        "default, range and description, and exit")
    p.add_argument("--print-config", action="store_true",
                   help="validate, print the resolved configuration as YAML and exit without training")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue from RUN_DIR's latest checkpoint")
    p.add_argument("--from-checkpoint", metavar="STEP_DIR", default=None,
                   help="with --resume: continue from this checkpoint (e.g. step_0000025, or 25) instead of the "
                        "latest; later checkpoints are moved aside, not deleted")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run N data-parallel ranks on this machine (torchrun on loopback; needs "
                        "train.strategy=ddp or fsdp2)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="greedy accuracy and pass@k on held-out prompts")
    p.add_argument("--model", required=True, help="HF causal-LM directory or shipped model name")
    p.add_argument("--task", default="arith")
    p.add_argument("--levels", type=int, nargs="+", default=[2])
    p.add_argument("--size", type=int, default=None,
                   help=f"held-out prompts to evaluate (default {DEFAULT_EVAL_SIZE} generated; with --data, the "
                        "first SIZE rows, default all)")
    p.add_argument("--k", type=int, default=4, help="samples per prompt for pass@k (>= 1)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="dataset of prompt/answer rows to evaluate instead (JSONL, "
                   "Parquet, CSV, JSON, a save_to_disk directory)")
    p.add_argument("--reward", default=None, help="reward deciding correctness (default: the task's first reward)")
    p.add_argument("--engine", default="hf", help="registered engine to generate with (default: hf)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("recipes", help="list the shipped recipes and the parts each uses")
    p.add_argument("recipe", nargs="?", default=None, help="one recipe (name or YAML path) instead of all")
    p.add_argument("--source", action="store_true",
                   help="print where each part of the recipe is defined (module:line) instead of the table")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("plot", help="write a PNG of a run's curves")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run (curves, summary, samples, config)")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="plot metrics of several runs in one figure (seeds of a recipe: mean ± std)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories; runs with the same recipe name (seeds) are drawn as mean ± std")
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="a metric to plot; repeat for several (default: held-out accuracy, reward/mean, acc/mean, "
                        "response_length/mean)")
    p.add_argument("--out", default=None, help="compare.png by default; a .html name writes a page with the figure")
    p.set_defaults(func=cmd_compare)

    _data_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Options may come before, between or after the key=value overrides: argparse stops collecting a
    # positional list at the first option, so overrides after an option come back as extras here.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except RlfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted. {exc}".rstrip(), file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command boundary: a library error that escaped validation
        if os.environ.get("RLFOLD_TRACEBACK"):
            raise
        where = _innermost_frame(exc)
        print(f"error: rlfold {args.command} failed: {type(exc).__name__}: {exc} (raised at {where}; "
              "set RLFOLD_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 2


def _innermost_frame(exc: BaseException) -> str:
    """``file:line in function`` of the frame that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    code = tb.tb_frame.f_code
    return f"{Path(code.co_filename).name}:{tb.tb_lineno} in {code.co_name}"


if __name__ == "__main__":
    sys.exit(main())

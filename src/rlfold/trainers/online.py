"""The online RL loop (DESIGN.md "one online step"): sample, score, advantage, clipped updates, log, checkpoint."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from rlfold.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, NumericalError
from rlfold.models import disable_dropout, load_model_and_tokenizer
from rlfold.rewards import score_batch
from rlfold.rollout import ENGINES, SamplingParams
from rlfold.rollout.hf_engine import sequence_logprobs
from rlfold.tasks import TASKS, Task
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.data import PromptSampler
from rlfold.trainers.evaluate import evaluate
from rlfold.trainers.metrics import (
    METRICS_FILE, SAMPLES_FILE, JsonlLog, read_jsonl, rollout_metrics, truncate_after_step,
)
from rlfold.trainers.schedule import make_scheduler
from rlfold.trainers.update import UpdateStats, policy_update

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_FILE = "config.yaml"
# Keys a resumed run may change without invalidating the checkpoint.
RESUMABLE_KEYS = {"train.steps", "checkpoint.every", "checkpoint.keep", "log.progress", "log.samples_per_step",
                  "eval.every", "run_dir", "threads"}


def build_task(cfg: RunConfig) -> Task:
    t = cfg.task
    return TASKS.get(t.name)(
        levels=t.levels, train_size=t.train_size, held_out_size=t.held_out_size, held_out_fraction=t.held_out_fraction,
        seed=cfg.seed, train_file=t.train_file, held_out_file=t.held_out_file,
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@dataclass
class StepResult:
    metrics: dict[str, float]
    finite: bool


class OnlineTrainer:
    """Runs a recipe: B prompts x G samples per step, advantage part, policy-loss part, aggregation part."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._check_run_dir(resume)
        self.task = build_task(cfg)
        dtype = DTYPES[cfg.model.dtype]
        self.model, self.tokenizer = load_model_and_tokenizer(cfg.model.path, dtype)
        if cfg.model.disable_dropout:
            disable_dropout(self.model)
        self.ref_model = None
        if cfg.algo.kl_coef > 0:
            self.ref_model, _ = load_model_and_tokenizer(cfg.model.path, dtype)
            self.ref_model.eval().requires_grad_(False)
        self.engine = ENGINES.get(cfg.rollout.engine)(self.model, self.tokenizer)
        self.params = SamplingParams(
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens, n=cfg.rollout.n,
            stop_token_ids=cfg.rollout.stop_token_ids, stop_strings=cfg.rollout.stop_strings,
            ignore_eos=cfg.rollout.ignore_eos,
        )
        self._write_config()
        self.sampler = PromptSampler(self.task.train, cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        tc = cfg.train
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
        )
        n_seq = tc.prompts_per_step * cfg.rollout.n
        mini = tc.mini_batch_size or n_seq
        self.opt_steps_per_step = tc.ppo_epochs * -(-n_seq // mini)
        self.scheduler = make_scheduler(self.optimizer, tc.steps * self.opt_steps_per_step, tc.warmup_steps,
                                        tc.schedule, tc.min_lr_ratio)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.init_eval: dict[str, float] | None = None
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        if resume:
            self._restore()

    # ----- run directory, resume ------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        cfg_file = self.run_dir / CONFIG_FILE
        dumped = self.cfg.model_dump(mode="json")
        if resume:
            if not cfg_file.is_file():
                raise ConfigError(f"--resume {self.run_dir}: no {CONFIG_FILE} there; is it a run directory?")
            saved = _flatten(yaml.safe_load(cfg_file.read_text(encoding="utf-8")))
            now = _flatten(dumped)
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS)
            if diff:
                raise ConfigError(
                    f"--resume {self.run_dir}: the config differs from the run's saved {CONFIG_FILE} in "
                    + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diff)
                )
        elif (self.run_dir / ckpt.CKPT_DIR).exists():
            raise ConfigError(
                f"run directory {self.run_dir} already holds checkpoints; pass --resume {self.run_dir} "
                "to continue it, or choose another run_dir"
            )

    def _write_config(self) -> None:
        """Create the run directory once the task and model loaded, so bad input leaves nothing behind."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(self.run_dir / CONFIG_FILE,
                               yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "nonfinite_total": self.nonfinite_total,
            "init_eval": self.init_eval,
        }

    def _restore(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:  # killed before the first checkpoint: start from scratch, dropping its logs
            for name in (METRICS_FILE, SAMPLES_FILE):
                truncate_after_step(self.run_dir / name, -1)
            return
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[self.cfg.model.dtype], local_files_only=True)
        self.model.load_state_dict(loaded.state_dict())
        state = ckpt.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        self.nonfinite_total = state["nonfinite_total"]
        self.init_eval = state["init_eval"]
        self.step = state["step"]
        for name in (METRICS_FILE, SAMPLES_FILE):
            truncate_after_step(self.run_dir / name, self.step)

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, self._state(),
                                    keep=self.cfg.checkpoint.keep)

    # ----- one step ---------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        ec = self.cfg.eval
        res = evaluate(self.engine, self.task.held_out[: ec.size], reward=self.cfg.accuracy_reward, k=ec.pass_k,
                       max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, seed=self.cfg.seed + 7)
        return {f"val/{self.task.name}/{k}": v for k, v in res.items()}

    def train_step(self) -> StepResult:
        cfg, t_step = self.cfg, time.perf_counter()
        prompts = self.sampler.next(cfg.train.prompts_per_step)
        t0 = time.perf_counter()
        roll = self.engine.generate([p.text for p in prompts], self.params, generator=self.gen)
        t_gen = time.perf_counter() - t0
        reps = [p for p in prompts for _ in range(self.params.n)]
        t0 = time.perf_counter()
        rewards, per_fn = score_batch([(r.name, r.weight) for r in cfg.rewards], reps, roll.response_texts,
                                      roll.finish_reasons)
        t_reward = time.perf_counter() - t0
        group_ids = torch.arange(len(prompts)).repeat_interleave(self.params.n)
        t0 = time.perf_counter()
        ref_logprobs = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logprobs, _ = sequence_logprobs(self.ref_model, roll.prompt_ids, roll.prompt_mask,
                                                    roll.response_ids, roll.response_mask)
        t_ref = time.perf_counter() - t0
        adv, adv_metrics = ADVANTAGES.get(cfg.algo.advantage)(
            rewards, group_ids, roll.response_mask, **cfg.algo.advantage_kwargs)
        t0 = time.perf_counter()
        stats: UpdateStats = policy_update(
            self.model, self.optimizer, self.scheduler, roll, adv, ref_logprobs, cfg,
            policy_loss=POLICY_LOSSES.get(cfg.algo.policy_loss), aggregation=AGGREGATIONS.get(cfg.algo.loss_agg),
            kl_estimator=KL_ESTIMATORS.get(cfg.algo.kl_estimator),
        )
        t_update = time.perf_counter() - t0
        self.step += 1
        dt = time.perf_counter() - t_step
        if cfg.accuracy_reward not in per_fn:
            per_fn[cfg.accuracy_reward] = score_batch([(cfg.accuracy_reward, 1.0)], reps, roll.response_texts,
                                                      roll.finish_reasons)[1][cfg.accuracy_reward]
        m: dict[str, float] = {
            "step": self.step,
            **adv_metrics,
            **rollout_metrics(roll, rewards, per_fn, self.params.n, cfg.accuracy_reward),
            **stats.metrics,
            "actor/lr": self.optimizer.param_groups[0]["lr"],
            "timing_s/gen": t_gen, "timing_s/reward": t_reward, "timing_s/ref": t_ref,
            "timing_s/update": t_update, "timing_s/step": dt,
            "perf/tokens_per_s": float(roll.response_mask.sum()) / max(t_gen, 1e-9),
        }
        self._last_samples = [
            {"step": self.step, "prompt": reps[i].text, "completion": roll.response_texts[i], "answer": reps[i].answer,
             "reward": rewards[i].item(), "finish": roll.finish_reasons[i]}
            for i in range(0, roll.size, max(1, roll.size // max(1, cfg.log.samples_per_step)))
        ][: cfg.log.samples_per_step]
        return StepResult(m, stats.finite)

    # ----- the loop ---------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.init_eval is None:
            self.init_eval = self.evaluate()
        metrics_log = JsonlLog(self.run_dir / METRICS_FILE)
        samples_log = JsonlLog(self.run_dir / SAMPLES_FILE)
        if self.step == 0:
            metrics_log.write({"step": 0, **self.init_eval})
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name, disable=not cfg.log.progress,
                   dynamic_ncols=True)
        try:
            while self.step < cfg.train.steps:
                res = self.train_step()
                if res.finite:
                    self.nonfinite_streak = 0
                else:
                    self.nonfinite_total += 1
                    self.nonfinite_streak += 1
                res.metrics["nonfinite_steps"] = self.nonfinite_total
                if self.step == cfg.train.steps or (cfg.eval.every and self.step % cfg.eval.every == 0):
                    res.metrics.update(self.evaluate())
                metrics_log.write(res.metrics)
                for s in self._last_samples:
                    samples_log.write(s)
                bar.update(1)
                bar.set_postfix(reward=f"{res.metrics['reward/mean']:.3f}", acc=f"{res.metrics['acc/mean']:.3f}",
                                tok_s=f"{res.metrics['perf/tokens_per_s']:.0f}")
                if self.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                    raise NumericalError(
                        f"loss or gradient was non-finite for {self.nonfinite_streak} steps in a row (last at step "
                        f"{self.step}); stopped before writing a checkpoint. The latest good checkpoint is kept in "
                        f"{self.run_dir / ckpt.CKPT_DIR}. Lower train.lr or check the reward scale."
                    )
                if self.nonfinite_streak == 0 and cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 \
                        and self.step < cfg.train.steps:
                    self.save()
            # A skipped (non-finite) step leaves the parameters untouched, so they are safe to save here.
            self.save()
            ckpt.save_pretrained_atomic(self.model, self.tokenizer, self.run_dir / "final")
        finally:
            bar.close()
            metrics_log.close()
            samples_log.close()
        return read_jsonl(self.run_dir / METRICS_FILE)

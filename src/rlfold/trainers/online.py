"""The online RL loop (DESIGN.md "one online step"): sample, score, advantage, clipped updates, log, checkpoint."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from rlfold.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, SELECTIONS
from rlfold.algos.kl import adaptive_kl_coef
from rlfold.algos.selection import SelectionInput
from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, NumericalError
from rlfold.core.masked import masked_mean, masked_sum
from rlfold.core.registry import needed_inputs
from rlfold.core.types import Prompt
from rlfold.models import disable_dropout, load_model_and_tokenizer
from rlfold.rollout import ENGINES, SamplingParams
from rlfold.rollout.hf_engine import sequence_logprobs
from rlfold.tasks import TASKS, Task
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.critic import Critic, ValueTerm, value_metrics
from rlfold.trainers.collect import RolloutCollector, Sampled
from rlfold.trainers.inputs import StepContext, provide
from rlfold.trainers.data import make_prompt_sampler
from rlfold.trainers.evaluate import evaluate
from rlfold.trainers.metrics import (
    METRICS_FILE, SAMPLES_FILE, JsonlLog, read_jsonl, truncate_after_step,
)
from rlfold.trainers.schedule import make_scheduler
from rlfold.trainers.sft import SFTTerm
from rlfold.trainers.update import (
    EntropyTerm, KLTerm, PolicyTerm, PreparedBatch, UpdateStats, accepted_kwargs, policy_update,
)

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
        a = cfg.algo
        self.adv_fn = ADVANTAGES.get(a.advantage)
        self.policy_fn = POLICY_LOSSES.get(a.policy_loss)
        self.policy_kwargs = accepted_kwargs(
            self.policy_fn, {"clip_low": a.clip_low, "clip_high": a.clip_high, "clip_c": a.clip_c,
                             **a.policy_loss_kwargs})
        self.aggregation = AGGREGATIONS.get(a.loss_agg)
        self.max_len = a.loss_agg_max_len or cfg.rollout.max_new_tokens
        self.kl_estimator = KL_ESTIMATORS.get(a.kl_estimator)
        self.kl_coef = a.kl_coef
        self.selections = [(SELECTIONS.get(sp.name), sp.kwargs) for sp in a.selection]
        self.critic = Critic(cfg, self.model, dtype) if "values" in needed_inputs(self.adv_fn) else None
        self.sft = SFTTerm(self.model, self.tokenizer, a.sft_coef) if a.sft_coef > 0 else None
        self.engine = ENGINES.get(cfg.rollout.engine)(self.model, self.tokenizer, **cfg.rollout.engine_kwargs)
        # Held-out evaluation is single-attempt plain sampling whatever the training engine does.
        self.eval_engine = ENGINES.get("hf")(self.model, self.tokenizer)
        self.params = SamplingParams(
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
            max_new_tokens=cfg.rollout.max_new_tokens, n=cfg.rollout.n,
            stop_token_ids=cfg.rollout.stop_token_ids, stop_strings=cfg.rollout.stop_strings,
            ignore_eos=cfg.rollout.ignore_eos,
        )
        self._write_config()
        self.sampler = make_prompt_sampler(self.task.train, cfg)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.collector = RolloutCollector(cfg, self.engine, self.params, self.sampler, self.gen, self.tokenizer)
        tc = cfg.train
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.critic is not None:
            self.trainable += self.critic.head_parameters()
        self.optimizer = torch.optim.AdamW(self.trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
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
            "kl_coef": self.kl_coef,
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "collector": self.collector.state_dict(),
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
        self.kl_coef = state.get("kl_coef", self.kl_coef)
        if self.critic is not None and state.get("critic") is not None:
            self.critic.load_state_dict(state["critic"])
        self.collector.load_state_dict(state.get("collector", {}))
        self.step = state["step"]
        for name in (METRICS_FILE, SAMPLES_FILE):
            truncate_after_step(self.run_dir / name, self.step)

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, self._state(),
                                    keep=self.cfg.checkpoint.keep)

    # ----- one step ---------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        ec = self.cfg.eval
        res = evaluate(self.eval_engine, self.task.held_out[: ec.size], reward=self.cfg.accuracy_reward, k=ec.pass_k,
                       max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, seed=self.cfg.seed + 7)
        return {f"val/{self.task.name}/{k}": v for k, v in res.items()}

    def greedy_rewards(self, prompts: list[Prompt], group_ids: torch.Tensor) -> torch.Tensor:
        """Reward of one greedy response per group (ReMax baseline), broadcast to the group's rows."""
        return self.collector.greedy_rewards(prompts, group_ids, self.step)

    def _sample(self) -> Sampled:
        return self.collector.collect(self.step)

    def _select(self, inp: SelectionInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """Apply the recipe's selection parts in order: rows kept, loss mask, token weights, metrics."""
        rows = torch.arange(inp.rewards.shape[0])
        loss_mask = inp.response_mask.float()
        weights: torch.Tensor | None = None
        metrics: dict[str, float] = {}
        for fn, kwargs in self.selections:
            inp = replace(inp, response_mask=loss_mask)
            sel = fn(inp, generator=self.gen, **kwargs)
            metrics.update(sel.metrics)
            if sel.token_mask is not None:
                loss_mask = loss_mask * sel.token_mask.float()
            if sel.token_weights is not None:
                weights = sel.token_weights if weights is None else weights * sel.token_weights
            if sel.rows is not None:
                r = sel.rows
                rows, loss_mask = rows[r], loss_mask[r]
                weights = weights[r] if weights is not None else None
                inp = SelectionInput(**{f.name: (getattr(inp, f.name)[r] if getattr(inp, f.name) is not None else None)
                                        for f in fields(SelectionInput)})
        return rows, loss_mask, weights, metrics

    def train_step(self) -> StepResult:
        cfg, a, t_step = self.cfg, self.cfg.algo, time.perf_counter()
        s = self._sample()
        roll, mask = s.roll, s.roll.response_mask
        t0 = time.perf_counter()
        ref_logprobs = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logprobs, _ = sequence_logprobs(self.ref_model, roll.prompt_ids, roll.prompt_mask,
                                                    roll.response_ids, roll.response_mask,
                                                    response_attention_mask=roll.response_attention_mask)
        t_ref = time.perf_counter() - t0
        rewards, kl_metrics, kl_tokens = s.scores, {}, None
        if ref_logprobs is not None:
            kl_tokens = self.kl_estimator(roll.policy_logprobs, ref_logprobs)
            kl_metrics = {"actor/kl_coef": self.kl_coef, "actor/reward_kl": float(masked_mean(kl_tokens, mask))}
        token_rewards = s.token_rewards
        if kl_tokens is not None and a.kl_in == "reward":
            token_rewards = token_rewards - self.kl_coef * kl_tokens * mask
            rewards = s.scores - self.kl_coef * masked_sum(kl_tokens, mask, dim=1)
        ctx = StepContext(prompts=s.prompts, roll=roll, scores=s.scores, rewards=rewards, token_rewards=token_rewards,
                          group_ids=s.group_ids)
        t0 = time.perf_counter()
        inputs = provide(needed_inputs(self.adv_fn), self, ctx)
        adv, adv_metrics = self.adv_fn(rewards, s.group_ids, mask, **inputs, **a.advantage_kwargs)
        t_adv = time.perf_counter() - t0
        scorable_mask = mask * (~s.unscorable).to(mask.dtype)[:, None]  # unscorable rows do not train
        rows, loss_mask, weights, sel_metrics = self._select(SelectionInput(
            rewards=rewards, group_ids=s.group_ids, response_mask=scorable_mask, advantages=adv,
            truncated=roll.truncated,
            old_logprobs=roll.policy_logprobs, behaviour_logprobs=roll.sample_logprobs, entropy=roll.entropy))
        train_roll = roll.select(rows)
        prep = PreparedBatch(roll=train_roll, advantages=adv[rows], old_logprobs=roll.policy_logprobs[rows],
                             loss_mask=loss_mask, prompts=[s.prompts[i] for i in rows.tolist()],
                             token_weights=weights, ref_logprobs=ref_logprobs[rows] if ref_logprobs is not None else None)
        critic_metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        if self.critic is not None:
            values = provide(("values",), self, ctx)["values"]
            returns = self.critic.targets(token_rewards, values, mask, roll.truncated)
            critic_metrics = value_metrics(values, returns, mask)
            value_mask = mask.float()
            if self.critic.egae:  # T-PPO: the critic learns from finished responses only
                value_mask = value_mask * (~roll.truncated).float()[:, None]
            if self.critic.shared:
                prep.old_values, prep.returns = values[rows], returns[rows]
            else:
                critic_metrics.update(self.critic.update(train_roll, value_mask[rows], values[rows], returns[rows],
                                                         self.aggregation, self.max_len))
        t_critic = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats: UpdateStats = policy_update(
            self.model, self.optimizer, self.scheduler, prep, terms=self._terms(), aggregation=self.aggregation,
            ppo_epochs=cfg.train.ppo_epochs, mini_batch_size=cfg.train.mini_batch_size,
            micro_batch_size=cfg.train.micro_batch_size, grad_clip=cfg.train.grad_clip, max_len=self.max_len,
            minibatch_terms=(self.sft,) if self.sft is not None else (), params=self.trainable,
        )
        t_update = time.perf_counter() - t0
        if kl_tokens is not None and a.kl_ctrl == "adaptive":
            self.kl_coef = adaptive_kl_coef(self.kl_coef, float(masked_mean(kl_tokens, mask)), target=a.kl_target,
                                            horizon=a.kl_horizon, n_steps=roll.size)
        self.step += 1
        dt = time.perf_counter() - t_step
        m: dict[str, float] = {
            "step": self.step,
            **adv_metrics,
            **s.metrics,
            **sel_metrics,
            **kl_metrics,
            **critic_metrics,
            **stats.metrics,
            "actor/lr": self.optimizer.param_groups[0]["lr"],
            "timing_s/gen": s.t_gen, "timing_s/reward": s.t_reward, "timing_s/ref": t_ref, "timing_s/adv": t_adv,
            "timing_s/critic": t_critic, "timing_s/update": t_update, "timing_s/step": dt,
            "perf/tokens_per_s": float(roll.response_mask.sum()) / max(s.t_gen, 1e-9),
        }
        self._last_samples = [
            {"step": self.step, "prompt": s.prompts[i].text, "completion": roll.response_texts[i],
             "answer": s.prompts[i].answer, "reward": rewards[i].item(), "advantage": float(masked_mean(adv[i], mask[i])),
             "finish": roll.finish_reasons[i]}
            for i in range(0, roll.size, max(1, roll.size // max(1, cfg.log.samples_per_step)))
        ][: cfg.log.samples_per_step]
        return StepResult(m, stats.finite)

    def _terms(self) -> list:
        terms: list = [PolicyTerm(self.policy_fn, self.policy_kwargs)]
        if self.ref_model is not None and self.cfg.algo.kl_in == "loss":
            terms.append(KLTerm(self.kl_estimator, self.kl_coef))
        if self.cfg.algo.entropy_coef:
            terms.append(EntropyTerm(self.cfg.algo.entropy_coef))
        if self.critic is not None and self.critic.shared:
            terms.append(ValueTerm(self.critic, self.cfg.critic.vf_coef))
        return terms

    def pretrain_critic(self) -> dict[str, float]:
        """VC-PPO value pretraining: fit the critic to Monte-Carlo returns (lambda = 1) of the fixed
        initial policy for ``critic.pretrain_steps`` batches before any policy update."""
        assert self.critic is not None
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        bar = tqdm(range(self.cfg.critic.pretrain_steps), desc="value pretraining", disable=not self.cfg.log.progress,
                   dynamic_ncols=True, leave=False)
        for _ in bar:
            s = self._sample()
            mask = s.roll.response_mask
            values = self.critic.values(s.roll)
            returns = self.critic.targets(s.token_rewards, values, mask, s.roll.truncated, lam=1.0)
            ev = value_metrics(values, returns, mask)["critic/vf_explained_var"]
            upd = self.critic.update(s.roll, mask.float(), values, returns, self.aggregation, self.max_len,
                                     head_only=self.critic.shared)  # a shared backbone is the policy
            last = {"critic/pretrain/value_loss": upd.get("critic/value_loss", float("nan")),
                    "critic/pretrain/vf_explained_var": ev}
            first = first or dict(last)
            bar.set_postfix(value_loss=f"{last['critic/pretrain/value_loss']:.4f}")
        return {**{f"{k}_first": v for k, v in first.items()}, **last}

    # ----- the loop ---------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        if self.init_eval is None:
            self.init_eval = self.evaluate()
            if self.critic is not None and cfg.critic.pretrain_steps:
                self.init_eval.update(self.pretrain_critic())
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

"""The online RL step: B prompts x G samples, scored, turned into advantages and clipped updates.

``OnlineStep.step`` reads top to bottom as its stages. Stages 1-5 are the *driver*: they see the
whole batch, so batch-wide statistics (group and batch advantage scales, whitening, entropy
quantiles, filtration) are exact; stage 7 consumes the prepared batch and is what data parallelism
shards (its normaliser is the one reduction, see ``trainers.update``).

1. collect   prompts from the sampler, the engine's rollouts, rewards and shaping, group filters
2. logprobs  old log-probs (recomputed by the trainer when the engine does not share its weights)
             and reference log-probs (when the recipe has a KL term or a regulariser that reads them)
3. kl        per-token KL to the reference; subtracted from the reward when ``algo.kl_in: reward``
4. advantage the advantage part, with the inputs it declares (values, greedy baseline, ...)
5. select    the selection parts: rows kept, loss mask, importance weights -> ``PreparedBatch``
6. critic    value targets; a separate critic is updated here, a shared one through the loss terms
7. update    epochs x mini-batches x micro-batches of the loss terms
7b. replay   the replay part (``algo.replay``, e.g. PIPO's layback) may hand back a batch to update on once
             more; then the new weights reach the engines, and the adaptive KL coefficient moves
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from rlfold.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, REGULARIZERS, SELECTIONS
from rlfold.algos.kl import adaptive_kl_coef
from rlfold.algos.replay import REPLAYS, Replay
from rlfold.algos.selection import SelectionInput, engine_mismatch
from rlfold.core.config import AlgoConfig, RunConfig, TaskConfig
from rlfold.core.errors import ConfigError, NumericalError
from rlfold.core.masked import masked_mean, masked_sum
from rlfold.core.registry import COLLECTORS, SAMPLERS, TASKS, TRAINERS, needed_inputs
from rlfold.core.seeding import derive_seed, generator_for
from rlfold.models import disable_dropout, load_model_and_tokenizer
from rlfold.models.lean import use_lean
from rlfold.models.logprobs import batched_logprobs
from rlfold.models.placement import (autocast_for, check_precision, enable_gradient_checkpointing, resolve_device,
                                     warn_slow_bf16)
from rlfold.models.policy import build_policy
from rlfold.rewards.ray_pool import RayRewardPool
from rlfold.rollout import EngineContext, SamplingParams, build_engines
from rlfold.tasks import Task
from rlfold.tasks.chat import for_tokenizer
from rlfold.tasks.rows import Columns
from rlfold.trainers import async_collect as _async_collect  # noqa: F401  (registers the async collectors)
from rlfold.trainers.collect import RolloutCollector, Sampled
from rlfold.trainers import distributed
from rlfold.trainers.critic import Critic, ValueTerm, value_metrics
from rlfold.trainers.evaluate import evaluate
from rlfold.trainers.inputs import StepContext, provide, take_rows
from rlfold.trainers.loop import StepResult
from rlfold.trainers.packing import check_micro_batch_tokens
from rlfold.trainers.perf import count_parameters, peak_flops, perf_metrics
from rlfold.trainers.preflight import check_dtype, check_prompts, check_stop_tokens
from rlfold.trainers.reference import build_reference
from rlfold.trainers.schedule import make_scheduler
from rlfold.trainers.scoring import Scorer, reward_problem
from rlfold.trainers.sft import SFTTerm
from rlfold.trainers.state import PartState
from rlfold.trainers.replay_state import ReplayState
from rlfold.trainers.update import (EntropyTerm, KLTerm, PolicyTerm, PreparedBatch, RegularizerTerm,
                                    group_objective_problem, policy_update)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _HeldSchedule:
    """A learning-rate schedule that does not move: the replayed update's optimiser steps keep the current lr."""

    def step(self) -> None:
        pass


HELD_SCHEDULE: Any = _HeldSchedule()


def build_task(t: TaskConfig, seed: int) -> Task:
    """The configured task, its dataset files read with the configured column mapping."""
    return TASKS.get(t.name)(
        levels=t.levels, train_size=t.train_size, held_out_size=t.held_out_size, held_out_fraction=t.held_out_fraction,
        seed=seed, train_file=t.train_file, held_out_file=t.held_out_file,
        columns=Columns(prompt=t.prompt_key, answer=t.answer_key, messages=t.messages_key), **t.kwargs,
    )


def sampling_params(rollout: Any) -> SamplingParams:
    return SamplingParams(
        temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
        max_new_tokens=rollout.max_new_tokens, n=rollout.n, stop_token_ids=rollout.stop_token_ids,
        stop_strings=rollout.stop_strings, ignore_eos=rollout.ignore_eos,
    )


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019, arXiv 1909.08593); checkpointed."""

    def __init__(self, a: AlgoConfig) -> None:
        self.coef, self.adaptive = a.kl_coef, a.kl_ctrl == "adaptive"
        self.target, self.horizon = a.kl_target, a.kl_horizon

    def update(self, observed_kl: float, n: int) -> None:
        if self.adaptive:
            self.coef = adaptive_kl_coef(self.coef, observed_kl, target=self.target, horizon=self.horizon, n_steps=n)

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = state["coef"]


def advantage_problem(adv: Tensor, mask: Tensor) -> str | None:
    """Why the advantages cannot train (None if they can): non-finite on a response token."""
    bad = mask.bool() & ~torch.isfinite(adv)
    if not bool(bad.any()):
        return None
    rows = bad.any(dim=1).nonzero().flatten().tolist()
    return (f"the advantage is non-finite on {int(bad.sum())} response tokens (rows {rows[:10]}); check the "
            "reward scale and the advantage options")


@dataclass
class LogProbs:
    """Stage 2's output: old log-probs the update starts from, and reference log-probs (or None)."""

    old: Tensor | None  # None: the update's own forward gives them (``OnlineTrainer.old_in_update``)
    ref: Tensor | None
    seconds_old: float
    seconds_ref: float
    metrics: dict[str, float]  # engine/trainer mismatch when old log-probs were recomputed


@TRAINERS.register("online")
class OnlineStep:
    """Online RL (GRPO / PPO family): the recipe's advantage, policy loss, aggregation and regularisers."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, a = cfg, cfg.algo
        check_dtype(cfg)
        self.parallel = distributed.setup(cfg.train.strategy)  # every rank runs this same driver
        self.device = resolve_device(cfg.model.device)  # after setup: a rank's "cuda" is its local device
        check_precision(cfg.train.mixed_precision, cfg.model.dtype)
        check_micro_batch_tokens(cfg.train.micro_batch_tokens, self.parallel.active)
        self.autocast = autocast_for(self.device, cfg.train.mixed_precision)
        warn_slow_bf16(self.device, cfg.train.mixed_precision)
        self.task = build_task(cfg.task, cfg.seed)
        dtype = DTYPES[cfg.model.dtype]
        self.model, self.tokenizer = load_model_and_tokenizer(cfg.model.path, dtype, device=self.device)
        # The data against the model, before the reference model, critic and engines are built.
        self.task = for_tokenizer(self.task, self.tokenizer, cfg.task.system_prompt, cfg.task.chat_template,
                                  cfg.model.path)
        check_stop_tokens(cfg, self.tokenizer)
        check_prompts(cfg, self.model, self.tokenizer, self.task.train, self.task.held_out[: cfg.eval.size])
        if cfg.model.disable_dropout:
            disable_dropout(self.model)
        self.policy = build_policy(self.model, cfg.model.lora)  # full fine-tuning, or LoRA adapters
        self.module, self.model = self.policy.module, self.policy.saved  # what computes; what checkpoints save
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(self.module)
        use_lean(self.module, cfg.model.forward, cfg.train.strategy)
        self.n_params, self.peak_flops = count_parameters(self.module), peak_flops(self.device, cfg.train.peak_tflops)
        self.regularizers = [(REGULARIZERS.get(r.name)(**r.kwargs), r.coef) for r in a.regularizers]
        self.adv_fn = ADVANTAGES.get(a.advantage)
        needs_ref = (a.kl_coef > 0 or "ref_logprobs" in needed_inputs(self.adv_fn)
                     or any("ref_logprobs" in needed_inputs(p) for p, _ in self.regularizers))
        self.reference = build_reference(self.policy, cfg.model.path, dtype) if needs_ref else None
        self.eval_reference = (self.reference or build_reference(self.policy, cfg.model.path, dtype)
                               if cfg.eval.kl_to_reference else None)  # for val/<task>/kl_ref
        policy_fn = POLICY_LOSSES.get(a.policy_loss)
        tc = cfg.train
        problem = group_objective_problem(policy_fn, a.policy_loss, loss_agg=a.loss_agg, n=cfg.rollout.n,
                                          mini_batch_size=tc.mini_batch_size, micro_batch_size=tc.micro_batch_size,
                                          micro_batch_tokens=tc.micro_batch_tokens, strategy=tc.strategy)
        if problem is not None:
            raise ConfigError(problem)
        self.policy_term = PolicyTerm(policy_fn, a.policy_loss_options(),
                                      max_response_length=cfg.rollout.max_new_tokens)
        self.aggregation = AGGREGATIONS.get(a.loss_agg)
        self.max_len = a.loss_agg_max_len or cfg.rollout.max_new_tokens
        self.kl_estimator = KL_ESTIMATORS.get(a.kl_estimator)
        self.kl = KLController(a)
        self.selections = [(SELECTIONS.get(sp.name), sp.kwargs) for sp in a.selection]
        self.replay: Replay | None = REPLAYS.get(a.replay.name)(**a.replay.kwargs) if a.replay is not None else None
        self.part_state = PartState()  # what stateful parts keep across steps (input part_state), checkpointed
        self.stateful_parts = any("part_state" in needed_inputs(fn)
                                  for fn in [self.adv_fn, *(f for f, _ in self.selections)])
        self.critic = (Critic(cfg.critic, cfg.train, cfg.model, self.module, dtype)
                       if "values" in needed_inputs(self.adv_fn) else None)
        self.sft = SFTTerm(self.module, self.tokenizer, a.sft_coef) if a.sft_coef > 0 else None
        ctx = EngineContext(model=self.module, tokenizer=self.tokenizer, model_path=cfg.model.path, dtype=dtype,
                            weights=self.policy.weights, autocast=self.autocast)
        self.engine, self.eval_engine = build_engines(cfg.rollout, ctx, cfg.ray, cfg.eval.multi_turn)
        self.recompute = (cfg.rollout.recompute_logprobs if cfg.rollout.recompute_logprobs is not None
                          else not self.engine.shares_weights or cfg.train.mixed_precision != "none")
        self.params = sampling_params(cfg.rollout)
        sp = cfg.train.sampler
        self.sampler = SAMPLERS.get(sp.name)(self.task.train, seed=cfg.seed, **sp.kwargs)
        scorer = Scorer([(r.name, r.weight, r.kwargs) for r in cfg.rewards], cfg.accuracy_reward, cfg.reward_errors,
                        [(s.name, s.kwargs) for s in cfg.shaping], cfg.rollout.max_new_tokens, self.tokenizer,
                        aggregation=(cfg.reward_aggregation.name, cfg.reward_aggregation.kwargs),
                        **({"score": RayRewardPool(cfg.ray, cfg.imports)}
                           if cfg.ray is not None and cfg.ray.num_reward_workers > 0 else {}))
        self.collector: RolloutCollector = COLLECTORS.get(cfg.rollout.async_mode)(
            self.engine, self.params, self.sampler, scorer, prompts_per_step=cfg.train.prompts_per_step,
            seed=cfg.seed, group_filters=[(f.name, f.kwargs) for f in a.group_filters],
            max_gen_batches=a.max_gen_batches, max_staleness=cfg.rollout.max_staleness)
        tc = cfg.train
        self.check_parallel()
        self.train_module = distributed.wrap(self.module, self.parallel)  # what the update's forward runs
        self.trainable = [p for p in self.module.parameters() if p.requires_grad]
        if self.critic is not None:
            self.trainable += self.critic.head_parameters()
        self.optimizer = torch.optim.AdamW(self.trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
        n_seq = tc.prompts_per_step * cfg.rollout.n
        self.opt_steps_per_step = tc.ppo_epochs * -(-n_seq // (tc.mini_batch_size or n_seq))
        # verl's on-policy shortcut: when the update is one optimiser step on rows sampled with the current weights,
        # the log-probs it starts from are its own forward's, detached, exactly; so with recompute_logprobs
        # unset, an engine computing with the trainer's module (an engine of its own keeps the recomputation, which
        # logs how far its log-probs are) and nothing but the policy loss reading old log-probs, none are
        # computed before the update. A replay part turns it off: the batch it hands back is trained on again after
        # the weights moved, so its ratios need the log-probs of the policy that sampled it, kept in the batch
        one_step = (self.replay is None and tc.ppo_epochs == 1 and self.reference is None and not self.regularizers
                    and not self.selections and "old_logprobs" not in needed_inputs(self.adv_fn))
        self.old_in_update = one_step and (
            (cfg.rollout.recompute_logprobs is None and self.engine.shares_weights and not self.collector.off_policy)
            # off-policy rows with recompute_logprobs=false: the proximal policy is the weights the update starts
            # from, so a one-step update's own forward gives its log-probs exactly (decoupled_ppo reads the
            # behaviour log-probs in the loss); no recomputation before the update
            or (cfg.rollout.recompute_logprobs is False and self.collector.off_policy
                and self.opt_steps_per_step == 1 and not a.group_filters))
        if self.collector.off_policy and not self.recompute and not self.old_in_update:
            raise ConfigError(f"rollout.async_mode={cfg.rollout.async_mode} with rollout.recompute_logprobs=false: "
                              "off-policy rows need the trainer's own old (proximal) log-probs, which the update can "
                              "take from its own forward only when it is one optimiser step on the batch read by "
                              "nothing before it (train.ppo_epochs=1, one mini-batch, no group filter, replay, "
                              "reference, regulariser or selection part, an advantage not reading old log-probs); otherwise leave "
                              "rollout.recompute_logprobs unset or true")
        self.scheduler = make_scheduler(self.optimizer, tc.steps * self.opt_steps_per_step, tc.warmup_steps,
                                        tc.schedule, tc.min_lr_ratio)
        self.skipped: list[tuple[int, str]] = []  # the current streak of steps that did not train: (step, why)

    def check_parallel(self) -> None:
        """Refuse what the data-parallel update does not shard yet (every rank would add the same gradient)."""
        if not self.parallel.active:
            return
        where = f"train.strategy={self.cfg.train.strategy}"
        if self.cfg.model.lora is not None:
            raise ConfigError(f"{where}: model.lora is not supported with several processes yet; "
                              "set train.strategy=single")
        if self.sft is not None:
            raise ConfigError(f"{where}: algo.sft_coef > 0 is not supported with several processes yet; "
                              "set algo.sft_coef=0 or train.strategy=single")
        if self.critic is not None and self.critic.shared:
            raise ConfigError(f"{where}: a shared critic (critic.model=shared) is not supported with several "
                              "processes yet; use a separate critic or train.strategy=single")

    # ----- what the loop needs --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        objects: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler,
                                   "scorer": self.collector.scorer, "kl": self.kl, **self.policy.state}
        if self.critic is not None:
            objects["critic"] = self.critic
        if self.collector.filter_state.stateful:  # a curriculum's state (decs_curriculum)
            objects["group_filters"] = self.collector.filter_state
        if self.stateful_parts:  # parts that keep state across steps (input part_state)
            objects["part_state"] = self.part_state
        if self.replay is not None:  # e.g. a history of batch means and the batch it will replay
            objects["replay"] = ReplayState(self.replay)
        return objects

    def data_sources(self) -> list[dict[str, Any]]:
        """The dataset files of the task (split, path, rows, sha256 ...), for the run directory."""
        return [s.as_dict() for s in self.task.sources]

    def begin(self) -> dict[str, float]:
        metrics = self.evaluate()
        if self.critic is not None and self.cfg.critic.pretrain_steps:
            metrics.update(self.critic.pretrain(lambda i: self.collector.collect(0, f"value_pretraining/{i}"),
                                                self.cfg.critic.pretrain_steps,
                                                self.aggregation, self.max_len, self.cfg.log.progress))
        return metrics

    def evaluate(self) -> dict[str, float]:
        ec = self.cfg.eval
        with self.collector.idle() if self.eval_engine is self.engine else nullcontext():
            res = self._evaluate(ec)
        return {f"val/{self.task.name}/{k}": v for k, v in res.items()}

    def _evaluate(self, ec: Any) -> dict[str, float]:
        return evaluate(self.eval_engine, self.task.held_out[: ec.size], reward=self.cfg.accuracy_reward, k=ec.pass_k,
                        max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, seed=self.cfg.seed + 7,
                        group_key=ec.group_key, confidence=ec.confidence, reference=self.eval_reference)

    def close(self) -> None:
        """Stop what runs in the background (an asynchronous collector's thread); called at every run end."""
        self.collector.close()

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{m['reward/mean']:.3f}", "acc": f"{m['acc/mean']:.3f}",
                "tok_s": f"{m['perf/tokens_per_s']:.0f}"}

    # ----- the step ---------------------------------------------------------------------
    def step(self, index: int) -> StepResult:
        t_step = time.perf_counter()
        if self.collector.version != index:  # a resumed run (or a skipped step): the engines get these weights
            self.collector.new_weights(self.sync_weights, index)
        s = self.collector.collect(index)                                        # 1. collect
        lp = self.logprobs(s)                                                    # 2. old / ref log-probs
        rewards, token_rewards, kl_tokens, kl_metrics = self.kl_stage(s, lp)     # 3. KL
        ctx = StepContext(step=index, prompts=s.prompts, roll=s.roll, scores=s.scores, rewards=rewards,
                          token_rewards=token_rewards, group_ids=s.group_ids, collector=self.collector,
                          critic=self.critic, per_fn=s.per_fn, tokenizer=self.tokenizer,
                          total_steps=self.cfg.train.steps, old_logprobs=lp.old, ref_logprobs=lp.ref,
                          model=self.module, autocast=self.autocast, part_state=self.part_state)
        t0 = time.perf_counter()
        problem = reward_problem(rewards, token_rewards, s.roll.response_mask)
        adv = torch.full(s.roll.response_mask.shape, float("nan"))  # logged as such when never computed
        adv_metrics: dict[str, float] = {}
        if problem is None:
            adv, adv_metrics = self.advantage(ctx)                               # 4. advantage
            problem = advantage_problem(adv, s.roll.response_mask)
        t_adv = time.perf_counter() - t0
        sel_metrics: dict[str, float] = {}
        empty = False
        if problem is None:
            prep, sel_metrics = self.select(ctx, s, lp, rewards, adv, index)     # 5. selection
            problem = self.empty_problem(s, prep, sel_metrics)
            empty = problem is not None
        health = {"train/empty_step": float(empty), "train/bad_reward_step": float(problem is not None and not empty)}
        if problem is not None:  # nothing to train on: the step is skipped like a non-finite one
            metrics = {**adv_metrics, **s.metrics, **lp.metrics, **sel_metrics, **kl_metrics, **health,
                       "actor/lr": self.optimizer.param_groups[0]["lr"],
                       "timing_s/gen": s.t_gen, "timing_s/reward": s.t_reward, "timing_s/adv": t_adv,
                       "timing_s/step": time.perf_counter() - t_step,
                       "perf/tokens_per_s": float(s.roll.response_mask.sum()) / max(s.t_gen, 1e-9)}
            return self.skip(index, problem, StepResult(metrics, False, self.samples(s, rewards, adv)))
        t0 = time.perf_counter()
        critic_metrics = self.critic_stage(ctx, prep) if self.critic is not None else {}  # 6. critic
        t_critic = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = self.update(prep)                                                # 7. update
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        replay_metrics, replay_finite = (self.replay_stage(s, prep, index)       # 7b. replay
                                         if self.replay is not None and stats.finite else ({}, True))
        t_replay = time.perf_counter() - t0
        trained = float(prep.roll.prompt_mask.sum() + prep.roll.attention.sum()) * self.cfg.train.ppo_epochs
        perf = perf_metrics(self.n_params, trained, t_update, self.device,
                            None if self.peak_flops is None else self.peak_flops * self.parallel.world)
        t0 = time.perf_counter()
        self.collector.new_weights(self.sync_weights, index + 1)  # the collector says when the engines may take them
        t_sync = time.perf_counter() - t0
        if kl_tokens is not None:
            self.kl.update(float(masked_mean(kl_tokens, s.roll.response_mask)), s.roll.size)
        roll, dt = s.roll, time.perf_counter() - t_step
        metrics: dict[str, float] = {
            **adv_metrics, **s.metrics, **lp.metrics, **sel_metrics, **kl_metrics, **critic_metrics, **stats.metrics,
            **replay_metrics, **perf,
            **health,
            "actor/lr": self.optimizer.param_groups[0]["lr"],
            "timing_s/gen": s.t_gen, "timing_s/reward": s.t_reward, "timing_s/ref": lp.seconds_ref,
            "timing_s/adv": t_adv, "timing_s/critic": t_critic, "timing_s/update": t_update, "timing_s/sync": t_sync,
            "timing_s/step": dt,
            "perf/tokens_per_s": float(roll.response_mask.sum()) / max(s.t_gen, 1e-9),
            # response tokens in the policy loss after selection (with their repeats when rows are resampled)
            "train/loss_tokens": float((prep.loss_mask > 0).sum()),
        }
        if self.recompute and lp.old is not None:
            metrics["timing_s/old"] = lp.seconds_old
        if self.replay is not None:
            metrics["timing_s/replay"] = t_replay
        finite = stats.finite and replay_finite
        if finite:
            self.skipped.clear()
        else:
            self.skipped.append((index + 1, "the loss or gradient was non-finite"))
        return StepResult(metrics, finite, self.samples(s, rewards, adv))

    def empty_problem(self, s: Sampled, prep: PreparedBatch, sel_metrics: dict[str, float]) -> str | None:
        """Why no token of the prepared batch can train (None if some can)."""
        live = prep.loss_mask > 0
        if prep.token_weights is not None:
            live = live & (prep.token_weights != 0)
        if bool(live.any()):
            return None
        if s.roll.size and bool(s.unscorable.all()):
            names = ", ".join(r.name for r in self.cfg.rewards)
            return (f"the reward functions ({names}) returned None for all {s.roll.size} samples "
                    "(reward/unscorable_frac = 1), so no sample is scored and none can train; check the reward "
                    "functions against the task's answers")
        if not bool(s.roll.response_mask.bool().any()):
            return "every response is empty (no response token), so there is nothing to train on"
        names = ", ".join(sp.name for sp in self.cfg.algo.selection) or "none"
        shown = ", ".join(f"{k}={v:g}" for k, v in sel_metrics.items() if k.startswith("selection/"))
        what = "weighted every token 0" if bool((prep.loss_mask > 0).any()) else "removed every token"
        hint = (f"; every response was cut at rollout.max_new_tokens={self.cfg.rollout.max_new_tokens}, so raise it "
                "if the responses need more tokens" if bool(s.roll.truncated.all()) else "")
        scored = int((~s.unscorable).sum())  # before the selection parts (which may drop rows)
        return (f"the selection parts ({names}) {what} of the {scored} scored samples"
                + (f" ({shown})" if shown else "") + f", so there is nothing to train on{hint}")

    def skip(self, index: int, problem: str, result: StepResult) -> StepResult:
        """A step that cannot train: no update, counted by the loop's non-finite streak. The run stops
        here, naming each step's cause, when that streak reaches ``train.max_nonfinite_steps``, or at
        the last step of a run none of whose steps trained (its final model would be the initial one)."""
        self.skipped.append((index + 1, problem))
        limit = self.cfg.train.max_nonfinite_steps
        never = index + 1 == self.cfg.train.steps and self.skipped[0][0] == 1 and len(self.skipped) == index + 1
        if len(self.skipped) >= limit or never:
            by_cause: dict[str, list[int]] = {}
            for i, why in self.skipped[-limit:]:
                by_cause.setdefault(why, []).append(i)
            causes = "; ".join(f"step{'s' if len(ix) > 1 else ''} {', '.join(map(str, ix))}: {why}"
                               for why, ix in by_cause.items())
            n = min(len(self.skipped), limit)
            what = (f"none of the {n} steps of the run could train" if never and n < limit else
                    f"{n} steps in a row could not train (train.max_nonfinite_steps={limit})")
            raise NumericalError(f"{what}; stopped before writing a checkpoint over the last good one. {causes}")
        return result

    def logprobs(self, s: Sampled) -> LogProbs:
        """Stage 2. Old log-probs: the engine's when it computes with the trainer's weights, else the
        trainer's recomputation (``rollout.recompute_logprobs``). Reference log-probs for a KL term."""
        roll, mb = s.roll, self.cfg.train.micro_batch_size
        mini = self.cfg.train.mini_batch_size
        if self.old_in_update and (mini == 0 or roll.size <= mini):
            return LogProbs(None, None, 0.0, 0.0, {})
        t0 = time.perf_counter()
        old = roll.policy_logprobs
        if not self.recompute and bool(torch.isnan(old[roll.response_mask.bool()]).any()):
            raise ConfigError(f"rollout engine {self.cfg.rollout.engine!r} reported no plain-policy log-probs for "
                              "this sampling (temperature != 1, top_p or top_k), so old log-probs must come from "
                              "the trainer: set rollout.recompute_logprobs=true (or leave it unset)")
        if self.recompute:
            with self.autocast():  # the update's precision, so the first ratios are 1
                old = batched_logprobs(self.module, roll.prompt_ids, roll.prompt_mask, roll.response_ids,
                                       roll.response_mask, roll.response_attention_mask, batch_size=mb)
        t_old = time.perf_counter() - t0
        metrics = engine_mismatch(old, roll.sample_logprobs, roll.response_mask) if self.recompute else {}
        t0 = time.perf_counter()
        ref = None
        if self.reference is not None:
            with self.autocast():
                ref = self.reference.logprobs(roll)
        return LogProbs(old, ref, t_old, time.perf_counter() - t0, metrics)

    def kl_stage(self, s: Sampled, lp: LogProbs) -> tuple[Tensor, Tensor, Tensor | None, dict[str, float]]:
        """Stage 3. Per-token KL to the reference (of the policy the batch was sampled from); with
        ``algo.kl_in: reward`` it is subtracted from the sequence and token rewards."""
        if lp.ref is None:
            return s.scores, s.token_rewards, None, {}
        mask = s.roll.response_mask
        kl_tokens = self.kl_estimator(lp.old, lp.ref)
        metrics = {"actor/kl_coef": self.kl.coef, "actor/reward_kl": float(masked_mean(kl_tokens, mask))}
        if self.cfg.algo.kl_in != "reward":
            return s.scores, s.token_rewards, kl_tokens, metrics
        token_rewards = s.token_rewards - self.kl.coef * kl_tokens * mask
        rewards = s.scores - self.kl.coef * masked_sum(kl_tokens, mask, dim=1)
        return rewards, token_rewards, kl_tokens, metrics

    def advantage(self, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """Stage 4. The advantage part on the whole batch, with the inputs it declares."""
        inputs = provide(needed_inputs(self.adv_fn), ctx)
        return self.adv_fn(ctx.rewards, ctx.group_ids, ctx.roll.response_mask, **inputs,
                           **self.cfg.algo.advantage_kwargs)

    def select(self, ctx: StepContext, s: Sampled, lp: LogProbs, rewards: Tensor, adv: Tensor,
               index: int) -> tuple[PreparedBatch, dict[str, float]]:
        """Stage 5. The selection parts in order (rows kept, loss mask, token weights), each with the
        inputs it declares (restricted to the rows kept so far); unscorable rows never train. Returns
        the prepared batch the update consumes."""
        roll, mask = s.roll, s.roll.response_mask
        scorable = mask * (~s.unscorable).to(mask.dtype)[:, None]
        inp = SelectionInput(rewards=rewards, group_ids=s.group_ids, response_mask=scorable, advantages=adv,
                             truncated=roll.truncated, old_logprobs=lp.old, behaviour_logprobs=roll.sample_logprobs,
                             entropy=roll.entropy)
        rows = torch.arange(rewards.shape[0])
        loss_mask = inp.response_mask.float()
        weights: Tensor | None = None
        metrics: dict[str, float] = {}
        gen = generator_for(derive_seed(self.cfg.seed, "selection", index))
        for fn, kwargs in self.selections:
            inp = replace(inp, response_mask=loss_mask)
            sel = fn(inp, generator=gen, **kwargs, **take_rows(provide(needed_inputs(fn), ctx), rows))
            metrics.update(sel.metrics)
            if sel.token_mask is not None:
                loss_mask = loss_mask * sel.token_mask.float()
            if sel.token_weights is not None:
                weights = sel.token_weights if weights is None else weights * sel.token_weights
            if sel.rows is not None:
                r = sel.rows
                rows, loss_mask = rows[r], loss_mask[r]
                weights = weights[r] if weights is not None else None
                inp = inp.take(r)
        prep = PreparedBatch(roll=roll.select(rows), advantages=adv[rows],
                             old_logprobs=lp.old[rows] if lp.old is not None else None,
                             loss_mask=loss_mask, prompts=[s.prompts[i] for i in rows.tolist()],
                             token_weights=weights, ref_logprobs=lp.ref[rows] if lp.ref is not None else None,
                             rows=rows, rewards=rewards[rows], group_ids=s.group_ids[rows])
        return prep, metrics

    def critic_stage(self, ctx: StepContext, prep: PreparedBatch) -> dict[str, float]:
        """Stage 6. Value targets with the critic's own gamma / lambda; a separate critic is trained
        here, a shared one hands its old values and returns to the update's value term."""
        assert self.critic is not None
        roll, mask, rows = ctx.roll, ctx.roll.response_mask, prep.rows
        values = provide(("values",), ctx)["values"]
        returns = self.critic.targets(ctx.token_rewards, values, mask, roll.truncated)
        metrics = value_metrics(values, returns, mask)
        if self.critic.shared:
            prep.old_values, prep.returns = values[rows], returns[rows]
        else:
            value_mask = self.critic.value_mask(mask, roll.truncated)
            metrics.update(self.critic.update(prep.roll, value_mask[rows], values[rows], returns[rows],
                                              self.aggregation, self.max_len))
        return metrics

    def replay_stage(self, s: Sampled, prep: PreparedBatch, index: int) -> tuple[dict[str, float], bool]:
        """Stage 7b. The replay part sees the batch just trained on and its mean reward (over the scored
        rows); a batch it hands back is updated on now with the same optimiser and loss terms, from the
        old log-probs it carries (its metrics under ``replay/``). Returns the metrics and whether that
        update was finite."""
        assert self.replay is not None
        scored = s.scores[~s.unscorable]
        mean = float(scored.mean()) if scored.numel() else 0.0
        batch, metrics = self.replay.after_update(prep, mean, index)
        metrics = dict(metrics)
        if batch is None:
            return metrics, True
        stats = self.update(batch, replay=True)
        metrics.update({f"replay/{k}": v for k, v in stats.metrics.items()})
        return metrics, stats.finite

    def update(self, prep: PreparedBatch, replay: bool = False):
        """Stage 7. The loss terms over epochs x mini-batches x micro-batches. A replayed batch (stage 7b)
        holds the learning-rate schedule where it is (the schedule counts the steps of ``train.steps``)
        and adds no SFT term (the replay repeats the policy update only)."""
        tc = self.cfg.train
        return policy_update(
            self.train_module, self.optimizer, HELD_SCHEDULE if replay else self.scheduler, prep, terms=self.terms(),
            aggregation=self.aggregation,
            ppo_epochs=tc.ppo_epochs, mini_batch_size=tc.mini_batch_size, micro_batch_size=tc.micro_batch_size,
            grad_clip=tc.grad_clip, max_len=self.max_len,
            minibatch_terms=(self.sft,) if self.sft is not None and not replay else (), params=self.trainable,
            parallel=self.parallel, micro_batch_tokens=tc.micro_batch_tokens, autocast=self.autocast,
        )

    def terms(self) -> list:
        a = self.cfg.algo
        terms: list = [self.policy_term]
        if self.reference is not None and a.kl_in == "loss" and a.kl_coef > 0:  # the reference may serve a regulariser only
            terms.append(KLTerm(self.kl_estimator, self.kl.coef))
        terms += [RegularizerTerm(part, coef) for part, coef in self.regularizers]
        if a.entropy_coef:
            terms.append(EntropyTerm(a.entropy_coef))
        if self.critic is not None and self.critic.shared:
            terms.append(ValueTerm(self.critic, self.cfg.critic.vf_coef))
        return terms

    def sync_weights(self) -> None:
        """The new weights reach the engines, awake (a no-op for engines that share the trainer's tensors)."""
        engines = [self.engine] if self.eval_engine is self.engine else [self.engine, self.eval_engine]
        for engine in engines:
            if not engine.shares_weights:
                engine.wake()
                engine.update_weights(self.policy.weights.named_weights(), streamed=True)

    def samples(self, s: Sampled, rewards: Tensor, adv: Tensor) -> list[dict[str, Any]]:
        roll, mask, k = s.roll, s.roll.response_mask, self.cfg.log.samples_per_step
        return [
            {"prompt": s.prompts[i].text, "completion": roll.response_texts[i], "answer": s.prompts[i].answer,
             "reward": rewards[i].item(), "advantage": float(masked_mean(adv[i], mask[i])),
             "finish": roll.finish_reasons[i]}
            for i in range(0, roll.size, max(1, roll.size // max(1, k)))
        ][:k]


__all__ = ["KLController", "OnlineStep", "build_task", "sampling_params"]

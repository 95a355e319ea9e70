"""The offline preference step (``trainer: preference``): the DPO family on pairs, ranked lists or
unpaired labels, one registered loss per method (``PREFERENCE_LOSSES``).

Built once (``__init__``), in order:

1. model    the policy (full fine-tuning or LoRA), its tokenizer, the task (its held-out prompts and
            rewards are the ground truth of the win rate), the ``rollout.engine`` on the policy
2. data     ``preference.train_file`` / ``held_out_file``, or a synthetic dataset sampled from the
            initial policy and scored by the rewards; converted to the kind the loss accepts; rows longer
            than the model's context refused (or skipped and counted)
3. cache    the reference log-probs of every example, once (the initial policy is the reference, so
            no second model is held unless a loss needs the reference online: KTO's KL term, HyPO)
4. baseline the reference policy's samples of the held-out prompts, scored, for the win rate

Each ``step`` then reads top to bottom:

1. draw     ``train.prompts_per_step`` examples (seeded epochs)
2. update   per mini-batch, per micro-batch of whole examples: policy log-probs, the cached reference
            ones, the inputs the loss declares, the loss (mean over the mini-batch), backward; then
            one clipped AdamW step
3. refresh  every ``preference.reference_update_every`` steps the reference becomes the current policy
            (DNO's iterations) and the cache is recomputed

Metrics use TRL's names: ``rewards/chosen|rejected|accuracies|margins`` (implicit rewards beta * rho),
``logps/chosen|rejected`` (summed log-probs); for ranked lists chosen is the best-scored response and
rejected the worst; for unpaired data, desirable and undesirable completions.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from typing import Any

import torch
from torch import Tensor

from rlfold.algos.preference import PREFERENCE_LOSSES, PreferenceLogps, spec_of
from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.registry import TRAINERS
from rlfold.core.seeding import derive_seed
from rlfold.models import disable_dropout, load_model_and_tokenizer
from rlfold.models.lean import use_lean
from rlfold.models.placement import resolve_device
from rlfold.models.policy import build_policy
from rlfold.rollout import EngineContext
from rlfold.rollout.build import build_engine
from rlfold.tasks.chat import for_tokenizer
from rlfold.tasks.preference_data import PreferenceData, as_kind
from rlfold.trainers.loop import StepResult
from rlfold.trainers.online import DTYPES, build_task
from rlfold.trainers.preference_batch import ReferenceCache, TokenBlock, block_logps, encode_examples, token_block
from rlfold.trainers.preference_datasets import check_lengths, context_length, preference_splits
from rlfold.trainers.preference_inputs import PreferenceContext, provide
from rlfold.trainers.preflight import check_dtype
from rlfold.trainers.reference import build_reference
from rlfold.trainers.schedule import make_scheduler
from rlfold.trainers.state import Counters
from rlfold.trainers.win_rate import sample_scores, win_rate


class EpochSampler:
    """Example indices in seeded random epochs; its position is checkpointed."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        order = list(range(self.n))
        random.Random(derive_seed(self.seed, "preference_epoch", self.epoch)).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            take = min(k - len(out), self.n - self.pos)
            out += self.order[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.order = self._order()


def _kind_for(data: PreferenceData, kinds: tuple[str, ...], loss: str) -> PreferenceData:
    """The data in a kind the loss accepts (its own kind when accepted, else the first convertible one)."""
    if data.kind in kinds:
        return data
    errors = []
    for kind in kinds:
        try:
            return as_kind(data, kind)
        except DataError as exc:
            errors.append(str(exc))
    raise ConfigError(f"preference.loss={loss} accepts {', '.join(kinds)} data, but the dataset holds {data.kind} "
                      f"({'; '.join(errors)})")


@TRAINERS.register("preference")
class PreferenceStep:
    """Offline preference optimisation with the registered loss ``preference.loss``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, p = cfg, cfg.preference
        check_dtype(cfg)
        if cfg.train.strategy != "single":
            raise ConfigError(f"train.strategy={cfg.train.strategy}: the preference trainer runs in one process so "
                              "far; set train.strategy=single")
        self.loss_fn = PREFERENCE_LOSSES.get(p.loss)
        self.spec = spec_of(self.loss_fn)
        self.options = dict(p.loss_kwargs) if p.beta is None else {**p.loss_kwargs, "beta": p.beta}
        declared = inspect.signature(self.loss_fn).parameters.get("beta")
        if p.beta is not None and declared is None:
            raise ConfigError(f"preference.beta={p.beta}: preference loss {p.loss!r} takes no beta; unset it")
        # the implicit reward beta * rho of the metrics (1 for a loss without a beta)
        self.beta = float(self.options.get("beta", declared.default if declared is not None else 1.0))
        # 1. model
        self.device = resolve_device(cfg.model.device)
        dtype = DTYPES[cfg.model.dtype]
        self.task = build_task(cfg.task, cfg.seed)
        model, self.tokenizer = load_model_and_tokenizer(cfg.model.path, dtype, device=self.device)
        self.task = for_tokenizer(self.task, self.tokenizer, cfg.task.system_prompt, cfg.task.chat_template,
                                  cfg.model.path)
        if cfg.model.disable_dropout:
            disable_dropout(model)
        self.policy = build_policy(model, cfg.model.lora)
        use_lean(self.policy.module, cfg.model.forward, cfg.train.strategy)
        self.module, self.model = self.policy.module, self.policy.saved
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        ctx = EngineContext(model=self.module, tokenizer=self.tokenizer, model_path=cfg.model.path, dtype=dtype,
                            weights=self.policy.weights)
        self.engine = build_engine(cfg.rollout, ctx)  # samples the synthetic data, the win rate, online terms
        self.rewards = [(r.name, r.weight, r.kwargs) for r in cfg.rewards]
        # 2. data
        splits = preference_splits(cfg, self.task, self.engine, kind=self.spec.kinds[0])
        limit = context_length(self.module, p.max_length)
        self.train_data = check_lengths(_kind_for(splits.train, self.spec.kinds, p.loss), self.tokenizer, limit,
                                        p.bad_rows)
        self.held_data = check_lengths(_kind_for(splits.held_out, self.spec.kinds, p.loss), self.tokenizer, limit,
                                       p.bad_rows) if splits.held_out.examples else splits.held_out
        self.sources = splits.sources
        self.encoded = {"train": encode_examples(self.tokenizer, self.train_data.examples),
                        "held_out": encode_examples(self.tokenizer, self.held_data.examples)}
        # 3. reference log-probs, once (the initial policy is the reference)
        self.cache = ReferenceCache()
        if self.spec.reference:
            self.cache.fill(self.module, {k: v for k, v in self.encoded.items() if v}, self.pad_id,
                            cfg.log.progress)
        online = {"kl", "online"} & set(self.spec.needs)
        self.reference = build_reference(self.policy, cfg.model.path, dtype) if online else None
        # 4. optimiser, schedule, sampler
        tc = cfg.train
        self.trainable = [q for q in self.module.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
        mini = tc.mini_batch_size or tc.prompts_per_step
        self.opt_steps_per_step = -(-tc.prompts_per_step // mini)
        self.scheduler = make_scheduler(self.optimizer, tc.steps * self.opt_steps_per_step, tc.warmup_steps,
                                        tc.schedule, tc.min_lr_ratio)
        self.sampler = EpochSampler(len(self.encoded["train"]), cfg.seed)
        # running mean of the implicit rewards (BCO's shift); the reference policy's held-out scores (win rate)
        self.running = Counters(reward_sum=0.0, reward_count=0, reference_scores=None)

    # ----- what the loop needs --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler,
                "reference_cache": self.cache, "running": self.running, **self.policy.state}

    def data_sources(self) -> list[dict[str, Any]]:
        return list(self.sources) + [s.as_dict() for s in self.task.sources]

    def begin(self) -> dict[str, float]:
        metrics = {"data/train_examples": float(len(self.encoded["train"])),
                   "data/held_out_examples": float(len(self.encoded["held_out"])),
                   "data/skipped_rows": float(sum(self.train_data.skipped.values())
                                              + sum(self.held_data.skipped.values()))}
        return {**metrics, **self.evaluate()}

    def evaluate(self) -> dict[str, float]:
        """Win rates against the reference policy (temperature 1 and greedy), greedy accuracy and length on the
        task's held-out prompts; implicit-reward metrics of the held-out preference examples."""
        ec, name = self.cfg.eval, self.task.name
        prompts = self.task.held_out[: ec.size]
        max_new = ec.max_new_tokens or self.cfg.rollout.max_new_tokens
        seed = derive_seed(self.cfg.seed, "win_rate")
        sampled = sample_scores(self.engine, prompts, self.rewards, self.cfg.preference.win_rate_samples, max_new,
                                seed)
        greedy = sample_scores(self.engine, prompts, self.rewards, 1, max_new, seed, temperature=0.0,
                               accuracy=self.cfg.accuracy_reward)
        if self.running["reference_scores"] is None:  # the first evaluation sees the initial policy: the reference
            self.running["reference_scores"] = {"sampled": sampled["score"], "greedy": greedy["score"]}
        ref = self.running["reference_scores"]
        out = {f"val/{name}/{k}": v for k, v in win_rate(sampled["score"], ref["sampled"]).items()}
        out[f"val/{name}/win_rate_greedy"] = win_rate(greedy["score"], ref["greedy"])["win_rate"]
        out[f"val/{name}/acc"] = float(greedy["accuracy"].mean())
        out[f"val/{name}/length"] = float(greedy["length"].mean())
        if self.encoded["held_out"]:
            out.update({f"val/pref/{k}": v for k, v in self.held_out_metrics().items()})
        return out

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        keys = (("loss", "loss", 3), ("acc", "rewards/accuracies", 2), ("margin", "rewards/margins", 2))
        return {name: f"{m[key]:.{digits}f}" for name, key, digits in keys if key in m}

    def close(self) -> None:
        """Nothing runs in the background."""

    # ----- the step -------------------------------------------------------------------------
    def step(self, index: int) -> StepResult:
        t0 = time.perf_counter()
        tc = self.cfg.train
        idx = self.sampler.next(tc.prompts_per_step)                                 # 1. draw
        mini = tc.mini_batch_size or len(idx)
        self.module.train()
        sums: dict[str, tuple[float, int]] = {}
        finite, grad_norms = True, []
        for m0 in range(0, len(idx), mini):                                          # 2. update
            self.optimizer.zero_grad(set_to_none=True)
            ok, stats = self.backward(idx[m0 : m0 + mini], index)
            _add(sums, stats)
            norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, tc.grad_clip)) if ok else math.nan
            if not ok or not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                finite = False
                continue
            grad_norms.append(norm)
            self.optimizer.step()
            self.scheduler.step()
        refreshed = self.maybe_refresh(index)                                         # 3. refresh
        metrics = _means(sums)
        metrics.update({"grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
                        "actor/lr": self.optimizer.param_groups[0]["lr"], "reference/refreshed": float(refreshed),
                        "timing_s/step": time.perf_counter() - t0})
        if not finite:
            metrics.setdefault("loss", math.nan)
        return StepResult(metrics, finite)

    def backward(self, mini_batch: list[int], step: int) -> tuple[bool, dict[str, tuple[float, int]]]:
        """Accumulate the gradient of the mini-batch's mean loss, ``train.micro_batch_size`` whole examples per
        forward; ``(finite, metrics as (sum, count))``."""
        micro = self.cfg.train.micro_batch_size or len(mini_batch)
        sums: dict[str, tuple[float, int]] = {}
        for u0 in range(0, len(mini_batch), micro):
            ub = mini_batch[u0 : u0 + micro]
            loss, stats = self.micro_loss("train", ub, step)
            if not bool(torch.isfinite(loss)):
                return False, sums
            (loss * len(ub) / len(mini_batch)).backward()
            _add(sums, stats)
        return True, sums

    def micro_loss(self, split: str, indices: list[int], step: int) -> tuple[Tensor, dict[str, tuple[float, int]]]:
        """Mean loss of the examples at ``indices`` of ``split`` and their metrics as (sum, count)."""
        encoded = [self.encoded[split][i] for i in indices]
        block = token_block(encoded, self.pad_id)
        policy = block_logps(self.module, block)
        lp = self.logps(split, indices, block, policy)
        inputs = {}
        if self.spec.needs:
            data = self.train_data if split == "train" else self.held_data
            ctx = PreferenceContext(step=step, examples=encoded, prompts=[data.examples[i].prompt for i in indices],
                                    module=self.module, reference=self.reference_logps, engine=self.engine,
                                    pad_id=self.pad_id, tokenizer=self.tokenizer, config=self.cfg,
                                    state={"reward_mean": self.reward_mean()})
            inputs = provide(self.spec.needs, ctx)
        per_example = self.loss_fn(lp, **self.options, **inputs)
        loss = per_example.mean()
        stats = self.batch_metrics(lp)
        stats["loss"] = (float(loss.detach()) * len(indices), len(indices))
        return loss, stats

    def logps(self, split: str, indices: list[int], block: TokenBlock, policy: Tensor) -> PreferenceLogps:
        """The loss's input: policy and cached reference log-probs, reduced as ``preference.logp_reduction``."""
        ref = self.cache.block(split, indices, block.k) if self.spec.reference else torch.zeros_like(policy)
        lengths = block.lengths
        if self.cfg.preference.logp_reduction == "mean":
            policy, ref = policy / lengths.clamp(min=1), ref / lengths.clamp(min=1)
        return PreferenceLogps(policy=policy, reference=ref, lengths=lengths, scores=block.scores, valid=block.valid,
                               margin=block.margin)

    def reference_logps(self, block: TokenBlock) -> Tensor:
        """[B, K] summed log-probs of a block under the reference policy (built for losses that need it online)."""
        if self.reference is None:
            raise RuntimeError("reference_logps called without a reference policy")
        return self.reference.logprobs(block).sum(-1).view(-1, block.k)

    def reward_mean(self) -> float:
        c = self.running
        return c["reward_sum"] / c["reward_count"] if c["reward_count"] else 0.0

    def batch_metrics(self, lp: PreferenceLogps) -> dict[str, tuple[float, int]]:
        """TRL's metric names as (sum, count) over the examples that define them; also updates the running
        mean of the implicit rewards."""
        rewards = (self.beta * lp.ratios).detach()
        valid = lp.mask()
        self.running["reward_sum"] = self.running["reward_sum"] + float(rewards[valid].sum())
        self.running["reward_count"] = self.running["reward_count"] + int(valid.sum())
        pol = lp.policy.detach()
        if rewards.shape[1] == 1:  # unpaired: desirable vs undesirable completions
            good = lp.scores[:, 0] > 0.5
            r, q = rewards[:, 0], pol[:, 0]
            return {"rewards/chosen": _sc(r[good]), "rewards/rejected": _sc(r[~good]),
                    "logps/chosen": _sc(q[good]), "logps/rejected": _sc(q[~good]),
                    "rewards/accuracies": _sc(((r > 0) == good).float())}
        best = lp.scores.masked_fill(~valid, -math.inf).argmax(1)
        worst = lp.scores.masked_fill(~valid, math.inf).argmin(1)
        rows = torch.arange(len(best))
        rc, rr = rewards[rows, best], rewards[rows, worst]
        return {"rewards/chosen": _sc(rc), "rewards/rejected": _sc(rr), "rewards/accuracies": _sc((rc > rr).float()),
                "rewards/margins": _sc(rc - rr), "logps/chosen": _sc(pol[rows, best]),
                "logps/rejected": _sc(pol[rows, worst])}

    @torch.no_grad()
    def held_out_metrics(self) -> dict[str, float]:
        """Implicit-reward metrics of the held-out examples under the current policy (no update)."""
        n = len(self.encoded["held_out"])
        saved = dict(self.running.values)
        sums: dict[str, tuple[float, int]] = {}
        self.module.eval()
        for start in range(0, n, 64):
            ub = list(range(start, min(n, start + 64)))
            block = token_block([self.encoded["held_out"][i] for i in ub], self.pad_id)
            _add(sums, self.batch_metrics(self.logps("held_out", ub, block, block_logps(self.module, block))))
        self.running.values.update(saved)  # held-out rewards do not move BCO's shift
        return _means(sums)

    def maybe_refresh(self, index: int) -> bool:
        """DNO's iteration boundary: the reference becomes the current policy, the cache is recomputed."""
        every = self.cfg.preference.reference_update_every
        if not every or (index + 1) % every or not self.spec.reference:
            return False
        self.cache.fill(self.module, {k: v for k, v in self.encoded.items() if v}, self.pad_id, False)
        self.cache.refreshes += 1
        return True


def _sc(t: Tensor) -> tuple[float, int]:
    """(sum, count) of a tensor's entries."""
    return float(t.sum()), int(t.numel())


def _add(into: dict[str, tuple[float, int]], more: dict[str, tuple[float, int]]) -> None:
    for k, (v, c) in more.items():
        s, n = into.get(k, (0.0, 0))
        into[k] = (s + v, n + c)


def _means(sums: dict[str, tuple[float, int]]) -> dict[str, float]:
    """The mean of each metric over the examples that define it; margins of unpaired data from the two means."""
    out = {k: v / c for k, (v, c) in sums.items() if c}
    if "rewards/margins" not in out and "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


__all__ = ["EpochSampler", "PreferenceStep"]

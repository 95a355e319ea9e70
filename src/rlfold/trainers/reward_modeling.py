"""The reward-model step (``trainer: reward_modeling``): a Bradley-Terry reward model on preference pairs.

The model is ``AutoModelForSequenceClassification`` (one label) initialised from ``model.path``; its
reward for a response is the logit at the last token of ``prompt.text + completion`` (right-padded, the
tokenizer's special tokens added), exactly what ``rewards.reward_models.RewardModel`` computes, so the
run's ``final/`` directory is the ``path`` of the reward function of an online recipe.

Data: the run's preference dataset (``preference.*``; a synthetic one sampled from the ``model.path``
policy and scored by the run's rewards when ``preference.train_file`` is None). Pairs train as they are;
a ranked list gives every pair of differently scored responses (``reward_modeling.list_pairs``).

1. strength (``begin``, when ``reward_modeling.ensemble`` > 0): an ensemble of members, cross-fitted over
   ``reward_modeling.folds`` folds, scores every training pair; the mean and std of r_c - r_r over the
   members is the pair's preference strength (Secrets of RLHF II). The lowest-strength pairs are flipped
   and the adaptive margin follows the (flipped) strength. Kept in the checkpoints (a resume does not
   train the ensemble again).
2. step: ``train.prompts_per_step`` pairs (uniform epochs), the BT loss with margin, centring and label
   smoothing (``algos.reward_modeling``), micro-batches of ``train.micro_batch_size`` pairs, one clipped
   AdamW step.
3. evaluate: ``val/rm/accuracy`` (held-out pairs with r_c > r_r) and ``val/rm/margin``; with the
   ``flipped`` column of a synthetic dataset also ``val/rm/clean_accuracy`` (against the labels before
   the planted flips).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlfold.algos.reward_modeling import (adaptive_margin, bradley_terry_loss, flip_lowest, preference_strength,
                                          swap_where)
from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError, ModelLoadError
from rlfold.core.registry import TRAINERS
from rlfold.core.seeding import derive_seed
from rlfold.models import disable_dropout, load_model_and_tokenizer, resolve_model_path
from rlfold.models.placement import resolve_device
from rlfold.rewards.reward_heads import DEFAULT_HEAD, HEAD_KEY, head_of, head_of_model
from rlfold.rollout import EngineContext, build_engines
from rlfold.tasks.chat import for_tokenizer
from rlfold.tasks.preference_data import PreferenceData
from rlfold.tasks.sampling import PromptSampler
from rlfold.trainers.loop import StepResult
from rlfold.trainers.online import DTYPES, build_task
from rlfold.trainers.preference_datasets import check_lengths, context_length, preference_splits
from rlfold.trainers.preflight import check_dtype
from rlfold.trainers.schedule import make_scheduler

FLIPPED = "flipped"  # the column of a synthetic dataset marking the pairs whose labels were planted wrong


# ----- pairs ---------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """N preference pairs as texts: the reward model scores ``prompt + chosen`` against ``prompt + rejected``."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    where: list[str]
    margin: Optional[Tensor] = None          # [N] the dataset's margin column (None: no pair has one)
    planted: Optional[list[bool]] = None     # the ``flipped`` column when every pair has it (synthetic data)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int]) -> "Pairs":
        idx = list(idx)
        return Pairs([self.prompts[i] for i in idx], [self.chosen[i] for i in idx], [self.rejected[i] for i in idx],
                     [self.where[i] for i in idx], None if self.margin is None else self.margin[idx],
                     None if self.planted is None else [self.planted[i] for i in idx])

    def swapped(self, mask: Tensor) -> "Pairs":
        """These pairs with chosen and rejected exchanged where ``mask`` holds (the planted marks are kept)."""
        flip = mask.tolist()
        chosen = [r if f else c for c, r, f in zip(self.chosen, self.rejected, flip)]
        rejected = [c if f else r for c, r, f in zip(self.chosen, self.rejected, flip)]
        return replace(self, chosen=chosen, rejected=rejected)


def pairs_of(data: PreferenceData, list_pairs: str = "all") -> Pairs:
    """The pairs of a preference dataset: pairs as given; a ranked list's pairs of different scores (``all``)
    or its best vs worst (``best_worst``); unpaired data cannot train a pairwise reward model."""
    if data.kind == "unpaired":
        where = (f"preference dataset {data.source.path}" if data.source is not None else
                 data.examples[0].where if data.examples else "the dataset")
        raise DataError(f"{where}: a Bradley-Terry reward model trains on pairs or ranked lists, not unpaired "
                        "(completion, label) rows; give a pairs or lists dataset (preference.kind)")
    prompts: list[str] = []
    chosen: list[str] = []
    rejected: list[str] = []
    where: list[str] = []
    margins: list[float | None] = []
    planted: list[bool | None] = []
    for ex in data.examples:
        if data.kind == "pairs":
            combos = [(0, 1)]
        else:
            order = sorted(range(len(ex.scores)), key=lambda i: (-ex.scores[i], i))
            if list_pairs == "best_worst":
                combos = [(order[0], order[-1])]
            else:
                combos = [(i, j) for a, i in enumerate(order) for j in order[a + 1:] if ex.scores[i] > ex.scores[j]]
        for i, j in combos:
            prompts.append(ex.prompt.text)
            chosen.append(ex.responses[i])
            rejected.append(ex.responses[j])
            where.append(ex.where)
            margins.append(ex.margin)
            mark = ex.meta.get(FLIPPED)
            planted.append(bool(mark) if isinstance(mark, bool) else None)
    margin = (torch.tensor([0.0 if m is None else m for m in margins], dtype=torch.float32)
              if any(m is not None for m in margins) else None)
    marks = [bool(p) for p in planted] if planted and all(p is not None for p in planted) else None
    return Pairs(prompts, chosen, rejected, where, margin, marks)


# ----- the model and its scores --------------------------------------------------------------------


def build_reward_model(path: str, tokenizer: Any, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None, seed: int = 0,
                       head: str = DEFAULT_HEAD) -> torch.nn.Module:
    """A sequence classifier initialised from ``path`` with the outputs of reward head ``head`` (its score layer
    seeded by ``seed``), padding with the tokenizer's pad token; the head's name is kept in its config."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    labels = head_of(head).num_labels
    resolved = resolve_model_path(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report of the new score head is expected, not a warning
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                resolved, num_labels=labels, pad_token_id=tokenizer.pad_token_id, dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelLoadError(f"could not load {resolved} as a sequence-classification reward model: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, HEAD_KEY, head)  # saved in config.json: the reward_model reward scores with this head
    return model if device is None else model.to(device)


def rewards_of(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
               device: Any = None) -> Tensor:
    """[N] rewards of ``prompts[i] + completions[i]`` by the model's own head (``rewards.reward_heads``)."""
    return head_of(head_of_model(model)).scores(model, tokenizer, prompts, completions, device)


def pair_rewards(model: torch.nn.Module, tokenizer: Any, pairs: Pairs, device: Any = None) -> tuple[Tensor, Tensor]:
    """[N] rewards of the chosen and of the rejected responses, in one forward."""
    n = len(pairs)
    r = rewards_of(model, tokenizer, pairs.prompts + pairs.prompts, pairs.chosen + pairs.rejected, device)
    return r[:n], r[n:]


def score_pairs(model: torch.nn.Module, tokenizer: Any, pairs: Pairs, device: Any = None,
                batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """[N] rewards of chosen and rejected on CPU, eval mode, no gradients, ``batch_size`` pairs at a time."""
    was_training = model.training
    model.eval()
    out_c, out_r = [], []
    try:
        with torch.no_grad():
            for i in range(0, len(pairs), batch_size):
                c, r = pair_rewards(model, tokenizer, pairs.subset(range(i, min(i + batch_size, len(pairs)))), device)
                out_c.append(c.cpu())
                out_r.append(r.cpu())
    finally:
        model.train(was_training)
    if not out_c:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(out_c), torch.cat(out_r)


def pair_metrics(r_chosen: Tensor, r_rejected: Tensor, prefix: str) -> dict[str, float]:
    """Accuracy (r_c > r_r), margin, and the reward statistics of a set of pairs."""
    both = torch.cat([r_chosen, r_rejected])
    return {f"{prefix}accuracy": float((r_chosen > r_rejected).float().mean()),
            f"{prefix}margin": float((r_chosen - r_rejected).mean()),
            f"{prefix}reward_chosen": float(r_chosen.mean()), f"{prefix}reward_rejected": float(r_rejected.mean()),
            f"{prefix}reward_mean": float(both.mean()),
            f"{prefix}reward_std": float(both.std()) if both.numel() > 1 else 0.0}


# ----- the objective and one optimiser step --------------------------------------------------------


@dataclass
class Objective:
    """The BT loss options: centring, label smoothing, and whether the pair margins are subtracted."""

    center_coef: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class Optim:
    """How a reward model is optimised: pairs per step, micro-batch, AdamW settings, schedule, clipping."""

    batch: int
    micro_batch: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0

    @classmethod
    def of(cls, cfg: RunConfig) -> "Optim":
        t = cfg.train
        return cls(batch=t.prompts_per_step, micro_batch=t.micro_batch_size, lr=t.lr, betas=tuple(t.betas),
                   weight_decay=t.weight_decay, grad_clip=t.grad_clip, warmup_steps=t.warmup_steps,
                   schedule=t.schedule, min_lr_ratio=t.min_lr_ratio)

    def optimizer(self, model: torch.nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.lr, betas=self.betas,
                                weight_decay=self.weight_decay)
        return opt, make_scheduler(opt, steps, self.warmup_steps, self.schedule, self.min_lr_ratio)


def bt_update(model: torch.nn.Module, tokenizer: Any, pairs: Pairs, margin: Optional[Tensor], obj: Objective,
              opt: torch.optim.Optimizer, scheduler: Any, o: Optim,
              device: Any = None) -> tuple[dict[str, float], bool]:
    """One optimiser step of the BT loss on ``pairs`` (mean over all of them, accumulated over micro-batches).

    A non-finite loss or gradient norm skips the update (returns finite=False) and leaves the weights as they were.
    """
    n = len(pairs)
    mb = o.micro_batch or n
    opt.zero_grad(set_to_none=True)
    loss_sum, rc_all, rr_all = 0.0, [], []
    for i in range(0, n, mb):
        idx = list(range(i, min(i + mb, n)))
        rc, rr = pair_rewards(model, tokenizer, pairs.subset(idx), device)
        m = None if margin is None else margin[idx].to(rc.device)
        loss = bradley_terry_loss(rc, rr, margin=m, center_coef=obj.center_coef,
                                  label_smoothing=obj.label_smoothing) * (len(idx) / n)
        loss.backward()
        loss_sum += float(loss.detach())
        rc_all.append(rc.detach().cpu())
        rr_all.append(rr.detach().cpu())
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf")))
    finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
    lr = opt.param_groups[0]["lr"]
    if finite:
        opt.step()
        scheduler.step()
    opt.zero_grad(set_to_none=True)
    rc_t, rr_t = torch.cat(rc_all), torch.cat(rr_all)
    metrics = {"rm/loss": loss_sum, "rm/grad_norm": grad_norm, "rm/lr": lr,
               **pair_metrics(rc_t, rr_t, "rm/")}
    return metrics, finite


def train_member(make_model: Callable[[int], torch.nn.Module], tokenizer: Any, pairs: Pairs, *, steps: int, o: Optim,
                 obj: Objective, seed: int, device: Any = None, margin: Optional[Tensor] = None,
                 bar: Any = None) -> torch.nn.Module:
    """A reward model trained ``steps`` steps on ``pairs`` from ``make_model(seed)``, drawing pairs in seeded epochs."""
    model = make_model(seed)
    model.train()
    opt, sched = o.optimizer(model, steps)
    sampler = PromptSampler(list(range(len(pairs))), seed=seed % 2**31)
    for _ in range(steps):
        idx = sampler.next(min(o.batch, len(pairs)))
        bt_update(model, tokenizer, pairs.subset(idx), None if margin is None else margin[idx], obj, opt, sched, o,
                  device)
        if bar is not None:
            bar.update(1)
    return model


@dataclass
class Strength:
    """The ensemble preference strength of N pairs: per-member diffs [M, N], their mean and std."""

    diffs: Tensor
    mean: Tensor = field(init=False)
    std: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.mean, self.std = preference_strength(self.diffs)


def fold_ids(prompts: Sequence[str], folds: int, seed: int) -> list[int]:
    """A seeded fold (0..folds-1) for each pair, every pair of one prompt in the same fold."""
    uniq = sorted(set(prompts))
    g = torch.Generator().manual_seed(derive_seed(seed, "reward_model_folds"))
    order = torch.randperm(len(uniq), generator=g).tolist()
    fold_of = {uniq[j]: rank % folds for rank, j in enumerate(order)}
    return [fold_of[p] for p in prompts]


def cross_fit_strength(make_model: Callable[[int], torch.nn.Module], tokenizer: Any, pairs: Pairs, *, members: int,
                       folds: int, steps: int, o: Optim, obj: Objective, seed: int, device: Any = None,
                       progress: bool = False, desc: str = "reward-model ensemble") -> Strength:
    """The preference strength of every pair from ``members`` reward models per fold, each trained on the other
    folds' pairs (``folds`` = 1: on all pairs, in-sample as Secrets of RLHF II) and scoring its own fold."""
    if members < 1:
        raise ConfigError(f"the preference strength needs at least 1 ensemble member, got {members}")
    n = len(pairs)
    fold = fold_ids(pairs.prompts, folds, seed) if folds > 1 else [0] * n
    used = sorted(set(fold))
    if folds > 1 and len(used) < folds:
        raise DataError(f"cross-fitting over {folds} folds needs at least {folds} distinct prompts, the pairs have "
                        f"{len(set(pairs.prompts))}; lower the folds")
    diffs = torch.zeros(members, n)
    total = len(used) * members * steps
    with tqdm(total=total, desc=desc, disable=not progress, unit="step") as bar:
        for f in used:
            scored = [i for i in range(n) if fold[i] == f]
            trained = [i for i in range(n) if fold[i] != f] if folds > 1 else scored
            for m in range(members):
                model = train_member(make_model, tokenizer, pairs.subset(trained), steps=steps, o=o, obj=obj,
                                     seed=derive_seed(seed, "reward_model_member", f, m), device=device, bar=bar)
                rc, rr = score_pairs(model, tokenizer, pairs.subset(scored), device)
                diffs[m, scored] = rc - rr
                del model
    return Strength(diffs)


# ----- the step ------------------------------------------------------------------------------------


class StrengthState:
    """The training pairs' strength, flips and margins found in ``begin``: checkpointed, so a resume reuses them."""

    def __init__(self) -> None:
        self.ready = False
        self.flip: Optional[Tensor] = None       # [N] bool: pairs whose labels the strength flipped
        self.margin: Optional[Tensor] = None     # [N] margin subtracted from r_c - r_r (None: none)
        self.mean: Optional[Tensor] = None       # [N] strength in the training orientation (after the flips)
        self.std: Optional[Tensor] = None

    def state_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "flip": self.flip, "margin": self.margin, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ready, self.flip, self.margin = bool(state["ready"]), state["flip"], state["margin"]
        self.mean, self.std = state["mean"], state["std"]


def flips_of(strength: Tensor, fraction: float, below: float | None) -> Tensor:
    """[N] bool: the ``fraction`` lowest-strength pairs, and every pair of strength below ``below``."""
    mask = flip_lowest(strength, fraction)
    if below is not None:
        mask = mask | (strength < below)
    return mask


@TRAINERS.register("reward_modeling")
class RewardModelingStep:
    """Bradley-Terry reward model: margin, centring, label smoothing; ensemble strength, flips, adaptive margin."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, rc, p = cfg, cfg.reward_modeling, cfg.preference
        check_dtype(cfg)
        if cfg.train.strategy != "single":
            raise ConfigError(f"train.strategy={cfg.train.strategy}: the reward-model trainer runs in one process; "
                              "set train.strategy=single")
        if cfg.model.lora is not None:
            raise ConfigError("model.lora: the reward-model trainer fine-tunes the whole classifier (LoRA is not "
                              "wired for it yet); unset model.lora")
        self.device = resolve_device(cfg.model.device)
        dtype = DTYPES[cfg.model.dtype]
        task = build_task(cfg.task, cfg.seed)
        policy, self.tokenizer = load_model_and_tokenizer(cfg.model.path, dtype, device=self.device)
        task = for_tokenizer(task, self.tokenizer, cfg.task.system_prompt, cfg.task.chat_template, cfg.model.path)
        engine = None
        if p.train_file is None:  # the synthetic pairs are sampled from the model.path policy
            engine, _ = build_engines(cfg.rollout, EngineContext(model=policy, tokenizer=self.tokenizer,
                                                                 model_path=cfg.model.path, dtype=dtype), cfg.ray)
        with torch.no_grad():
            splits = preference_splits(cfg, task, engine, None if p.kind == "auto" else p.kind)
        max_len = context_length(policy, p.max_length)
        del engine, policy
        self.sources = splits.sources
        train = check_lengths(splits.train, self.tokenizer, max_len, p.bad_rows)
        self.skipped = dict(train.skipped)
        self.train_pairs = pairs_of(train, rc.list_pairs)
        self.held_pairs = (pairs_of(check_lengths(splits.held_out, self.tokenizer, max_len, p.bad_rows), rc.list_pairs)
                           if splits.held_out.examples else None)
        self.dtype = dtype
        self.model = self.make_model(derive_seed(cfg.seed, "reward_model_init"))
        if cfg.model.disable_dropout:
            disable_dropout(self.model)
        self.model.train()
        self.optim = Optim.of(cfg)
        self.obj = Objective(rc.center_coef, rc.label_smoothing)
        self.optimizer, self.scheduler = self.optim.optimizer(self.model, cfg.train.steps)
        self.sampler = PromptSampler(list(range(len(self.train_pairs))), seed=cfg.seed)
        self.strength = StrengthState()
        self._flipped: Optional[Pairs] = None

    def make_model(self, seed: int) -> torch.nn.Module:
        model = build_reward_model(self.cfg.model.path, self.tokenizer, self.dtype, self.device, seed,
                                   head=self.cfg.reward_modeling.head)
        if self.cfg.model.disable_dropout:
            disable_dropout(model)
        return model

    # ----- what the loop needs --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler,
                "strength": self.strength}

    def data_sources(self) -> list[dict[str, Any]]:
        return list(self.sources)

    def begin(self) -> dict[str, float]:
        metrics = {"data/train_pairs": float(len(self.train_pairs)),
                   "data/held_out_pairs": float(len(self.held_pairs) if self.held_pairs is not None else 0),
                   "data/skipped_rows": float(sum(self.skipped.values()))}
        if not self.strength.ready:
            metrics.update(self.measure_strength())
        return {**metrics, **self.evaluate()}

    def measure_strength(self) -> dict[str, float]:
        """Stage 1: the ensemble's preference strength, the flips and the margins of the training pairs."""
        rc, cfg = self.cfg.reward_modeling, self.cfg
        margin = (self.train_pairs.margin if rc.use_margin and self.train_pairs.margin is not None else None)
        metrics: dict[str, float] = {}
        if rc.ensemble > 0:
            t0 = time.perf_counter()
            s = cross_fit_strength(self.make_model, self.tokenizer, self.train_pairs, members=rc.ensemble,
                                   folds=rc.folds, steps=rc.member_steps or cfg.train.steps, o=self.optim,
                                   obj=self.obj, seed=cfg.seed, device=self.device, progress=cfg.log.progress)
            flip = flips_of(s.mean, rc.flip_fraction, rc.flip_below)
            mean = torch.where(flip, -s.mean, s.mean)
            self.strength.flip, self.strength.mean, self.strength.std = flip, mean, s.std
            if margin is not None:  # a flipped pair's annotated margin measured the label now thought wrong
                margin = torch.where(flip, torch.zeros_like(margin), margin)
            if rc.adaptive_margin > 0:
                adaptive = adaptive_margin(mean, scale=rc.adaptive_margin)
                margin = adaptive if margin is None else margin + adaptive
            metrics.update({"strength/mean": float(s.mean.mean()), "strength/std": float(s.std.mean()),
                            "strength/negative_frac": float((s.mean < 0).float().mean()),
                            "strength/flipped": float(flip.sum()), "timing_s/strength": time.perf_counter() - t0})
            planted = self.train_pairs.planted
            if planted is not None and any(planted):
                truth = torch.tensor(planted)
                metrics["strength/flip_recall"] = float((flip & truth).sum() / truth.sum())
                clean = max(1, int((~truth).sum()))
                metrics["strength/flip_false_positive_rate"] = float((flip & ~truth).sum() / clean)
        self.strength.margin = margin
        self.strength.ready = True
        return metrics

    def evaluate(self) -> dict[str, float]:
        if self.held_pairs is None or not len(self.held_pairs):
            return {}
        rc, rr = score_pairs(self.model, self.tokenizer, self.held_pairs, self.device)
        metrics = pair_metrics(rc, rr, "val/rm/")
        planted = self.held_pairs.planted
        if planted is not None:
            truth = torch.tensor(planted)
            c, r = swap_where(truth, rc, rr)
            metrics["val/rm/clean_accuracy"] = float((c > r).float().mean())
        return metrics

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{m['rm/loss']:.3f}", "acc": f"{m['rm/accuracy']:.3f}"}

    def close(self) -> None:
        """Nothing runs in the background."""

    # ----- the step ---------------------------------------------------------------------
    def step(self, index: int) -> StepResult:
        t0 = time.perf_counter()
        if not self.strength.ready:  # a loop that skipped begin (a resume from a checkpoint without strength)
            self.measure_strength()
        pairs = self.training_pairs()
        idx = self.sampler.next(min(self.optim.batch, len(pairs)))
        margin = None if self.strength.margin is None else self.strength.margin[idx]
        metrics, finite = bt_update(self.model, self.tokenizer, pairs.subset(idx), margin, self.obj, self.optimizer,
                                    self.scheduler, self.optim, self.device)
        metrics["timing_s/step"] = time.perf_counter() - t0
        samples = [{"prompt": pairs.prompts[i], "chosen": pairs.chosen[i], "rejected": pairs.rejected[i]}
                   for i in idx[:2]] if index == 0 else []
        return StepResult(metrics, finite, samples)

    def training_pairs(self) -> Pairs:
        """The training pairs with the strength's flips applied."""
        if self.strength.flip is None or not bool(self.strength.flip.any()):
            return self.train_pairs
        if self._flipped is None:
            self._flipped = self.train_pairs.swapped(self.strength.flip)
        return self._flipped


__all__ = ["Objective", "Optim", "Pairs", "RewardModelingStep", "Strength", "build_reward_model",
           "cross_fit_strength", "flips_of", "pair_metrics", "pair_rewards", "pairs_of", "rewards_of",
           "score_pairs", "train_member"]

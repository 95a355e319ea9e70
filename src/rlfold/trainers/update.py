"""The update stage: epochs x mini-batches x micro-batches over a prepared batch, normalisers fixed per
optimiser step.

The loss of a micro-batch is a sum of *terms* (policy loss, KL, sequence-level regularisers, entropy
bonus, value loss of a shared critic), each aggregated with the normaliser fixed for the whole
mini-batch, so gradient accumulation never changes the gradient. Terms that need their own forward
over different data (the SFT loss on demonstrations) run once per mini-batch.

The normaliser is a tensor that goes through ``reduce`` before use: the identity in one process;
under data parallelism, where each rank holds a shard of the mini-batch, an all-reduce SUM of the
counts (an aggregation whose normaliser is a constant is never reduced; a regulariser's mini-batch
statistic goes through the same ``reduce``). Everything else this stage computes is local to the
rows it holds; statistics over the whole batch (advantages, selection) were computed by the driver
stage before the batch was prepared.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from transformers import PreTrainedModel

from rlfold.algos.aggregation import Aggregation
from rlfold.algos.disco import GROUP_OBJECTIVE_AGGREGATION
from rlfold.core.errors import ConfigError
from rlfold.core.masked import masked_sum
from rlfold.core.registry import needed_inputs
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.models.logprobs import model_device, sequence_logprobs
from rlfold.models.placement import Autocast, compute_dtype, threads_for
from rlfold.trainers.packing import token_buckets, trim_prompt
from rlfold.trainers.distributed import SINGLE, Parallel, as_float


@dataclass
class UpdateStats:
    metrics: dict[str, float] = field(default_factory=dict)
    finite: bool = True


@dataclass
class PreparedBatch:
    """Everything an update needs, fixed before its first optimiser step (rows already selected)."""

    roll: RolloutBatch
    advantages: Tensor                    # [N, R]
    old_logprobs: Tensor | None           # [N, R] log-probs of the policy the update starts from (None: one
                                          # optimiser step on fresh rows; the update's own forward, detached)
    loss_mask: Tensor                     # [N, R] float: response mask x selection masks
    prompts: list[Prompt]                 # [N] the prompt of each row
    token_weights: Tensor | None = None   # [N, R] detached per-token weights (importance correction)
    ref_logprobs: Tensor | None = None    # [N, R] reference log-probs (KL in the loss)
    old_values: Tensor | None = None      # [N, R] critic values before the update (shared critic)
    returns: Tensor | None = None         # [N, R] critic targets (shared critic)
    rows: Tensor | None = None            # [N] index of each prepared row in the collected batch
    rewards: Tensor | None = None         # [N] sequence rewards (the advantage's), for group objectives
    group_ids: Tensor | None = None       # [N] prompt group of each row, for group objectives

    @property
    def size(self) -> int:
        return self.roll.size


@dataclass
class MicroBatch:
    """One micro-batch after its policy forward, handed to every loss term."""

    rows: Tensor
    roll: RolloutBatch          # the rows, response columns trimmed to the longest response
    mask: Tensor                # [n, r] float loss mask
    norm: Tensor                # aggregation normaliser of the whole mini-batch (0-d, after the reduction)
    logprobs: Tensor            # [n, r] with gradient
    entropy: Tensor             # [n, r] (with gradient only when an EntropyTerm is among the terms)
    columns: int                # number of response columns kept
    total_tokens: float         # loss tokens of the whole mini-batch (for token-weighted metric means)
    batch_rows: Tensor | None = None                  # rows of the whole mini-batch held here (None: ``rows``)
    reduce: Callable[[Tensor], Tensor] | None = None  # the mini-batch's reduction (None: one process)

    def take(self, t: Tensor | None) -> Tensor | None:
        """Rows of a full-batch ``[N, R]`` tensor for this micro-batch, trimmed like the responses."""
        return None if t is None else t[self.rows][:, : self.columns].to(self.logprobs.device)


class LossTerm(Protocol):
    """A loss term of a micro-batch: ``term(prep, mb, aggregation) -> (loss, metrics)``."""

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]: ...


Reduce = Callable[[Tensor], Tensor]


def local_reduce(t: Tensor) -> Tensor:
    """The reduction of a single process: the counts are already global."""
    return t


def mini_batch_normaliser(aggregation: Aggregation, mask: Tensor, max_len: int | None,
                          reduce: Reduce = local_reduce) -> Tensor:
    """The aggregation normaliser of one optimiser mini-batch as a float32 0-d tensor, reduced across
    data-parallel ranks when it counts rows or tokens (``aggregation.additive``)."""
    norm = torch.tensor(aggregation.normaliser(mask, max_len), dtype=torch.float32)
    return reduce(norm) if aggregation.additive else norm


# What a policy-loss part may declare with ``@needs`` besides its positional tensors, supplied for each
# call by ``PolicyTerm``: the call's rows (``rewards``, ``group_ids``: [n]), statistics of the optimiser
# mini-batch (``batch_groups``: its prompt groups, ``batch_tokens``: its loss tokens; 0-d, summed over
# ranks) and the generation limit ``max_response_length``. A part needing ``group_ids`` is a *group
# objective* (DisCO, DRPO: ``algos.disco``): each call must hold whole groups of its mini-batch.
POLICY_INPUTS = ("rewards", "group_ids", "batch_groups", "batch_tokens", "max_response_length", "behaviour_logprobs")


def is_group_objective(fn: Callable) -> bool:
    """Whether policy-loss part ``fn`` compares the rows of a group with each other (needs ``group_ids``)."""
    return "group_ids" in needed_inputs(fn)


def group_objective_problem(fn: Callable, name: str, *, loss_agg: str, n: int, mini_batch_size: int,
                            micro_batch_size: int, micro_batch_tokens: int, strategy: str) -> str | None:
    """Why the update cannot give policy loss ``name`` whole groups (None if it can, or if it needs none).

    Rows of a group are consecutive (``rollout.n`` per prompt), so mini- and micro-batches of a multiple of
    n rows hold whole groups (unless a selection part drops rows: ``PolicyTerm`` checks each call);
    length-bucketed micro-batches and data-parallel shards do not keep them together."""
    unknown = [k for k in needed_inputs(fn) if k not in POLICY_INPUTS]
    if unknown:
        return (f"algo.policy_loss={name} needs {', '.join(unknown)}, which the update does not supply "
                f"(it supplies {', '.join(POLICY_INPUTS)})")
    if not is_group_objective(fn):
        return None
    where = f"algo.policy_loss={name} compares the responses of each prompt, so every forward must hold whole groups"
    for key, value in (("train.mini_batch_size", mini_batch_size), ("train.micro_batch_size", micro_batch_size)):
        if value and value % n:
            return (f"{where}: {key}={value} is not a multiple of rollout.n={n}; set it to a multiple of {n} "
                    "(or 0: the whole batch)")
    if micro_batch_tokens:
        return (f"{where}: train.micro_batch_tokens={micro_batch_tokens} sorts rows by length across groups; "
                "set train.micro_batch_tokens=0 and size forwards with train.micro_batch_size")
    if strategy != "single":
        return f"{where}: train.strategy={strategy} shards rows across processes regardless of groups; use single"
    if loss_agg != GROUP_OBJECTIVE_AGGREGATION:
        return (f"{where} and writes each forward's loss on its tokens: set algo.loss_agg="
                f"{GROUP_OBJECTIVE_AGGREGATION} (got {loss_agg})")
    return None


@dataclass
class PolicyTerm:
    """The policy-loss part per token, times importance weights, aggregated.

    The part gets the inputs it declares with ``@needs`` from ``POLICY_INPUTS``; a group objective's call
    is checked to hold whole groups and refuses token weights."""

    fn: Callable
    kwargs: dict[str, Any]
    max_response_length: int | None = None

    def _inputs(self, prep: PreparedBatch, mb: MicroBatch) -> dict[str, Any]:
        names = needed_inputs(self.fn)
        if not names:
            return {}
        dev = mb.logprobs.device
        batch = mb.rows if mb.batch_rows is None else mb.batch_rows
        out: dict[str, Any] = {}
        for name in names:
            if name in ("rewards", "group_ids", "batch_groups"):
                source = prep.rewards if name == "rewards" else prep.group_ids
                if source is None:
                    raise RuntimeError(f"the policy loss needs {name!r} but the prepared batch has none")
            if name in ("rewards", "group_ids"):
                out[name] = source[mb.rows].to(dev)
            elif name == "batch_groups":
                count = torch.tensor(float(torch.unique(prep.group_ids[batch]).numel()), dtype=torch.float32)
                out[name] = (mb.reduce or local_reduce)(count).to(dev)
            elif name == "batch_tokens":
                out[name] = torch.tensor(float(mb.total_tokens), dtype=torch.float32, device=dev)
            elif name == "behaviour_logprobs":  # the engine's log-probs of the policy that sampled the row
                if prep.roll.sample_logprobs is None:
                    raise RuntimeError("the policy loss needs the engine's behaviour log-probs, but the batch has none")
                out[name] = mb.take(prep.roll.sample_logprobs)
            elif name == "max_response_length":
                if self.max_response_length is None:
                    raise RuntimeError("the policy loss needs 'max_response_length' but the update was given none")
                out[name] = self.max_response_length
            else:
                raise RuntimeError(f"the policy loss needs {name!r}; the update supplies {', '.join(POLICY_INPUTS)}")
        if "group_ids" in names:
            self._check_whole_groups(prep, mb, batch)
        return out

    @staticmethod
    def _check_whole_groups(prep: PreparedBatch, mb: MicroBatch, batch: Tensor) -> None:
        if prep.token_weights is not None:
            raise ConfigError("a group objective (a policy loss comparing the responses of a prompt) takes no per-token "
                              "weights, but a selection part set token_weights; drop that selection part")
        if mb.rows.numel() == batch.numel():
            return
        outside = batch[~torch.isin(batch, mb.rows)]
        split = torch.isin(prep.group_ids[outside], torch.unique(prep.group_ids[mb.rows]))
        if bool(split.any()):
            raise ConfigError("a group objective (a policy loss comparing the responses of a prompt) got a forward "
                              "that splits a prompt group across micro-batches (a selection part dropped rows, so train.micro_batch_size "
                              "no longer falls on group boundaries); set train.micro_batch_size=0")

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
        old = mb.logprobs.detach() if prep.old_logprobs is None else mb.take(prep.old_logprobs)
        pg, pm = self.fn(mb.logprobs, old, mb.take(prep.advantages), mb.mask, **self.kwargs,
                         **self._inputs(prep, mb))
        weights = mb.take(prep.token_weights)
        if weights is not None:
            pg = pg * weights
        loss = agg.reduce(pg, mb.mask, mb.norm)
        metrics = {"actor/pg_loss": float(loss.detach())}
        share = _token_share(mb)
        metrics.update({f"actor/{k}": float(v) * share for k, v in pm.items()})
        return loss, metrics


@dataclass
class KLTerm:
    """KL to the reference policy as a loss term (GRPO): coef x aggregated estimator."""

    estimator: Callable
    coef: float

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
        kl = self.estimator(mb.logprobs, mb.take(prep.ref_logprobs))
        loss = self.coef * agg.reduce(kl, mb.mask, mb.norm)
        return loss, {"actor/kl": _token_mean_share(kl, mb)}


@dataclass
class RegularizerTerm:
    """A sequence-level regulariser part coef · g(mean_i φ_i) (``algos.regularizers``), linearised per mini-batch.

    g'(·) is evaluated once per optimiser mini-batch at the policy the update starts from (φ⁰ from
    ``prep.old_logprobs``, mean over the mini-batch's rows that have a loss token, summed across
    ranks with ``mb.reduce``); each micro-batch adds coef · g'(mean φ⁰) · Σ_i φ_i / B. The gradient is
    thus exactly micro-batch invariant, and equals ∇ coef · g(mean φ) at the starting policy (the first
    optimiser step of each update; later mini-batches keep the starting slope). The mini-batch statistic
    (and, under data parallelism, its reduction) is computed at the mini-batch's first micro-batch and
    kept for the others.
    """

    part: Any
    coef: float
    # (prep, mini-batch rows, row count, mean phi0, slope) of the mini-batch being accumulated; the
    # references to prep and the rows tensor make the identity test safe
    _start: tuple[Any, Tensor, Tensor, Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    def _inputs(self, prep: PreparedBatch, take: Callable[[Tensor | None], Tensor | None]) -> dict[str, Tensor]:
        if prep.old_logprobs is None:
            raise RuntimeError("a sequence-level regulariser needs the old log-probs, but the batch was prepared "
                               "without them (OnlineTrainer.old_in_update must be off with regularisers)")
        available = {"ref_logprobs": prep.ref_logprobs, "old_logprobs": prep.old_logprobs}
        return {k: take(available[k]) for k in needed_inputs(self.part)}

    def _at_start(self, prep: PreparedBatch, batch: Tensor, reduce: Reduce,
                  dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Row count, mean phi0 and slope g'(mean phi0) of the mini-batch ``batch`` at the starting policy."""
        if self._start is not None and self._start[0] is prep and self._start[1] is batch:
            return self._start[2], self._start[3], self._start[4]
        with torch.no_grad():
            mask0 = prep.loss_mask[batch].float().to(dev)
            live0 = (mask0.sum(-1) > 0).float()
            phi0 = self.part.sample_terms(prep.old_logprobs[batch].to(dev), mask0,
                                          **self._inputs(prep, lambda t: t[batch].to(dev)))
            totals = reduce(torch.stack([(phi0 * live0).sum(), live0.sum()]).float())
            count = totals[1].clamp(min=1.0)
            mean0 = totals[0] / count
            slope = self.part.slope(mean0)
        self._start = (prep, batch, count, mean0, slope)
        return count, mean0, slope

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
        batch = mb.rows if mb.batch_rows is None else mb.batch_rows
        count, mean0, slope = self._at_start(prep, batch, mb.reduce or local_reduce, mb.logprobs.device)
        live = (mb.mask.sum(-1) > 0).to(mb.logprobs.dtype)
        inputs = self._inputs(prep, mb.take)
        phi = self.part.sample_terms(mb.logprobs, mb.mask, **inputs)
        loss = self.coef * slope.to(phi.dtype) * (phi * live).sum() / count
        share = float(live.sum()) / float(count)
        metrics = {f"actor/{k}": float((v * live).sum()) / float(count)
                   for k, v in self.part.sample_metrics(mb.logprobs, mb.mask, **inputs).items()}
        metrics[f"actor/{self.part.metric}_penalty"] = self.coef * float(self.part.penalty(mean0)) * share
        return loss, metrics


@dataclass
class EntropyTerm:
    """Entropy bonus: loss -= coef x aggregated token entropy (verl ``entropy_coeff``)."""

    coef: float

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
        loss = -self.coef * agg.reduce(mb.entropy, mb.mask, mb.norm)
        return loss, {"actor/entropy_loss": float(loss.detach())}


def _token_share(mb: MicroBatch) -> float:
    return float(mb.mask.sum()) / max(mb.total_tokens, 1.0)


def _token_mean_share(x: Tensor, mb: MicroBatch) -> float:
    """This micro-batch's contribution to the token mean of ``x`` over the mini-batch."""
    return float(masked_sum(x.detach(), mb.mask)) / max(mb.total_tokens, 1.0)


def _used_width(attention: Tensor) -> int:
    """Response columns up to the last attended token of any row (at least 1): the rest is padding."""
    if attention.numel() == 0:
        return 1
    cols = attention.bool().any(dim=0).nonzero()
    return max(int(cols.max().item()) + 1 if cols.numel() else 1, 1)


def chunks(n: int, size: int) -> list[torch.Tensor]:
    """Consecutive index ranges of ``size`` rows covering ``range(n)`` (``size`` 0: one range)."""
    size = size or n
    return [torch.arange(s, min(s + size, n)) for s in range(0, n, size)]


def accumulate_loss(
    model: PreTrainedModel,
    prep: PreparedBatch,
    idx: torch.Tensor,
    micro_batch_size: int,
    terms: list[LossTerm],
    aggregation: Aggregation,
    max_len: int | None = None,
    reduce: Reduce = local_reduce,
    micro_count: int | None = None,
    micro_batch_tokens: int = 0,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[dict[str, float], bool]:
    """Forward/backward over the micro-batches of mini-batch ``idx``; gradients accumulate in ``model``.

    The aggregation normaliser is computed once from the loss mask of the whole mini-batch, so the
    summed micro-batch gradients equal the full-batch gradient for any ``micro_batch_size``. With
    ``micro_count`` (data parallelism: every rank makes the same collective forwards and backwards)
    the micro-batches are padded to that many with zero-mask ones, and a non-finite loss is still
    back-propagated (the update then skips the step on every rank). ``micro_batch_tokens`` buckets the
    rows by length (``trainers.packing``); ``autocast`` is the forward's precision context.
    """
    mask_all = prep.loss_mask[idx].float()
    norm = mini_batch_normaliser(aggregation, mask_all, max_len, reduce)
    n_tok = max(float(reduce(mask_all.sum())), 1.0)
    sums: dict[str, float] = defaultdict(float)
    pieces = ((token_buckets(prep.roll, idx, micro_batch_tokens, micro_batch_size) if micro_batch_tokens
               else chunks(len(idx), micro_batch_size)) if len(idx) else [])
    if micro_count is not None:
        pieces += [torch.zeros(0, dtype=torch.long)] * (micro_count - len(pieces))
    finite = True
    entropy_grad = any(isinstance(term, EntropyTerm) for term in terms)  # else the entropy is only a metric
    n_params = sum(p.numel() for p in model.parameters())
    device = model_device(model)
    with autocast():
        cdtype = compute_dtype(model)  # what the products run in: picks the thread count for small work
    for local in pieces:
        pad = local.numel() == 0  # a zero-mask forward on row 0, so every rank makes the same collectives
        rows = torch.zeros(1, dtype=torch.long) if pad else idx[local]
        sub = trim_prompt(prep.roll.select(rows)) if micro_batch_tokens else prep.roll.select(rows)
        width = _used_width(sub.attention)
        sub.response_ids, sub.response_mask = sub.response_ids[:, :width], sub.response_mask[:, :width]
        if sub.response_attention_mask is not None:
            sub.response_attention_mask = sub.response_attention_mask[:, :width]
        work = sub.prompt_ids.shape[0] * (sub.prompt_ids.shape[1] + width) * n_params
        with threads_for(work, device, dtype=cdtype), autocast():
            logp, ent = sequence_logprobs(model, sub.prompt_ids, sub.prompt_mask, sub.response_ids,
                                          sub.response_mask, with_entropy=True, entropy_grad=entropy_grad,
                                          response_attention_mask=sub.response_attention_mask)
            mask = (prep.loss_mask[rows][:, :width].float() * (0.0 if pad else 1.0)).to(logp.device)
            mb = MicroBatch(rows=rows, roll=sub, mask=mask, norm=norm.to(logp.device), logprobs=logp, entropy=ent,
                            columns=width, total_tokens=n_tok, batch_rows=idx, reduce=reduce)
            loss = logp.new_zeros(())
            for term in terms:
                part, metrics = term(prep, mb, aggregation)
                loss = loss + part
                for k, v in metrics.items():
                    sums[k] += v
        if not torch.isfinite(loss):
            if micro_count is None:
                return dict(sums), False
            finite = False
        with threads_for(work, device, dtype=cdtype):
            loss.backward()
        sums["actor/entropy"] += float(masked_sum(ent.detach(), mask)) / n_tok
    return dict(sums), finite


MiniBatchTerm = Callable[[PreparedBatch, torch.Tensor], tuple[Tensor | None, dict[str, float]]]


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    prep: PreparedBatch,
    *,
    terms: list[LossTerm],
    aggregation: Aggregation,
    ppo_epochs: int,
    mini_batch_size: int,
    micro_batch_size: int,
    grad_clip: float,
    max_len: int | None = None,
    minibatch_terms: tuple[MiniBatchTerm, ...] = (),
    params: list[torch.nn.Parameter] | None = None,
    reduce: Reduce = local_reduce,
    parallel: Parallel = SINGLE,
    micro_batch_tokens: int = 0,
    autocast: Autocast = contextlib.nullcontext,
) -> UpdateStats:
    """``ppo_epochs`` passes over the batch in mini-batches, one optimiser step each.

    ``minibatch_terms`` run (forward and backward) once per mini-batch on their own data. A
    non-finite loss or gradient norm skips the optimiser step (gradients are discarded) and marks
    the update non-finite. Under data parallelism (``parallel``) each rank trains its share of every
    mini-batch, the normalisers and metrics are summed over ranks and ``model`` is the DDP / FSDP2
    module that all-reduces the gradients.
    """
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    model.train()
    totals: dict[str, list[float]] = defaultdict(list)
    finite = True
    for _ in range(ppo_epochs):
        for idx in chunks(prep.size, mini_batch_size):
            optimizer.zero_grad(set_to_none=True)
            if parallel.active:
                sums, ok = accumulate_loss(model, prep, parallel.shard(idx), micro_batch_size, terms, aggregation,
                                           max_len, parallel.reduce_sum, parallel.micro_count(len(idx),
                                                                                              micro_batch_size),
                                           autocast=autocast)
                ok = parallel.all_true(ok)
                parallel.finish_grads(params)
                sums = parallel.sum_metrics(dict(sums))
            else:
                sums, ok = accumulate_loss(model, prep, idx, micro_batch_size, terms, aggregation, max_len, reduce,
                                           micro_batch_tokens=micro_batch_tokens, autocast=autocast)
            for term in minibatch_terms:
                if not ok:
                    break
                with autocast():
                    loss, metrics = term(prep, idx)
                if loss is not None:
                    ok = bool(torch.isfinite(loss))
                    if ok:
                        loss.backward()
                sums.update(metrics)
            grad_norm = as_float(torch.nn.utils.clip_grad_norm_(params, grad_clip)) if ok else math.nan
            if not ok or not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                finite = False
                continue
            optimizer.step()
            scheduler.step()
            for k, v in sums.items():
                totals[k].append(v)
            totals["actor/grad_norm"].append(grad_norm)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    metrics = {k: sum(v) / len(v) for k, v in totals.items() if v}
    return UpdateStats(metrics=metrics, finite=finite)

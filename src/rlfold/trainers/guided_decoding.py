"""Q♯ (Zhou et al., arXiv 2502.20548): learn π_ref's success probability online, decode π_ref tilted by it.

The policy is never trained: the *value model* is. ``GuidedDecodingStep.step`` reads top to bottom as its stages:

1. collect  B prompts x n rows; each row draws a switch point h in [0, L): its first h tokens are written
            by the roll-in policy (``guidance.rollin``: the current guided policy, as Q♯'s aggregated online
            data, or π_ref), the rest by π_ref; the response's reward labels every position from h-1 on
            (everything after those tokens was π_ref's, so the reward is a sample of Q_ref there)
2. store    the rows join the aggregated dataset (the newest ``guidance.buffer_rows`` are kept)
3. update   ``guidance.updates_per_step`` AdamW steps of the binary cross-entropy between the value model's
            logit of p(s_t, a_t) and the label, the mean over the labelled tokens of a drawn batch

Evaluation decodes ``models.guided.GuidedPolicy`` (π_ref·exp(Q*/η)); with
``eval.kl_to_reference`` it also reports KL(π ‖ π_ref). The engine (``rollout.engine``) must compute with the
module it is given (``shares_weights``), since the guided policy exists only in this process. ``final/`` is the value model (a causal LM whose
logits are logit p); the guided policy is π_ref (``model.path``) with it and ``guidance.eta``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.masked import positions_from_mask
from rlfold.core.registry import SAMPLERS, TRAINERS
from rlfold.core.seeding import derive_seed, generator_for
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.models import disable_dropout, load_model_and_tokenizer
from rlfold.models.guided import GuidedPolicy, zero_value_head
from rlfold.models.placement import resolve_device
from rlfold.rewards import score_batch
from rlfold.rollout import EngineContext, GenerationRequest, requests_for
from rlfold.rollout.build import build_engine
from rlfold.tasks.chat import for_tokenizer
from rlfold.trainers.evaluate import evaluate
from rlfold.trainers.loop import StepResult
from rlfold.trainers.online import DTYPES, build_task, sampling_params
from rlfold.trainers.preflight import check_dtype, check_prompts, check_stop_tokens
from rlfold.trainers.reference import FrozenReference
from rlfold.trainers.schedule import make_scheduler


@dataclasses.dataclass
class LabelledRows:
    """Stage 1's output: token ids of prompts and responses, where labels start, and the rewards (labels)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    starts: list[int]  # first labelled response position: h - 1 for a roll-in of h >= 1 tokens, else 0
    labels: list[float]

    def __len__(self) -> int:
        return len(self.labels)


class AggregatedData:
    """The aggregated online dataset of Q♯: the newest ``capacity`` labelled rows; checkpointed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows = LabelledRows([], [], [], [])

    def add(self, new: LabelledRows) -> None:
        r, c = self.rows, self.capacity
        self.rows = LabelledRows((r.prompts + new.prompts)[-c:], (r.responses + new.responses)[-c:],
                                 (r.starts + new.starts)[-c:], (r.labels + new.labels)[-c:])

    def draw(self, k: int, generator: torch.Generator) -> LabelledRows:
        """``k`` rows at random without replacement (all of them when there are fewer)."""
        r = self.rows
        idx = torch.randperm(len(r), generator=generator)[: min(k, len(r))].tolist()
        return LabelledRows([r.prompts[i] for i in idx], [r.responses[i] for i in idx], [r.starts[i] for i in idx],
                            [r.labels[i] for i in idx])

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, **dataclasses.asdict(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = LabelledRows(list(state["prompts"]), list(state["responses"]), list(state["starts"]),
                                 list(state["labels"]))


def labelled_positions(starts: Sequence[int], lengths: Sequence[int], width: int) -> Tensor:
    """[rows, width] float mask: 1 on response positions ``starts[i] <= t < lengths[i]``."""
    t = torch.arange(width)[None, :]
    return ((t >= torch.tensor(starts)[:, None]) & (t < torch.tensor(lengths)[:, None])).float()


def value_logits(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                 response_mask: Tensor) -> Tensor:
    """[N, R] the value model's logit of p(s_t, a_t) for each response token a_t (0 where masked)."""
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long().to(device)
    pos = positions_from_mask(mask)
    n_prompt, n_resp = prompt_ids.shape[1], response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    z = out.logits[:, n_prompt - 1: n_prompt + n_resp - 1].float()
    z = z.gather(-1, response_ids.to(device).unsqueeze(-1)).squeeze(-1)
    return z.masked_fill(~response_mask.to(device).bool(), 0.0)


def pad_rows(rows: LabelledRows, pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Left-padded prompts, right-padded responses with their masks, the labelled positions and the labels."""
    pw = max(len(p) for p in rows.prompts)
    rw = max(max(len(r) for r in rows.responses), 1)
    n = len(rows)
    prompt_ids = torch.full((n, pw), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, pw), dtype=torch.long)
    response_ids = torch.full((n, rw), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, rw), dtype=torch.long)
    for i, (p, r) in enumerate(zip(rows.prompts, rows.responses)):
        prompt_ids[i, pw - len(p):], prompt_mask[i, pw - len(p):] = torch.tensor(p), 1
        if r:
            response_ids[i, : len(r)], response_mask[i, : len(r)] = torch.tensor(r), 1
    label_mask = labelled_positions(rows.starts, [len(r) for r in rows.responses], rw)
    return prompt_ids, prompt_mask, response_ids, response_mask, label_mask, torch.tensor(rows.labels)


def value_loss(model: torch.nn.Module, rows: LabelledRows, pad_id: int, micro_batch: int = 0,
               ) -> tuple[float, dict[str, float]]:
    """Backward of the mean binary cross-entropy over the labelled tokens of ``rows`` (accumulated over
    micro-batches of ``micro_batch`` rows, 0: one); the loss and the metrics of the batch."""
    pi, pm, ri, rm, lm, y = pad_rows(rows, pad_id)
    total = float(lm.sum())
    if total == 0:
        return 0.0, {}
    loss_sum, hits, p_sum = 0.0, 0.0, 0.0
    step = micro_batch or len(rows)
    for s in range(0, len(rows), step):
        sl = slice(s, s + step)
        z = value_logits(model, pi[sl], pm[sl], ri[sl], rm[sl])
        mask = lm[sl].to(z.device)
        target = y[sl].to(z.device)[:, None].expand_as(z)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, target, reduction="none")
        loss = (bce * mask).sum() / total
        loss.backward()
        loss_sum += float(loss.detach())
        p = torch.sigmoid(z.detach())
        hits += float((((p > 0.5).float() == (target > 0.5).float()).float() * mask).sum())
        p_sum += float((p * mask).sum())
    return loss_sum, {"value/acc": hits / total, "value/p_mean": p_sum / total,
                      "value/label_tokens": total}


@TRAINERS.register("guided_decoding")
class GuidedDecodingStep:
    """Q♯ (arXiv 2502.20548): a value model of π_ref trained on aggregated online data guides π_ref's decoding."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, q = cfg, cfg.guidance
        check_dtype(cfg)
        if cfg.train.strategy != "single":
            raise ConfigError(f"train.strategy={cfg.train.strategy}: the guided_decoding trainer runs in one process; set "
                              "train.strategy=single")
        if cfg.model.lora is not None:
            raise ConfigError("model.lora: the guided_decoding trainer fine-tunes a whole value model; unset model.lora")
        self.device = resolve_device(cfg.model.device)
        dtype = DTYPES[cfg.model.dtype]
        task = build_task(cfg.task, cfg.seed)
        reference, self.tokenizer = load_model_and_tokenizer(cfg.model.path, dtype, device=self.device)
        self.task = for_tokenizer(task, self.tokenizer, cfg.task.system_prompt, cfg.task.chat_template, cfg.model.path)
        check_stop_tokens(cfg, self.tokenizer)
        check_prompts(cfg, reference, self.tokenizer, self.task.train, self.task.held_out[: cfg.eval.size])
        self.reference = reference.eval().requires_grad_(False)
        self.model = zero_value_head(copy.deepcopy(reference)).requires_grad_(True)  # what checkpoints save
        if cfg.model.disable_dropout:
            disable_dropout(self.reference)
            disable_dropout(self.model)
        self.guided = GuidedPolicy(self.reference, self.model, q.eta).eval()
        self.engine, self.ref_engine = (build_engine(cfg.rollout, EngineContext(
            model=m, tokenizer=self.tokenizer, model_path=cfg.model.path, dtype=dtype)) for m in (self.guided,
                                                                                                 self.reference))
        if not self.engine.shares_weights:
            raise ConfigError(f"rollout.engine={cfg.rollout.engine} samples with weights of its own; the guided policy "
                              "(π_ref tilted by the value model) exists only in this process, so it needs an engine "
                              "that computes with the module it is given (the in-process transformers engine)")
        self.eval_reference = FrozenReference(self.reference) if cfg.eval.kl_to_reference else None
        self.specs = [(r.name, r.weight, r.kwargs) for r in cfg.rewards]
        self.params = sampling_params(cfg.rollout).model_copy(update={"n": 1})
        t = cfg.train
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=t.lr,
                                           betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, t.steps * q.updates_per_step, t.warmup_steps, t.schedule,
                                        t.min_lr_ratio)
        sp = t.sampler
        self.sampler = SAMPLERS.get(sp.name)(self.task.train, seed=cfg.seed, **sp.kwargs)
        self.data = AggregatedData(q.buffer_rows)
        self.pad_id = self.engine.pad_id

    # ----- what the loop needs --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "sampler": self.sampler,
                "aggregated_data": self.data}

    def data_sources(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.task.sources]

    def begin(self) -> dict[str, float]:
        return self.evaluate()  # the value head starts at zero: this is π_ref's own evaluation

    def evaluate(self) -> dict[str, float]:
        ec = self.cfg.eval
        res = evaluate(self.engine, self.task.held_out[: ec.size], reward=self.cfg.accuracy_reward, k=ec.pass_k,
                       max_new_tokens=ec.max_new_tokens or self.cfg.rollout.max_new_tokens, seed=self.cfg.seed + 7,
                       group_key=ec.group_key, confidence=ec.confidence, reference=self.eval_reference)
        return {f"val/{self.task.name}/{k}": v for k, v in res.items()}

    def progress(self, m: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{m['reward/mean']:.3f}", "loss": f"{m['value/loss']:.3f}"}

    def close(self) -> None:
        """Nothing runs in the background."""

    # ----- the step ---------------------------------------------------------------------
    def step(self, index: int) -> StepResult:
        t0 = time.perf_counter()
        prompts = self.sampler.next(self.cfg.train.prompts_per_step)
        rows_prompts = [p for p in prompts for _ in range(self.cfg.rollout.n)]
        new, texts, switches = self.collect(rows_prompts, index)                         # 1. collect
        self.sampler.on_completed(prompts)
        self.data.add(new)                                                               # 2. store
        t1 = time.perf_counter()
        metrics, finite = self.update(index)                                             # 3. update
        metrics.update({"reward/mean": sum(new.labels) / len(new), "value/switch_mean": sum(switches) / len(new),
                        "value/buffer_rows": float(len(self.data.rows)), "timing_s/collect": t1 - t0,
                        "timing_s/update": time.perf_counter() - t1, "timing_s/step": time.perf_counter() - t0,
                        "train/lr": self.optimizer.param_groups[0]["lr"]})
        samples = [{"prompt": rows_prompts[i].text, "response": texts[i], "reward": new.labels[i],
                    "switch": switches[i]} for i in range(min(2, len(new)))]
        return StepResult(metrics, finite, samples)

    def switch_points(self, rows: int, index: int) -> list[int]:
        """h per row: drawn evenly from [0, L) for a guided roll-in, 0 (all π_ref) for ``rollin: reference``."""
        if self.cfg.guidance.rollin == "reference":
            return [0] * rows
        g = generator_for(derive_seed(self.cfg.seed, "guided_switch", index))
        return torch.randint(0, self.params.max_new_tokens, (rows,), generator=g).tolist()

    def collect(self, prompts: Sequence[Prompt], index: int) -> tuple[LabelledRows, list[str], list[int]]:
        """Stage 1: roll in with the guided policy for h tokens, roll out with π_ref, score, label."""
        h = self.switch_points(len(prompts), index)
        base = requests_for(prompts)
        context = [self.engine.encode(req, i) for i, req in enumerate(base)]
        prefix: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        rollin = [i for i, x in enumerate(h) if x > 0]
        with torch.no_grad():
            if rollin:
                reqs = [dataclasses.replace(base[i], max_new_tokens=h[i]) for i in rollin]
                roll = self.engine.generate(reqs, self.params, derive_seed(self.cfg.seed, "guided_rollin", index))
                lengths = roll.response_mask.sum(-1).tolist()
                for j, i in enumerate(rollin):
                    prefix[i] = roll.response_ids[j, : int(lengths[j])].tolist()
                    done[i] = roll.finish_reasons[j] == FINISH_STOP
            rollout = [i for i in range(len(prompts)) if not done[i]]
            suffix: list[list[int]] = [[] for _ in prompts]
            reasons = [FINISH_STOP] * len(prompts)
            if rollout:
                reqs = [GenerationRequest(prompt=prompts[i], context_ids=context[i] + prefix[i],
                                          max_new_tokens=self.params.max_new_tokens - len(prefix[i]))
                        for i in rollout]
                roll = self.ref_engine.generate(reqs, self.params, derive_seed(self.cfg.seed, "guided_rollout", index))
                lengths = roll.response_mask.sum(-1).tolist()
                for j, i in enumerate(rollout):
                    suffix[i] = roll.response_ids[j, : int(lengths[j])].tolist()
                    reasons[i] = roll.finish_reasons[j]
        responses = [prefix[i] + suffix[i] for i in range(len(prompts))]
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        scores, _ = score_batch(self.specs, prompts, texts, reasons)
        labels = [float(x) for x in scores]
        bad = [(i, x) for i, x in enumerate(labels) if not (0.0 <= x <= 1.0)]
        if bad:
            i, x = bad[0]
            names = " + ".join(f"{w:g}*{n}" for n, w, _ in self.specs)
            raise DataError(f"guided_decoding: the reward of row {i} (prompt {prompts[i].text!r}) is {x:g}; Q♯'s value "
                            f"model predicts a probability, so the summed reward ({names}) must lie in [0, 1] "
                            "(e.g. one correctness reward of weight 1)")
        starts = [max(len(p) - 1, 0) for p in prefix]
        return LabelledRows(context, responses, starts, labels), texts, [len(p) for p in prefix]

    def update(self, index: int) -> tuple[dict[str, float], bool]:
        """Stage 3: ``updates_per_step`` optimiser steps on batches drawn from the aggregated dataset."""
        q, t = self.cfg.guidance, self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        losses, last, finite = [], {}, True
        try:
            for u in range(q.updates_per_step):
                batch = self.data.draw(q.batch_rows, generator_for(derive_seed(self.cfg.seed, "guided_value_batch", index, u)))
                self.optimizer.zero_grad(set_to_none=True)
                loss, last = value_loss(self.model, batch, self.pad_id, t.micro_batch_size)
                norm = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip if t.grad_clip > 0 else math.inf))
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self.optimizer.zero_grad(set_to_none=True)  # a non-finite step leaves the weights as they were
                    finite = False
                    break
                self.optimizer.step()
                self.scheduler.step()
                losses.append(loss)
        finally:
            self.model.eval()
        metrics = {"value/loss": sum(losses) / len(losses) if losses else math.nan, **last}
        return metrics, finite


__all__ = ["AggregatedData", "LabelledRows", "GuidedDecodingStep", "labelled_positions", "pad_rows", "value_logits",
           "value_loss"]

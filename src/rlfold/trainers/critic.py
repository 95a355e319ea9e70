"""The critic of PPO-style recipes: values, GAE targets, and the value update (separate or shared)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlfold.algos.aggregation import Aggregation
from rlfold.algos.critic import clipped_value_loss, explained_variance
from rlfold.algos.token_advantages import gae_targets
from rlfold.core.config import CriticConfig, ModelConfig, TrainConfig
from rlfold.core.masked import masked_mean
from rlfold.core.types import RolloutBatch
from rlfold.models import disable_dropout
from rlfold.models.logprobs import model_device
from rlfold.models.value import ValueModel, load_value_model
from rlfold.trainers.update import MicroBatch, PreparedBatch, chunks


class Critic:
    """A value model with its own optimiser (``critic.model: separate``), or a value head on the
    policy backbone trained through the policy's joint loss (``critic.model: shared``)."""

    def __init__(self, cc: CriticConfig, train: TrainConfig, model_cfg: ModelConfig, policy: torch.nn.Module,
                 dtype: torch.dtype) -> None:
        self.cc, self.train = cc, train
        self.shared = cc.model == "shared"
        if self.shared:
            self.model = ValueModel(policy.base_model, policy.config.hidden_size).to(model_device(policy), dtype)
            self.optimizer = None
        else:
            self.model = load_value_model(cc.path or model_cfg.path, dtype).to(model_device(policy))
            if model_cfg.disable_dropout:
                disable_dropout(self.model)
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cc.lr, betas=train.betas,
                                               weight_decay=train.weight_decay)
        self.gamma, self.lam, self.egae = cc.gamma, cc.lam, cc.egae
        self._head_optimizer: torch.optim.Optimizer | None = None  # value pretraining of a shared critic

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the policy optimiser must also train (the head of a shared critic)."""
        return list(self.model.head.parameters()) if self.shared else []

    @torch.no_grad()
    def values(self, roll: RolloutBatch, batch_size: int = 256) -> Tensor:
        """V(s_t) at every response position, no gradient."""
        was = self.model.training
        self.model.eval()
        try:
            out = [self.model(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, b.response_attention_mask)
                   for b in (roll.select(idx) for idx in chunks(roll.size, batch_size))]
        finally:
            self.model.train(was)
        return torch.cat(out).to("cpu", torch.float32)  # the driver's tensors live on the CPU

    def targets(self, token_rewards: Tensor, values: Tensor, mask: Tensor, truncated: Tensor,
                lam: float | None = None) -> Tensor:
        """Critic regression targets: GAE returns with the critic's lambda (VC-PPO decouples it)."""
        _, returns = gae_targets(token_rewards, values, mask, truncated, gamma=self.gamma,
                                 lam=self.lam if lam is None else lam, egae=self.egae)
        return returns

    def loss(self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, agg: Aggregation,
             norm: float) -> tuple[Tensor, dict[str, Tensor]]:
        per_token, metrics = clipped_value_loss(values, old_values, returns, mask, clip=self.cc.cliprange_value)
        return agg.reduce(per_token, mask, norm), metrics

    def update(self, roll: RolloutBatch, mask: Tensor, old_values: Tensor, returns: Tensor, agg: Aggregation,
               max_len: int | None = None, epochs: int | None = None, head_only: bool = False) -> dict[str, float]:
        """Train the critic on ``returns``: epochs x mini-batches x micro-batches like the actor.

        A shared critic is trained through the policy loss; only value pretraining (``head_only``)
        fits it here, and then only its head, with the backbone (the policy) frozen.
        """
        if self.shared and not head_only:
            raise RuntimeError("a shared critic is trained through the policy loss, not Critic.update")
        if not head_only:
            assert self.optimizer is not None
            return self._fit(self.optimizer, list(self.model.parameters()), roll, mask, old_values, returns, agg,
                             max_len, epochs)
        if self._head_optimizer is None:
            self._head_optimizer = torch.optim.AdamW(self.model.head.parameters(), lr=self.cc.lr,
                                                     betas=self.train.betas, weight_decay=self.train.weight_decay)
        frozen = [p for p in self.model.backbone.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return self._fit(self._head_optimizer, list(self.model.head.parameters()), roll, mask, old_values,
                             returns, agg, max_len, epochs)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _fit(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], roll: RolloutBatch,
             mask: Tensor, old_values: Tensor, returns: Tensor, agg: Aggregation, max_len: int | None,
             epochs: int | None) -> dict[str, float]:
        tc = self.train
        self.model.train()
        totals: dict[str, list[float]] = defaultdict(list)
        for _ in range(epochs or tc.ppo_epochs):
            for idx in chunks(roll.size, tc.mini_batch_size):
                optimizer.zero_grad(set_to_none=True)
                norm = agg.normaliser(mask[idx].float(), max_len)
                n_tok = max(float(mask[idx].sum()), 1.0)
                sums: dict[str, float] = defaultdict(float)
                ok = True
                for local in chunks(len(idx), tc.micro_batch_size):
                    rows = idx[local]
                    sub = roll.select(rows)
                    v = self.model(sub.prompt_ids, sub.prompt_mask, sub.response_ids, sub.response_mask,
                                   sub.response_attention_mask)
                    m = mask[rows].float().to(v.device)
                    loss, metrics = self.loss(v, old_values[rows].to(v.device), returns[rows].to(v.device), m, agg,
                                              norm)
                    if not torch.isfinite(loss):
                        ok = False
                        break
                    loss.backward()
                    sums["critic/value_loss"] += float(loss.detach())
                    sums["critic/vf_clipfrac"] += float(metrics["vf_clipfrac"]) * float(m.sum()) / n_tok
                grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if ok \
                    else torch.tensor(math.nan)
                if not ok or not torch.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    totals["critic/nonfinite"].append(1.0)
                    continue
                optimizer.step()
                for k, v in sums.items():
                    totals[k].append(v)
                totals["critic/grad_norm"].append(float(grad_norm))
        optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        return {k: sum(v) / len(v) for k, v in totals.items() if v}

    def value_mask(self, mask: Tensor, truncated: Tensor) -> Tensor:
        """Tokens the critic learns from: all valid ones, or with EGAE (T-PPO) finished rows only."""
        value_mask = mask.float()
        if self.egae:
            value_mask = value_mask * (~truncated).float()[:, None]
        return value_mask

    def pretrain(self, sample: Callable[[int], Any], steps: int, agg: Aggregation, max_len: int | None,
                 progress: bool) -> dict[str, float]:
        """VC-PPO value pretraining (arXiv 2503.01491): fit the critic to Monte-Carlo returns (lambda = 1)
        of the fixed initial policy for ``steps`` batches (``sample(i)`` collects batch i) before any
        policy update; a shared critic trains its head only (the backbone is the policy)."""
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        bar = tqdm(range(steps), desc="value pretraining", disable=not progress, dynamic_ncols=True, leave=False)
        for i in bar:
            s = sample(i)
            mask = s.roll.response_mask
            values = self.values(s.roll)
            returns = self.targets(s.token_rewards, values, mask, s.roll.truncated, lam=1.0)
            ev = value_metrics(values, returns, mask)["critic/vf_explained_var"]
            upd = self.update(s.roll, mask.float(), values, returns, agg, max_len, head_only=self.shared)
            last = {"critic/pretrain/value_loss": upd.get("critic/value_loss", float("nan")),
                    "critic/pretrain/vf_explained_var": ev}
            first = first or dict(last)
            bar.set_postfix(value_loss=f"{last['critic/pretrain/value_loss']:.4f}")
        return {**{f"{k}_first": v for k, v in first.items()}, **last}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"head": self.model.head.state_dict()}
        if not self.shared:
            state["model"] = self.model.state_dict()
            state["optimizer"] = self.optimizer.state_dict()  # type: ignore[union-attr]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.shared:
            self.model.head.load_state_dict(state["head"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[union-attr]


def value_metrics(values: Tensor, returns: Tensor, mask: Tensor) -> dict[str, float]:
    """``critic/values/mean``, ``critic/returns/mean`` and ``critic/vf_explained_var`` over valid tokens."""
    m = mask.float()
    return {
        "critic/values/mean": float(masked_mean(values, m)),
        "critic/returns/mean": float(masked_mean(returns, m)),
        "critic/vf_explained_var": float(explained_variance(values, returns, m)),
    }


@dataclass
class ValueTerm:
    """The value loss of a shared critic, added to the policy loss with weight ``vf_coef``."""

    critic: Critic
    vf_coef: float

    def __call__(self, prep: PreparedBatch, mb: MicroBatch, agg: Aggregation) -> tuple[Tensor, dict[str, float]]:
        v = self.critic.model(mb.roll.prompt_ids, mb.roll.prompt_mask, mb.roll.response_ids, mb.roll.response_mask,
                              mb.roll.response_attention_mask)
        loss, metrics = self.critic.loss(v, mb.take(prep.old_values), mb.take(prep.returns), mb.mask, agg, mb.norm)
        share = float(mb.mask.sum()) / max(mb.total_tokens, 1.0)
        return self.vf_coef * loss, {"critic/value_loss": float(loss.detach()),
                                     "critic/vf_clipfrac": float(metrics["vf_clipfrac"]) * share}

"""Reward aggregators: how the scores of a run's reward functions combine into one reward per rollout.

An aggregator is ``fn(inp: AggregationInput, *, <keyword options>) -> Aggregated``, registered in
``REWARD_AGGREGATORS`` and chosen by ``reward_aggregation: {name, kwargs}`` (default ``weighted_sum``).
It runs once per batch, after the reward functions and before the shaping parts, and sees every
function's raw score (``per_fn``, NaN where the function returned None) with its ``rewards[].weight``.
A NaN in the returned scores marks the row unscorable: the scorer counts it and gives it its group's
mean, exactly as it does for a row no reward function scored. An aggregator whose options name reward
functions declares ``@checks_rewards`` so that a recipe naming a reward the run does not score fails at
config load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor
from typing_extensions import TypedDict

from rlfold.core import registry
from rlfold.core.errors import dotted
from rlfold.core.registry import checks_rewards
from rlfold.core.suggest import closest

REWARD_AGGREGATORS = registry.REWARD_AGGREGATORS


@dataclass(frozen=True)
class AggregationInput:
    """The scored batch, before any shaping part."""

    per_fn: dict[str, Tensor]          # [N] raw score of each reward function, recipe order; NaN: it returned None
    weights: dict[str, float]          # rewards[].weight of each function
    weighted_sum: Tensor               # [N] sum of weight * score over the functions that scored; NaN if none did
    token_scores: Tensor | None = None  # [N, R] weighted per-token rewards of functions that return per-token lists


@dataclass
class Aggregated:
    """One reward per row [N] (NaN: unscorable); ``token_scores`` [N, R] spreads part of it over tokens."""

    scores: Tensor
    token_scores: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@REWARD_AGGREGATORS.register("weighted_sum")
def weighted_sum(inp: AggregationInput) -> Aggregated:
    """Weighted sum of the reward functions, the accuracy + format sum of DeepSeek-R1 (arXiv 2501.12948); the default.

    r = sum_i w_i * s_i over the functions that scored the row (a None adds nothing); NaN when none
    did. Per-token rewards keep their tokens.
    """
    return Aggregated(inp.weighted_sum, inp.token_scores)


# ----- gated (hierarchical) aggregation ------------------------------------------------------------


class GateLevel(TypedDict, total=False):
    """One level of ``gated``: its gates (reward -> threshold) and its objectives (reward names)."""

    gates: dict[str, float]
    objectives: list[str]


Level = tuple[dict[str, float], list[str]]
_LEVEL_KEYS = ("gates", "objectives")


def gate_levels(names: Sequence[str], gates: dict[str, float] | None, objectives: list[str] | None,
                levels: list[GateLevel] | None) -> list[Level]:
    """The levels of a ``gated`` configuration: ``levels`` as given, or the one level of ``gates`` and
    ``objectives`` (objectives left out: every reward of the run that is not a gate)."""
    if levels is not None:
        return [(dict(lv.get("gates", {})), list(lv.get("objectives", []))) for lv in levels]
    g = dict(gates or {})
    return [(g, list(objectives) if objectives is not None else [n for n in names if n not in g])]


def gated_reward(per_fn: dict[str, Tensor], weights: dict[str, float], levels: Sequence[Level],
                 floor: float = 0.0) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """Hierarchical gate (this project's design): r = sum_j open_j * sum_{i in O_j} w_i * s_i + floor * (1 - open_1).

    ``open_j`` = every gate k of levels 1..j passes, s_k >= tau_k. An objective that returned None adds
    nothing (as in the weighted sum). A gate that returned None, with no gate at or below its level
    failed, leaves the reward unknown: NaN (unscorable); so is a row no function scored.
    Returns (scores [N] float32, pass [N] bool per gate over the rows it scored, open [L, N] bool,
    failed [N] bool: some gate failed).
    """
    first = next(iter(per_fn.values()))
    n = first.shape[0]
    scored = torch.stack([~torch.isnan(v) for v in per_fn.values()]).any(0)
    failed = torch.zeros(n, dtype=torch.bool)
    missing = torch.zeros(n, dtype=torch.bool)
    unknown = torch.zeros(n, dtype=torch.bool)
    out = torch.zeros(n, dtype=torch.float64)
    passes: dict[str, Tensor] = {}
    opened = []
    for gates, objectives in levels:
        for name, tau in gates.items():
            s = per_fn[name]
            known = ~torch.isnan(s)
            ok = known & (s >= tau)
            passes[name] = ok[known]
            failed |= known & ~ok
            missing |= ~known
        unknown |= missing & ~failed
        is_open = ~failed & ~missing
        opened.append(is_open)
        part = torch.zeros(n, dtype=torch.float64)
        for name in objectives:
            part += weights[name] * torch.nan_to_num(per_fn[name].double(), nan=0.0)
        out += torch.where(is_open, part, torch.zeros_like(part))
    if opened:
        out += floor * (~opened[0] & ~unknown).double()
    bad = unknown | ~scored
    scores = torch.where(bad, torch.full_like(out, float("nan")), out).float()
    open_ = torch.stack(opened) if opened else torch.ones(0, n, dtype=torch.bool)
    return scores, passes, open_, failed & ~bad


def _check_gated(rewards: Sequence[tuple[str, float]], *, gates: dict[str, float] | None = None,
                 objectives: list[str] | None = None, levels: list[Any] | None = None,
                 floor: float = 0.0) -> tuple[tuple, str] | None:
    """The first problem of a ``gated`` configuration against the run's rewards, located in its options."""
    names = [n for n, _ in rewards]
    known = ", ".join(dict.fromkeys(names))

    def unknown(loc: tuple, role: str, name: str) -> tuple[tuple, str]:
        close = closest(name, list(dict.fromkeys(names)))
        hint = f"did you mean {close!r}? " if close else ""
        return loc, (f"reward aggregator 'gated': {role} {name!r} is not one of the run's rewards; {hint}"
                     f"the rewards are: {known} (a gate or objective must be listed under rewards)")

    if levels is not None:
        if gates is not None or objectives is not None:
            key = "gates" if gates is not None else "objectives"
            return (key,), (f"reward aggregator 'gated': set either levels, or gates/objectives (one level), "
                            f"not both; move {key} into a level of levels")
        if not levels:
            return ("levels",), "reward aggregator 'gated': levels is empty; give at least one {gates, objectives}"
        for j, lv in enumerate(levels):
            for key in lv:
                if key not in _LEVEL_KEYS:
                    close = closest(key, list(_LEVEL_KEYS))
                    hint = f"did you mean {close!r}? " if close else ""
                    return ("levels", j, key), (f"reward aggregator 'gated': a level takes no key {key!r}; {hint}"
                                                "a level has gates (reward -> threshold) and objectives (rewards)")
    spelled = []  # (location, role, name) of every reward the options name
    if levels is not None:
        for j, lv in enumerate(levels):
            spelled += [(("levels", j, "gates", k), "gate", k) for k in lv.get("gates", {})]
            spelled += [(("levels", j, "objectives", i), "objective", k) for i, k in enumerate(lv.get("objectives", []))]
    else:
        spelled += [(("gates", k), "gate", k) for k in (gates or {})]
        spelled += [(("objectives", i), "objective", k) for i, k in enumerate(objectives or [])]
    for loc, role, name in spelled:
        if name not in names:
            return unknown(loc, role, name)
    for name in dict.fromkeys(names):
        where = [i for i, n in enumerate(names) if n == name]
        if len(where) > 1:
            return ("gates" if levels is None else "levels",), (
                f"reward aggregator 'gated' refers to rewards by name, but rewards[{where[0]}] and "
                f"rewards[{where[1]}] are both {name!r}; list each reward once")
    seen: dict[tuple[str, str], tuple] = {}
    for loc, role, name in spelled:
        if (role, name) in seen:
            return loc, (f"reward aggregator 'gated': {name!r} is a{'n' if role[0] == 'o' else ''} {role} twice "
                         f"(also at {dotted(seen[(role, name)])}); "
                         + ("a reward gates one level" if role == "gate" else "it would be counted twice"))
        seen[(role, name)] = loc
    used = {name for _, _, name in spelled}
    if levels is not None or objectives is not None:
        for i, (name, weight) in enumerate(rewards):
            if name not in used and weight != 0:
                return ("levels" if levels is not None else "objectives",), (
                    f"reward aggregator 'gated': rewards[{i}] ({name!r}, weight {weight:g}) is neither a gate nor "
                    "an objective, so it would not count; list it as an objective, or set its weight to 0 to "
                    "score and log it only")
    return None


@REWARD_AGGREGATORS.register("gated")
@checks_rewards(_check_gated)
def gated(inp: AggregationInput, *, gates: dict[str, float] | None = None, objectives: list[str] | None = None,
          levels: list[GateLevel] | None = None, floor: float = 0.0) -> Aggregated:
    """Gated aggregation after SearchLLM (arXiv 2603.10473) and ChatShopBuddy HRM (arXiv 2603.06065); the formula is this project's design.

    Neither paper publishes its gate. Here an objective counts only when the constraints below it hold:
    r = prod_k 1[s_k >= tau_k] * sum_j w_j * s_j, with ``floor`` instead when a gate fails. Options:
    ``gates``: reward -> threshold tau_k (the constraints); ``objectives``: the rewards summed with their
    ``rewards[].weight`` (default: every reward that is not a gate; a gate's weight is unused unless
    it is also an objective); ``levels``: instead of gates/objectives, an ordered list of
    ``{gates, objectives}``: level j's objectives count only if every gate of levels 1..j passes
    (ChatShopBuddy's "higher-level rewards count only when the lower-level requirements are met");
    ``floor``: the reward when a first-level gate fails, so nothing counts (0: the product form).
    An objective that returned None adds nothing; a gate that returned None (no gate at or below its
    level failed) makes the row unscorable, like a row no function scored. The reward is placed on the
    last token (per-token rewards are summed into their function's score first). Metrics:
    ``reward/gate/<name>_pass`` (share of the rows the gate scored that pass), ``reward/gate/gated_out_frac``
    (share of rows where a gate failed), and with several levels ``reward/gate/level<j>_open``.
    """
    levels_ = gate_levels(list(inp.weights), gates, objectives, levels)
    scores, passes, open_, failed = gated_reward(inp.per_fn, inp.weights, levels_, floor)
    metrics = {f"reward/gate/{name}_pass": float(ok.float().mean()) for name, ok in passes.items() if ok.numel()}
    n = scores.shape[0]
    metrics["reward/gate/gated_out_frac"] = float(failed.float().mean()) if n else 0.0
    if len(levels_) > 1:
        metrics.update({f"reward/gate/level{j + 1}_open": float(o.float().mean()) if n else 0.0
                        for j, o in enumerate(open_)})
    return Aggregated(scores, None, metrics)


__all__ = ["REWARD_AGGREGATORS", "Aggregated", "AggregationInput", "GateLevel", "gate_levels", "gated",
           "gated_reward", "weighted_sum"]

"""Run logs: ``metrics.jsonl`` (one row per step), ``samples.jsonl`` and the end-of-run summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch
from rich.console import Console
from rich.table import Table

from rlfold.core.types import FINISH_LENGTH, RolloutBatch

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class JsonlLog:
    """Append-only JSON-lines file, flushed on every write so a killed run keeps its rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed process
    return rows


def truncate_after_step(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (used on resume, so metrics are not duplicated)."""
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _nanmean(x: torch.Tensor) -> float:
    """Mean over the scored samples (None scores are NaN); 0 if none was scored."""
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else 0.0


def rollout_metrics(
    roll: RolloutBatch, rewards: torch.Tensor, per_fn: dict[str, torch.Tensor], n: int, accuracy_reward: str
) -> dict[str, float]:
    """Reward, accuracy and length statistics of one step's rollouts (the metric names of verl and TRL)."""
    lengths = roll.response_mask.sum(1).float()
    groups = rewards.view(-1, n)
    return {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        **{f"reward/{k}/mean": _nanmean(v) for k, v in per_fn.items()},
        "acc/mean": _nanmean(per_fn[accuracy_reward]),
        "frac_reward_zero_std": (groups.std(1) == 0).float().mean().item() if n > 1 else 1.0,
        "response_length/mean": lengths.mean().item(),
        "response_length/max": lengths.max().item(),
        "response_length/min": lengths.min().item(),
        "response_length/clip_ratio": sum(f == FINISH_LENGTH for f in roll.finish_reasons) / roll.size,
        **extras_metrics(roll),
    }


def extras_metrics(roll: RolloutBatch) -> dict[str, float]:
    """``<key>/mean`` of every numeric per-row extra an engine added (``turns/mean``, ``env/attempts/mean``)."""
    out: dict[str, float] = {}
    for key, values in roll.extras.items():
        t = values if isinstance(values, torch.Tensor) else None
        if t is None:
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            t = torch.tensor(values, dtype=torch.float64)
        if t.dim() == 1 and t.numel():
            out[f"{key}/mean"] = float(t.double().mean())
    return out


SUMMARY_KEYS = (
    "reward/mean", "acc/mean", "response_length/mean", "actor/entropy", "actor/kl",
    "actor/pg_clipfrac", "actor/grad_norm", "perf/tokens_per_s", "timing_s/step",
)


def summary_table(rows: Iterable[dict[str, Any]], title: str) -> Table:
    """First / last / best of the headline metrics."""
    rows = list(rows)
    table = Table(title=title)
    for col in ("metric", "first", "last", "min", "max"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key in SUMMARY_KEYS:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            table.add_row(key, *(f"{v:.4g}" for v in (vals[0], vals[-1], min(vals), max(vals))))
    return table


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    Console(stderr=True).print(summary_table(rows, title))

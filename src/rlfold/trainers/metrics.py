"""Run logs: ``metrics.jsonl`` (one row per step), ``samples.jsonl`` and the end-of-run summary table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from rich.console import Console
from rich.table import Table

from rlfold.core.errors import RlfoldError
from rlfold.core.types import FINISH_LENGTH, RolloutBatch

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


class RunDirError(RlfoldError):
    """The run directory cannot be created, written or locked (names the path and the operation)."""


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class JsonlLog:
    """Append-only JSON-lines file, flushed on every write so a killed run keeps its rows.

    An ``OSError`` (read-only or full disk, a vanished directory) becomes a ``RunDirError`` naming the
    file and the operation; ``close`` is idempotent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None
        try:
            self._fh = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise RunDirError(f"cannot open {path} for appending: {_reason(exc)}") from exc

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is None:
            raise RunDirError(f"cannot append to {self.path}: the log is closed")
        try:
            self._fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            self._fh.flush()
        except OSError as exc:
            raise RunDirError(f"cannot append to {self.path}: {_reason(exc)}") from exc

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.close()  # closes the file even when the final flush fails
        except OSError as exc:
            raise RunDirError(f"cannot finish writing {self.path}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def close_all(logs: Iterable[JsonlLog], primary: BaseException | None) -> None:
    """Close every log; a failure is raised only when no earlier exception (``primary``) is on its way out."""
    first: RunDirError | None = None
    for log in logs:
        try:
            log.close()
        except RunDirError as exc:
            first = first or exc
    if first is not None and primary is None:
        raise first


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
    """Drop rows logged after ``step`` (used on resume, so metrics are not duplicated).

    Rows are in step order, so this cuts the file after the last row of step <= ``step`` (and before a
    torn line): one ``truncate`` call, the kept rows byte for byte as they were.
    """
    if not path.is_file():
        return
    keep = 0
    try:
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    try:
                        row = json.loads(line)
                        if int(row.get("step", 0)) > step:
                            break
                    except (ValueError, TypeError, AttributeError):
                        break  # a torn last line from a killed process
                if not line.endswith(b"\n"):
                    break
                keep += len(line)
        os.truncate(path, keep)
    except OSError as exc:
        raise RunDirError(f"cannot truncate {path}: {_reason(exc)}") from exc


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
    "rm/loss", "rm/accuracy", "val/rm/accuracy",
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

"""What a finished (or running) run directory holds, read for reports: metrics, samples, config."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlfold.core.errors import DataError, RlfoldError
from rlfold.trainers.loop import CONFIG_FILE
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, read_jsonl


@dataclass
class RunData:
    """One run directory: its metric rows, logged samples and saved config."""

    path: Path
    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    config_text: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The recipe name of the run (``name:`` in config.yaml; the directory name without a config)."""
        return str(self.config.get("name") or self.path.name)

    @property
    def seed(self) -> Any:
        """The run's seed, or None when config.yaml does not say."""
        return self.config.get("seed")

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """Steps and finite values of one metric, in step order."""
        pts = [(float(r["step"]), float(r[key])) for r in self.rows
               if _is_number(r.get(key)) and math.isfinite(float(r[key])) and _is_number(r.get("step"))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def metric_names(self) -> list[str]:
        """Every numeric metric logged at least once, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.rows:
            for k, v in r.items():
                if k != "step" and _is_number(v):
                    seen.setdefault(k, None)
        return list(seen)

    def first_last(self, key: str) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``((first step, value), (last step, value))`` of a metric, or None when it was never logged."""
        steps, values = self.series(key)
        if not steps:
            return None
        return (steps[0], values[0]), (steps[-1], values[-1])


def is_rate(key: str) -> bool:
    """A metric read as a fraction in [0, 1] (accuracies, pass@k, clip and zero-std fractions)."""
    tail = key.rsplit("/", 1)[-1]
    return (key == "acc/mean" or tail == "acc" or tail.startswith("pass@") or key.startswith("frac_")
            or "clipfrac" in tail or tail == "clip_ratio")


def _is_number(v: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_run(path: str | Path) -> RunData:
    """Read a run directory; an error names the path when it is missing or holds no metrics."""
    path = Path(path)
    if not path.exists():
        raise RlfoldError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RlfoldError(f"{path}: not a directory (expected a run directory with {METRICS_FILE})")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise RlfoldError(f"{path}: no {METRICS_FILE} there; is it a run directory?")
    rows = read_jsonl(metrics)
    if not rows:
        raise DataError(f"{metrics}: no metric rows yet (the run has not logged a step)")
    run = RunData(path=path, rows=rows, samples=read_jsonl(path / SAMPLES_FILE))
    cfg_file = path / CONFIG_FILE
    if cfg_file.is_file():
        run.config_text = cfg_file.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(run.config_text)
        except yaml.YAMLError as exc:
            raise DataError(f"{cfg_file}: not valid YAML ({exc})") from exc
        run.config = loaded if isinstance(loaded, dict) else {}
    return run


def check_metrics(runs: list[RunData], metrics: list[str]) -> None:
    """Raise naming the first metric no run logged, with the closest logged name."""
    known = sorted({k for run in runs for k in run.metric_names()})
    for m in metrics:
        if m in known:
            continue
        close = difflib.get_close_matches(m, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = ", ".join(str(r.path) for r in runs)
        raise RlfoldError(f"metric {m!r} is in none of the runs ({where}){hint}")

"""The run loop every trainer shares: run directory, resume, registered state, cadence, logging, progress.

A trainer is a *step* (``TrainStep``, registered in ``TRAINERS`` under the name ``RunConfig.trainer``
takes); the loop owns everything around it:

1. the run directory: refuse to overwrite one holding checkpoints, refuse a resume with a changed
   config, write ``config.yaml`` once the step was built (bad input leaves nothing behind);
2. state: the step's registered objects plus the loop's counters and the global RNGs, saved in every
   checkpoint beside the model and restored by ``--resume``;
3. cadence: held-out evaluation, checkpoints, the non-finite streak that stops a run before it writes
   over a good checkpoint;
4. logging: ``metrics.jsonl``, ``samples.jsonl`` and the progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from tqdm.auto import tqdm

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, NumericalError
from rlfold.core.registry import TRAINERS
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, JsonlLog, read_jsonl, truncate_after_step
from rlfold.trainers.state import Counters, GlobalRNG, Stateful, collect_state, restore_state

CONFIG_FILE = "config.yaml"
# Keys a resumed run may change without invalidating the checkpoint.
RESUMABLE_KEYS = {"train.steps", "checkpoint.every", "checkpoint.keep", "log.progress", "log.samples_per_step",
                  "eval.every", "run_dir", "threads"}


@dataclass
class StepResult:
    """What one call of a step produced: metrics to log, whether its update was finite, samples to log."""

    metrics: dict[str, float]
    finite: bool
    samples: list[dict[str, Any]] = field(default_factory=list)


class TrainStep(Protocol):
    """A trainer as the loop sees it. ``model``/``tokenizer``: what checkpoints save in the HF format."""

    model: Any
    tokenizer: Any

    def state(self) -> dict[str, Stateful]:
        """The objects whose ``state_dict`` a checkpoint must hold (optimiser, sampler, ...)."""

    def begin(self) -> dict[str, float]:
        """Metrics of step 0, before any update (held-out evaluation, warm-up stages)."""

    def step(self, index: int) -> StepResult:
        """Step ``index`` (0-based)."""

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current weights."""

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        """A few numbers for the progress bar."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """A resume needs the same config (but ``RESUMABLE_KEYS``); a new run must not reuse checkpoints."""
    cfg_file = run_dir / CONFIG_FILE
    if resume:
        if not cfg_file.is_file():
            raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run directory?")
        saved = _flatten(yaml.safe_load(cfg_file.read_text(encoding="utf-8")))
        now = _flatten(cfg.model_dump(mode="json"))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS)
        if diff:
            raise ConfigError(
                f"--resume {run_dir}: the config differs from the run's saved {CONFIG_FILE} in "
                + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diff)
            )
    elif (run_dir / ckpt.CKPT_DIR).exists():
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; pass --resume {run_dir} "
            "to continue it, or choose another run_dir"
        )


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


class RunLoop:
    """Calls ``trainer.step`` ``cfg.train.steps`` times with evaluation, checkpoints and logs around it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, trainer: TrainStep) -> None:
        self.cfg, self.run_dir, self.trainer = cfg, run_dir, trainer
        self.counters = Counters(step=0, nonfinite_total=0, init_eval=None)
        self.nonfinite_streak = 0
        self.rng = GlobalRNG(cfg.seed)
        self.objects: dict[str, Stateful] = {"loop": self.counters, "rng": self.rng, **trainer.state()}

    @property
    def step(self) -> int:
        return int(self.counters["step"])

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.run_dir, self.step, self.trainer.model, self.trainer.tokenizer,
                                    collect_state(self.objects), keep=self.cfg.checkpoint.keep)

    def restore(self) -> None:
        """Continue from the latest checkpoint (or from scratch if none was written), dropping later log rows."""
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:  # killed before the first checkpoint: start from scratch, dropping its logs
            for name in (METRICS_FILE, SAMPLES_FILE):
                truncate_after_step(self.run_dir / name, -1)
            return
        from transformers import AutoModelForCausalLM

        model = self.trainer.model
        loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype,
                                                      local_files_only=True)
        model.load_state_dict(loaded.state_dict())
        restore_state(self.objects, ckpt.load_state(path), f"--resume {self.run_dir} ({path.name})")
        for name in (METRICS_FILE, SAMPLES_FILE):
            truncate_after_step(self.run_dir / name, self.step)

    def fit(self) -> list[dict[str, Any]]:
        cfg, trainer = self.cfg, self.trainer
        if self.counters["init_eval"] is None:
            self.counters["init_eval"] = trainer.begin()
        metrics_log = JsonlLog(self.run_dir / METRICS_FILE)
        samples_log = JsonlLog(self.run_dir / SAMPLES_FILE)
        if self.step == 0:
            metrics_log.write({"step": 0, **self.counters["init_eval"]})
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name, disable=not cfg.log.progress,
                   dynamic_ncols=True)
        try:
            while self.step < cfg.train.steps:
                res = trainer.step(self.step)
                self.counters["step"] = self.step + 1
                if res.finite:
                    self.nonfinite_streak = 0
                else:
                    self.counters["nonfinite_total"] += 1
                    self.nonfinite_streak += 1
                res.metrics = {"step": self.step, **res.metrics, "nonfinite_steps": self.counters["nonfinite_total"]}
                if self.step == cfg.train.steps or (cfg.eval.every and self.step % cfg.eval.every == 0):
                    res.metrics.update(trainer.evaluate())
                metrics_log.write(res.metrics)
                for s in res.samples:
                    samples_log.write({"step": self.step, **s})
                bar.update(1)
                bar.set_postfix(trainer.progress(res.metrics))
                if self.nonfinite_streak >= cfg.train.max_nonfinite_steps:
                    raise NumericalError(
                        f"loss or gradient was non-finite for {self.nonfinite_streak} steps in a row (last at step "
                        f"{self.step}); stopped before writing a checkpoint. The latest good checkpoint is kept in "
                        f"{self.run_dir / ckpt.CKPT_DIR}. Lower train.lr or check the reward scale."
                    )
                if self.nonfinite_streak == 0 and cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 \
                        and self.step < cfg.train.steps:
                    self.save()
            # A skipped (non-finite) step leaves the parameters untouched, so they are safe to save here.
            self.save()
            ckpt.save_pretrained_atomic(trainer.model, trainer.tokenizer, self.run_dir / "final")
        finally:
            bar.close()
            metrics_log.close()
            samples_log.close()
        return read_jsonl(self.run_dir / METRICS_FILE)


@dataclass
class Run:
    """A configured run: its trainer step and the loop around it (``fit()`` trains)."""

    cfg: RunConfig
    run_dir: Path
    trainer: Any
    loop: RunLoop

    def fit(self) -> list[dict[str, Any]]:
        return self.loop.fit()


def build_run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> Run:
    """Check the run directory, build the trainer named by ``cfg.trainer``, write the config, restore."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    check_run_dir(cfg, run_dir, resume)
    trainer = TRAINERS.get(cfg.trainer)(cfg)
    write_config(cfg, run_dir)
    loop = RunLoop(cfg, run_dir, trainer)
    if resume:
        loop.restore()
    return Run(cfg, run_dir, trainer, loop)


__all__ = ["CONFIG_FILE", "RESUMABLE_KEYS", "Run", "RunLoop", "StepResult", "TrainStep", "build_run",
           "check_run_dir", "write_config"]

"""The run loop every trainer shares: run directory, resume, registered state, cadence, logging, progress.

A trainer is a *step* (``TrainStep``, registered in ``TRAINERS`` under the name ``RunConfig.trainer``
takes); the loop owns everything around it:

1. the run directory: an exclusive lock (``RUN_DIR/.lock``, ``fcntl.flock``) held from its first
   write to the end of the run, so a second writer is refused; refuse to overwrite one holding
   checkpoints, refuse a resume with a changed config; a fresh run truncates stale logs of a try
   that never checkpointed; ``config.yaml`` and ``data_fingerprint.json`` (the sha256 of every dataset
   file) are written once the step was built (bad input leaves nothing behind; a resume whose data
   changed is refused); an unwritable directory is a ``RunDirError`` naming the path and the operation;
2. state: the step's registered objects plus the loop's counters and the global RNGs, saved in every
   checkpoint beside the model and restored by ``--resume`` after the checkpoint's manifest was
   verified (a damaged latest checkpoint is an error naming the previous good one, which
   ``from_checkpoint`` selects);
3. cadence: held-out evaluation, checkpoints, the non-finite streak that stops a run before it writes
   over a good checkpoint, and Ctrl-C: a checkpoint of the last finished step, then ``KeyboardInterrupt``;
4. logging: ``metrics.jsonl``, ``samples.jsonl``, the experiment trackers of ``log.trackers`` (the same
   rows; closed on every way out) and the progress bar.

The run directory's lock and checks live in ``run_dir.py``, Ctrl-C handling in ``interrupts.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, NumericalError, RlfoldError
from rlfold.core.registry import TRAINERS
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers import distributed, sharded
from rlfold.trainers.interrupts import Interrupts, StepSnapshot
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, JsonlLog, RunDirError, close_all, read_jsonl, \
    truncate_after_step
from rlfold.trainers.run_dir import (CONFIG_FILE, DATA_FILE, LOCK_FILE, LOG_FILES, RESUMABLE_KEYS, RunLock, _note,
                                     _reason, check_run_dir, make_run_dir, start_clean, write_config,
                                     write_data_fingerprint)
from rlfold.trainers.state import Counters, GlobalRNG, Stateful, collect_state, restore_state
from rlfold.trainers.trackers import Trackers, check_installed


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

    def data_sources(self) -> list[dict[str, Any]]:
        """The dataset files the step reads (split, path, rows, sha256 ...), for ``data_fingerprint.json``."""

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        """A few numbers for the progress bar."""

    def close(self) -> None:
        """Stop whatever the step runs in the background; called once ``fit`` ends, on every way out."""



# ----- the loop ------------------------------------------------------------------------------------


class RunLoop:
    """Calls ``trainer.step`` ``cfg.train.steps`` times with evaluation, checkpoints and logs around it."""

    def __init__(self, cfg: RunConfig, run_dir: Path, trainer: TrainStep, lock: RunLock | None = None) -> None:
        self.cfg, self.run_dir, self.trainer = cfg, run_dir, trainer
        self.lock = lock
        self.counters = Counters(step=0, nonfinite_total=0, init_eval=None)
        self.nonfinite_streak = 0
        self.rng = GlobalRNG(cfg.seed)
        self.objects: dict[str, Stateful] = {"loop": self.counters, "rng": self.rng, **trainer.state()}
        self.parallel = distributed.current()  # rank 0 alone writes the run directory; checkpoints are sharded

    @property
    def step(self) -> int:
        return int(self.counters["step"])

    def save(self) -> Path:
        name = f"step_{self.step:07d}"
        try:
            if self.parallel.active:
                return sharded.save(self.run_dir, self.step, self.trainer.model, self.trainer.tokenizer,
                                    self.objects, self.cfg.checkpoint.keep, self.parallel)
            return ckpt.save_checkpoint(self.run_dir, self.step, self.trainer.model, self.trainer.tokenizer,
                                        collect_state(self.objects), keep=self.cfg.checkpoint.keep)
        except OSError as exc:
            raise RunDirError(f"cannot write checkpoint {self.run_dir / ckpt.CKPT_DIR / name}: "
                              f"{_reason(exc)}") from exc

    def _save_once(self) -> Path:
        """A checkpoint of the current step, unless ``latest`` already names an intact one of it."""
        name = f"step_{self.step:07d}"
        where = self.run_dir / ckpt.CKPT_DIR / name
        done = ckpt.read_latest(self.run_dir) == name and (where / ckpt.MANIFEST).is_file()
        if self.parallel.broadcast(done):
            return where
        return self.save()

    # ----- 2. resume ----------------------------------------------------------------------------
    def choose_checkpoint(self, from_checkpoint: str | None = None) -> Path | None:
        """The verified checkpoint a resume continues from (None: no checkpoint was ever written)."""
        run_dir, root = self.run_dir, self.run_dir / ckpt.CKPT_DIR
        where = f"--resume {run_dir}"

        def previous_good(bad: str | None) -> str:
            good = ckpt.newest_intact(run_dir, exclude=bad)
            if good is None:
                return f"no intact checkpoint is left in {root}; start a new run (another run_dir)"
            return (f"the previous good checkpoint is {good.name}: continue from it with --resume {run_dir} "
                    f"--from-checkpoint {good.name}")

        def verified(path: Path, damaged: str) -> Path:
            """``path`` if its manifest verifies, else a ConfigError: ``damaged``, the problems, the previous good one."""
            problems = ckpt.verify_checkpoint(path)
            if problems:
                raise ConfigError(f"{damaged}: {'; '.join(problems)}; {previous_good(path.name)}")
            return path

        if from_checkpoint is not None:
            name = str(from_checkpoint).strip()
            if name.isdigit():
                name = f"step_{int(name):07d}"
            have = ", ".join(p.name for p in ckpt.checkpoints(run_dir)) or "none"
            if not ckpt.STEP_RE.fullmatch(name) or not (root / name).is_dir():
                raise ConfigError(f"{where} --from-checkpoint {from_checkpoint}: no such checkpoint in {root} "
                                  f"(it holds: {have})")
            return verified(root / name, f"{where} --from-checkpoint {from_checkpoint}: checkpoint {name} is damaged")
        pointer = ckpt.read_latest(run_dir)
        if pointer is None:
            found = ckpt.checkpoints(run_dir)
            if not found:
                return None
            newest = verified(found[-1], f"{where}: {root / ckpt.LATEST} is missing, and the newest checkpoint "
                                         f"{found[-1].name} is damaged")
            # killed between renaming the first checkpoint into place and writing the pointer to it
            _note(f"{root / ckpt.LATEST} is missing; continuing from the newest checkpoint, {newest.name} "
                  "(verified)")
            return newest
        if not ckpt.STEP_RE.fullmatch(pointer) or not (root / pointer).is_dir():
            raise ConfigError(f"{where}: {root / ckpt.LATEST} names {pointer!r}, which does not exist (a dangling "
                              f"pointer); {previous_good(pointer)}")
        return verified(root / pointer, f"{where}: the latest checkpoint {pointer} is damaged")

    def restore(self, from_checkpoint: str | None = None) -> None:
        """Continue from the latest checkpoint (or ``from_checkpoint``), verified first, dropping later log rows.

        With no checkpoint at all (killed before the first one) the run starts from scratch; any other
        problem is an error that changes nothing on disk.
        """
        where = f"--resume {self.run_dir}"
        path: Path | None = None
        if self.parallel.is_main:
            try:
                ckpt.remove_leftovers(self.run_dir)
            except OSError as exc:
                raise RunDirError(f"{where}: cannot clean {self.run_dir / ckpt.CKPT_DIR}: {_reason(exc)}") from exc
            path = self.choose_checkpoint(from_checkpoint)
        path = self.parallel.broadcast(path)
        if path is None and not self.parallel.is_main:
            return
        if path is None:  # killed before the first checkpoint: start from scratch, dropping its logs
            _note(f"{self.run_dir} has no checkpoint yet: starting from step 0")
            for name in LOG_FILES:
                truncate_after_step(self.run_dir / name, -1)
            return
        state = ckpt.load_state(path)
        try:
            step = int(state["loop"]["step"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: {path / ckpt.STATE_FILE} holds no step counter (state['loop']['step'])") \
                from None
        if self.cfg.train.steps < step:
            raise ConfigError(f"{where}: checkpoint {path.name} is at step {step}, beyond train.steps="
                              f"{self.cfg.train.steps}; pass train.steps={step} or more to continue it")
        if self.parallel.active:
            plain, _ = sharded.split_objects(self.objects)
            restore_state(plain, state, f"{where} ({path.name})")
            sharded.load(path, self.trainer.model, self.objects, self.parallel)
            if self.parallel.is_main:
                self._settle(path, step, from_checkpoint)
            self.parallel.barrier()
            return
        from transformers import AutoModelForCausalLM, PreTrainedModel

        model = self.trainer.model
        # a plain transformers model reloads as its own class (a causal LM, a reward model's classifier)
        auto = type(model) if isinstance(model, PreTrainedModel) else AutoModelForCausalLM
        try:
            loaded = auto.from_pretrained(path, dtype=next(model.parameters()).dtype, local_files_only=True)
            model.load_state_dict(loaded.state_dict())
        except Exception as exc:  # noqa: BLE001  (the manifest matched, so this is another model's checkpoint)
            raise ConfigError(f"{where}: cannot load the model of checkpoint {path.name}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") \
                from exc
        try:
            restore_state(self.objects, state, f"{where} ({path.name})")
        except RlfoldError:
            raise
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{where} ({path.name}): cannot restore the trainer state: {exc}") from exc
        self._settle(path, step, from_checkpoint)

    def _settle(self, path: Path, step: int, from_checkpoint: str | None) -> None:
        """After a restore from ``path``: point ``latest`` at it, set later checkpoints aside, drop later log rows."""
        where = f"--resume {self.run_dir}"
        try:
            if ckpt.read_latest(self.run_dir) != path.name:
                ckpt.atomic_write_text(self.run_dir / ckpt.CKPT_DIR / ckpt.LATEST, path.name)
            later = [p for p in ckpt.checkpoints(self.run_dir) if ckpt.step_of(p) > step] if from_checkpoint else []
            for p in later:  # continuing from an earlier checkpoint: set the later ones aside, never delete them
                dest = p.with_name(f"abandoned-{p.name}")
                n = 1
                while dest.exists():
                    dest, n = p.with_name(f"abandoned-{p.name}.{n}"), n + 1
                os.replace(p, dest)
                _note(f"continuing from {path.name}: moved the later checkpoint {p.name} aside to {dest.name}")
        except OSError as exc:
            raise RunDirError(f"{where}: cannot update {self.run_dir / ckpt.CKPT_DIR}: {_reason(exc)}") from exc
        for name in LOG_FILES:
            truncate_after_step(self.run_dir / name, self.step)

    # ----- fit ----------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        if not self.parallel.is_main:  # the other ranks train in step with rank 0 and write nothing
            return self._fit()
        lock = self.lock if self.lock is not None and self.lock.held else RunLock.acquire(self.run_dir)
        self.lock = lock
        try:
            return self._fit()
        finally:
            lock.release()

    def _fit(self) -> list[dict[str, Any]]:
        cfg, trainer = self.cfg, self.trainer
        logs: list[JsonlLog] = []
        bar = None
        trackers: Trackers | None = None
        primary: BaseException | None = None
        try:
            main = self.parallel.is_main
            trackers = (Trackers.open(cfg, self.run_dir, start_step=self.step + 1 if self.step else 0) if main
                        else Trackers([]))
            if self.counters["init_eval"] is None:
                self.counters["init_eval"] = trainer.begin()
            metrics_log = JsonlLog(self.run_dir / METRICS_FILE) if main else NullLog()
            logs.append(metrics_log)
            samples_log = JsonlLog(self.run_dir / SAMPLES_FILE) if main else NullLog()
            logs.append(samples_log)
            if self.step == 0:
                metrics_log.write({"step": 0, **self.counters["init_eval"]})
                trackers.log({"step": 0, **self.counters["init_eval"]})
            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name,
                       disable=not (cfg.log.progress and main), dynamic_ncols=True)
            with Interrupts() as intr:
                while self.step < cfg.train.steps:
                    self._one_step(intr, metrics_log, samples_log, trackers, bar)
                # A skipped (non-finite) step leaves the parameters untouched, so they are safe to save here.
                self._save_once()
                try:
                    if self.parallel.active:
                        sharded.save_final(trainer.model, trainer.tokenizer, self.run_dir / "final", self.parallel)
                    else:
                        ckpt.save_pretrained_atomic(trainer.model, trainer.tokenizer, self.run_dir / "final")
                except OSError as exc:
                    raise RunDirError(f"cannot write the final model {self.run_dir / 'final'}: "
                                      f"{_reason(exc)}") from exc
        except BaseException as exc:
            primary = exc
            raise
        finally:
            trainer.close()  # e.g. an asynchronous collector's thread, before anything else is torn down
            if bar is not None:
                bar.close()
            try:
                if trackers is not None:
                    trackers.close(primary)  # W&B's offline file is complete only once its run is finished
            finally:
                close_all(logs, primary)
        return read_jsonl(self.run_dir / METRICS_FILE) if self.parallel.is_main else []

    def _one_step(self, intr: Interrupts, metrics_log: JsonlLog, samples_log: JsonlLog, trackers: Trackers,
                  bar: Any) -> None:
        cfg, trainer = self.cfg, self.trainer
        intr.step = self.step
        try:
            intr.snapshot = StepSnapshot(self.objects, trainer.model)
            res = trainer.step(self.step)
            intr.snapshot = None
        except KeyboardInterrupt:
            snapshot, intr.snapshot = intr.snapshot, None
            if not intr.dropped or snapshot is None:
                raise
            snapshot.restore(self.objects)  # the step had written nothing yet: drop it
            saved = self._save_once()
            raise KeyboardInterrupt(f"Ctrl-C during step {self.step + 1}, which was dropped; checkpoint "
                                    f"{saved.name} holds the last finished step ({self.step})") from None
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
        trackers.log(res.metrics)
        trackers.log_samples(self.step, res.samples)
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
        if intr.requested and self.step < cfg.train.steps:
            saved = self._save_once()
            raise KeyboardInterrupt(f"Ctrl-C: stopped after step {self.step}; checkpoint {saved.name} holds it")


class NullLog:
    """The logs of a rank other than 0: rows are dropped (rank 0 writes them)."""

    def write(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Run:
    """A configured run: its trainer step and the loop around it (``fit()`` trains)."""

    cfg: RunConfig
    run_dir: Path
    trainer: Any
    loop: RunLoop

    def fit(self) -> list[dict[str, Any]]:
        return self.loop.fit()

    def close(self) -> None:
        """Give the run directory's lock back without training (``fit`` does it on its way out)."""
        self.trainer.close()
        if self.loop.lock is not None:
            self.loop.lock.release()


def build_run(cfg: RunConfig, run_dir: Path, resume: bool = False, from_checkpoint: str | None = None) -> Run:
    """Lock and check the run directory, build the trainer named by ``cfg.trainer``, restore, write the config.

    The lock is taken before anything is built when the directory exists (a second writer is refused
    at once, writing nothing), else when it is created; the run holds it until ``fit`` ends.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    if from_checkpoint is not None and not resume:
        raise ConfigError(f"--from-checkpoint {from_checkpoint} needs --resume RUN_DIR")
    check_installed(cfg.log.trackers)  # a tracker's missing package, before anything is built or written
    if not distributed.setup(cfg.train.strategy).is_main:  # rank 0 owns the run directory
        trainer = TRAINERS.get(cfg.trainer)(cfg)
        loop = RunLoop(cfg, run_dir, trainer)
        if resume:
            loop.restore(from_checkpoint)
        return Run(cfg, run_dir, trainer, loop)
    lock = RunLock.acquire(run_dir) if run_dir.is_dir() else None
    try:
        check_run_dir(cfg, run_dir, resume)
        trainer = TRAINERS.get(cfg.trainer)(cfg)
        if lock is None:
            make_run_dir(run_dir)
            lock = RunLock.acquire(run_dir)
            check_run_dir(cfg, run_dir, resume)  # under the lock now: nothing appeared meanwhile
        write_data_fingerprint(run_dir, trainer.data_sources(), resume)
        loop = RunLoop(cfg, run_dir, trainer, lock)
        if resume:
            loop.restore(from_checkpoint)
        else:
            try:
                ckpt.remove_leftovers(run_dir)  # a first checkpoint write cut short
            except OSError as exc:
                raise RunDirError(f"cannot clean {run_dir / ckpt.CKPT_DIR}: {_reason(exc)}") from exc
            start_clean(run_dir)
        write_config(cfg, run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Run(cfg, run_dir, trainer, loop)


__all__ = ["CONFIG_FILE", "DATA_FILE", "LOCK_FILE", "RESUMABLE_KEYS", "Run", "RunDirError", "RunLock", "RunLoop",
           "StepResult", "TrainStep", "build_run", "check_run_dir", "make_run_dir", "start_clean", "write_config",
           "write_data_fingerprint"]

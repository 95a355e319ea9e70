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
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import yaml
from tqdm.auto import tqdm

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError, NumericalError, RlfoldError
from rlfold.core.registry import TRAINERS
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import (METRICS_FILE, SAMPLES_FILE, JsonlLog, RunDirError, close_all, read_jsonl,
                                     truncate_after_step)
from rlfold.trainers.state import Counters, GlobalRNG, Stateful, collect_state, restore_state
from rlfold.trainers.trackers import Trackers, check_installed

CONFIG_FILE = "config.yaml"
DATA_FILE = "data_fingerprint.json"  # the dataset files a run read: path, format, rows, sha256
LOCK_FILE = ".lock"
LOG_FILES = (METRICS_FILE, SAMPLES_FILE)
# Keys a resumed run may change without invalidating the checkpoint.
RESUMABLE_KEYS = {"train.steps", "checkpoint.every", "checkpoint.keep", "log.progress", "log.samples_per_step",
                  "eval.every", "run_dir", "threads", "log.trackers", "log.project", "log.run_name"}


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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# ----- 1. the run directory ------------------------------------------------------------------------


class RunLock:
    """Exclusive lock of a run directory: ``fcntl.flock`` on ``RUN_DIR/.lock``, which names the holder.

    A second process is refused with a ``RunDirError`` naming the holder's pid. The kernel drops a
    flock when its process dies, so a lock file left by a killed run does not block. Within one
    process a directory's lock is shared (re-entrant, counted): the lock guards against other
    processes, and tests build several ``Run`` objects of one directory. ``release`` (or garbage
    collection of the handle) gives it back; the last release removes the lock file.
    """

    _held: dict[Path, dict[str, Any]] = {}

    def __init__(self, key: Path) -> None:
        self.key = key
        self._finalizer = weakref.finalize(self, RunLock._release_key, key, os.getpid())

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        key = Path(os.path.abspath(run_dir))
        held = cls._held.get(key)
        if held is not None and held["pid"] == os.getpid():
            held["count"] += 1
            return cls(key)
        path = key / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot create the lock file {path} of run directory {run_dir}: "
                                  f"{_reason(exc)}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(
                        f"run directory {run_dir} is in use by another rlfold process ({holder}); nothing was "
                        "written. Wait for that run to end (or stop it), or choose another run_dir") from None
                raise RunDirError(f"cannot lock {path}: {_reason(exc)}") from exc
            # A holder releasing the lock removes the file: make sure we locked the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\nstarted {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write the lock file {path}: {_reason(exc)}") from exc
        cls._held[key] = {"fd": fd, "count": 1, "pid": os.getpid(), "path": path}
        return cls(key)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    @classmethod
    def _release_key(cls, key: Path, pid: int) -> None:
        held = cls._held.get(key)
        if held is None or held["pid"] != pid or os.getpid() != pid:  # a forked child never releases
            return
        held["count"] -= 1
        if held["count"] > 0:
            return
        del cls._held[key]
        try:
            if os.path.samestat(os.fstat(held["fd"]), os.stat(held["path"])):
                os.unlink(held["path"])
        except OSError:
            pass  # an unwritable or vanished directory: the kernel still drops the lock below
        os.close(held["fd"])


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    if "pid" not in fields:
        return "pid unknown"
    return f"pid {fields['pid']}" + (f", started {fields['started']}" if "started" in fields else "")


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents); a ``RunDirError`` naming the path if that is impossible."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: {exc.filename or run_dir} exists and is not a "
                          "directory") from exc
    except NotADirectoryError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: a parent of it is a regular file, not a "
                          "directory") from exc
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: {_reason(exc)}") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise RunDirError(f"cannot create run directory {run_dir!r}: {exc}") from exc


def _has_checkpoints(run_dir: Path) -> bool:
    return bool(ckpt.checkpoints(run_dir)) or ckpt.read_latest(run_dir) is not None


def _read_saved_config(run_dir: Path) -> dict[str, Any]:
    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a run directory?")
    try:
        saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        marked = isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None
        where = f"{cfg_file}:{exc.problem_mark.line + 1}:{exc.problem_mark.column + 1}" if marked else str(cfg_file)
        problem = (exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None) or str(exc).splitlines()[0]
        raise ConfigError(f"--resume {run_dir}: {where}: the saved config is not valid YAML ({problem}); "
                          "was it edited or damaged?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume {run_dir}: cannot read {cfg_file}: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume {run_dir}: {cfg_file} holds a {type(saved).__name__}, not the mapping of a "
                          "run's config; was it edited or damaged?")
    return saved


def check_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """A resume needs the same config (but ``RESUMABLE_KEYS``); a new run must not reuse checkpoints."""
    if resume:
        saved = _flatten(_read_saved_config(run_dir))
        now = _flatten(cfg.model_dump(mode="json"))
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS)
        if diff:
            raise ConfigError(
                f"--resume {run_dir}: the config differs from the run's saved {CONFIG_FILE} in "
                + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diff)
            )
    elif run_dir.is_dir() and _has_checkpoints(run_dir):
        raise ConfigError(
            f"run directory {run_dir} already holds checkpoints; pass --resume {run_dir} "
            "to continue it, or choose another run_dir"
        )


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    make_run_dir(run_dir)
    try:
        ckpt.atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    except OSError as exc:
        raise RunDirError(f"cannot write {run_dir / CONFIG_FILE}: {_reason(exc)}") from exc


def write_data_fingerprint(run_dir: Path, sources: list[dict[str, Any]], resume: bool) -> None:
    """Write ``DATA_FILE`` (every dataset file's path, rows and sha256); a resume whose files changed since
    the run started is refused, naming the file."""
    path = run_dir / DATA_FILE
    if resume and path.is_file():
        try:
            saved = {(s["split"], s["path"]): s for s in json.loads(path.read_text(encoding="utf-8"))["files"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"--resume {run_dir}: cannot read {path}: {exc}") from None
        for src in sources:
            old = saved.get((src["split"], src["path"]))
            if old is not None and old.get("sha256") != src["sha256"]:
                raise DataError(f"--resume {run_dir}: dataset file {src['path']} changed since the run started "
                                f"(sha256 {old.get('sha256', '?')[:12]}... -> {src['sha256'][:12]}..., rows "
                                f"{old.get('rows')} -> {src['rows']}); resume with the data the run was started on")
    try:
        ckpt.atomic_write_text(path, json.dumps({"files": sources}, indent=2) + "\n")
    except OSError as exc:
        raise RunDirError(f"cannot write {path}: {_reason(exc)}") from exc


def start_clean(run_dir: Path) -> None:
    """A fresh run: empty the logs an earlier try left (it never checkpointed, else the run is refused)."""
    stale = [name for name in LOG_FILES if (run_dir / name).is_file() and (run_dir / name).stat().st_size]
    for name in stale:
        truncate_after_step(run_dir / name, -1)
    if stale:
        print(f"rlfold: {run_dir} holds {' and '.join(stale)} of an earlier try without checkpoints; "
              "starting them afresh", file=sys.stderr)


def _note(text: str) -> None:
    print(f"rlfold: {text}", file=sys.stderr)


# ----- 3. Ctrl-C -----------------------------------------------------------------------------------


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _copy_containers(x: Any) -> Any:
    """A copy of the containers of a state; tensors are kept (their version counters tell if they change)."""
    if isinstance(x, dict):
        return {k: _copy_containers(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy_containers(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_copy_containers(v) for v in x)
    return x


class _StepSnapshot:
    """The registered state as a step starts, and whether the step has written a tensor of it (or a parameter)."""

    def __init__(self, objects: dict[str, Stateful], model: Any) -> None:
        self.state = {name: _copy_containers(obj.state_dict()) for name, obj in objects.items()}
        params = list(model.parameters()) + list(model.buffers()) if hasattr(model, "parameters") else []
        self.watched = [*params, *_tensors(self.state)]
        self.versions = [t._version for t in self.watched]

    def touched(self) -> bool:
        return any(t._version != v for t, v in zip(self.watched, self.versions))

    def restore(self, objects: dict[str, Stateful]) -> None:
        for name, obj in objects.items():
            obj.load_state_dict(self.state[name])


class _Interrupts:
    """SIGINT during ``fit``. The first Ctrl-C stops at a step boundary, with a checkpoint of the last
    finished step: a step that has not written any parameter or state tensor yet (generating, scoring)
    is dropped at once and the registered state put back as it began; one already updating is finished
    first. A second Ctrl-C stops at once (a checkpoint write it cuts short is atomic)."""

    def __init__(self) -> None:
        self.requested = False
        self.dropped = False
        self.snapshot: _StepSnapshot | None = None
        self.step = 0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt("a second Ctrl-C stopped the run at once")
        self.requested = True
        if self.snapshot is not None and not self.snapshot.touched():
            self.dropped = True
            raise KeyboardInterrupt
        _note(f"Ctrl-C: finishing step {self.step + 1}, then saving a checkpoint (Ctrl-C again stops at once, "
              "keeping the latest checkpoint)")


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

    @property
    def step(self) -> int:
        return int(self.counters["step"])

    def save(self) -> Path:
        name = f"step_{self.step:07d}"
        try:
            return ckpt.save_checkpoint(self.run_dir, self.step, self.trainer.model, self.trainer.tokenizer,
                                        collect_state(self.objects), keep=self.cfg.checkpoint.keep)
        except OSError as exc:
            raise RunDirError(f"cannot write checkpoint {self.run_dir / ckpt.CKPT_DIR / name}: "
                              f"{_reason(exc)}") from exc

    def _save_once(self) -> Path:
        """A checkpoint of the current step, unless ``latest`` already names an intact one of it."""
        name = f"step_{self.step:07d}"
        if ckpt.read_latest(self.run_dir) == name and (self.run_dir / ckpt.CKPT_DIR / name / ckpt.MANIFEST).is_file():
            return self.run_dir / ckpt.CKPT_DIR / name
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

        if from_checkpoint is not None:
            name = str(from_checkpoint).strip()
            if name.isdigit():
                name = f"step_{int(name):07d}"
            have = ", ".join(p.name for p in ckpt.checkpoints(run_dir)) or "none"
            if not ckpt.STEP_RE.fullmatch(name) or not (root / name).is_dir():
                raise ConfigError(f"{where} --from-checkpoint {from_checkpoint}: no such checkpoint in {root} "
                                  f"(it holds: {have})")
            problems = ckpt.verify_checkpoint(root / name)
            if problems:
                raise ConfigError(f"{where} --from-checkpoint {from_checkpoint}: checkpoint {name} is damaged: "
                                  f"{'; '.join(problems)}; {previous_good(name)}")
            return root / name
        pointer = ckpt.read_latest(run_dir)
        if pointer is None:
            found = ckpt.checkpoints(run_dir)
            if not found:
                return None
            newest = found[-1]
            problems = ckpt.verify_checkpoint(newest)
            if problems:
                raise ConfigError(f"{where}: {root / ckpt.LATEST} is missing, and the newest checkpoint "
                                  f"{newest.name} is damaged: {'; '.join(problems)}; {previous_good(newest.name)}")
            # killed between renaming the first checkpoint into place and writing the pointer to it
            _note(f"{root / ckpt.LATEST} is missing; continuing from the newest checkpoint, {newest.name} "
                  "(verified)")
            return newest
        if not ckpt.STEP_RE.fullmatch(pointer) or not (root / pointer).is_dir():
            raise ConfigError(f"{where}: {root / ckpt.LATEST} names {pointer!r}, which does not exist (a dangling "
                              f"pointer); {previous_good(pointer)}")
        problems = ckpt.verify_checkpoint(root / pointer)
        if problems:
            raise ConfigError(f"{where}: the latest checkpoint {pointer} is damaged: {'; '.join(problems)}; "
                              f"{previous_good(pointer)}")
        return root / pointer

    def restore(self, from_checkpoint: str | None = None) -> None:
        """Continue from the latest checkpoint (or ``from_checkpoint``), verified first, dropping later log rows.

        With no checkpoint at all (killed before the first one) the run starts from scratch; any other
        problem is an error that changes nothing on disk.
        """
        where = f"--resume {self.run_dir}"
        try:
            ckpt.remove_leftovers(self.run_dir)
        except OSError as exc:
            raise RunDirError(f"{where}: cannot clean {self.run_dir / ckpt.CKPT_DIR}: {_reason(exc)}") from exc
        path = self.choose_checkpoint(from_checkpoint)
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
        from transformers import AutoModelForCausalLM

        model = self.trainer.model
        try:
            loaded = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype,
                                                          local_files_only=True)
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
            trackers = Trackers.open(cfg, self.run_dir, start_step=self.step + 1 if self.step else 0)
            if self.counters["init_eval"] is None:
                self.counters["init_eval"] = trainer.begin()
            metrics_log = JsonlLog(self.run_dir / METRICS_FILE)
            logs.append(metrics_log)
            samples_log = JsonlLog(self.run_dir / SAMPLES_FILE)
            logs.append(samples_log)
            if self.step == 0:
                metrics_log.write({"step": 0, **self.counters["init_eval"]})
                trackers.log({"step": 0, **self.counters["init_eval"]})
            bar = tqdm(total=cfg.train.steps, initial=self.step, desc=cfg.name, disable=not cfg.log.progress,
                       dynamic_ncols=True)
            with _Interrupts() as intr:
                while self.step < cfg.train.steps:
                    self._one_step(intr, metrics_log, samples_log, trackers, bar)
                # A skipped (non-finite) step leaves the parameters untouched, so they are safe to save here.
                self._save_once()
                try:
                    ckpt.save_pretrained_atomic(trainer.model, trainer.tokenizer, self.run_dir / "final")
                except OSError as exc:
                    raise RunDirError(f"cannot write the final model {self.run_dir / 'final'}: "
                                      f"{_reason(exc)}") from exc
        except BaseException as exc:
            primary = exc
            raise
        finally:
            if bar is not None:
                bar.close()
            try:
                if trackers is not None:
                    trackers.close(primary)  # W&B's offline file is complete only once its run is finished
            finally:
                close_all(logs, primary)
        return read_jsonl(self.run_dir / METRICS_FILE)

    def _one_step(self, intr: _Interrupts, metrics_log: JsonlLog, samples_log: JsonlLog, trackers: Trackers,
                  bar: Any) -> None:
        cfg, trainer = self.cfg, self.trainer
        intr.step = self.step
        try:
            intr.snapshot = _StepSnapshot(self.objects, trainer.model)
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

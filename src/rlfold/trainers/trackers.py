"""Experiment trackers (``log.trackers``): each metrics row and the logged samples, also sent to a tracker.

``metrics.jsonl`` stays the record; a tracker gets the same rows (same metric names, same step
numbers) and the samples as a table where it has one. Trackers are registered in ``TRACKERS`` (core
registry, so the config checks their names) as classes with the ``Tracker`` methods, the module they
need (``package``) and the rlfold extra that installs it (``extra``). Each writes under the run
directory and nothing goes over the network: TensorBoard event files in ``RUN/tb``, W&B in offline
mode (unless ``WANDB_MODE`` is set) in ``RUN/wandb``, trackio's local database in ``RUN/trackio``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, RlfoldError
from rlfold.core.registry import TRACKERS

TB_DIR = "tb"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "rlfold-run-id"  # the W&B run id, so a resumed run continues the same W&B run
TRACKIO_DIR = "trackio"
SAMPLES_KEY = "samples"


class TrackerError(RlfoldError):
    """A tracker could not open, log or close (names the tracker and what it was doing)."""


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker is opened with: where the run lives, its names, the first step this session logs."""

    run_dir: Path
    project: str
    name: str
    start_step: int  # 0 for a new run; k + 1 for a run resumed at step k (later rows of an earlier try go)
    config: dict[str, Any]

    @property
    def resumed(self) -> bool:
        """Whether this session continues a run that already logged steps."""
        return self.start_step > 0


class Tracker(Protocol):
    """One experiment tracker as the run loop sees it."""

    package: ClassVar[str]  # the module it imports (checked before the run is built)
    extra: ClassVar[str]  # ``pip install 'rlfold[<extra>]'`` installs it

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the numeric metrics of ``step``."""

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Record the sample completions of ``step`` (the rows of samples.jsonl, without ``step``)."""

    def close(self, failed: bool) -> None:
        """Flush and finish (``failed``: the run stops on an error or Ctrl-C)."""


def check_installed(names: Sequence[str]) -> None:
    """Refuse a configured tracker whose package is missing, naming the extra that installs it."""
    for i, name in enumerate(names):
        cls = TRACKERS.get(name)
        try:
            found = importlib.util.find_spec(cls.package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigError(f"log.trackers[{i}]={name}: the {name} tracker needs the Python package "
                              f"{cls.package!r}, which is not installed; install it with: "
                              f"pip install 'rlfold[{cls.extra}]'")


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    """The metrics of a row a tracker can plot: numbers (NaN and inf included), without ``step``."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def table(step: int, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns (``step`` first, then every key in first-seen order) and cells of a samples table;
    numbers stay numbers, None becomes "", anything else its text."""
    columns = ["step"]
    for row in rows:
        columns += [k for k in row if k not in columns]

    def cell(v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        return "" if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))

    return columns, [[step, *(cell(row.get(c)) for c in columns[1:])] for row in rows]


class Trackers:
    """The configured trackers as one: every call goes to each, in the order of ``log.trackers``."""

    def __init__(self, opened: list[tuple[str, Tracker]]) -> None:
        self.opened = opened

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: Path, start_step: int) -> Trackers:
        """Open every tracker of ``cfg.log.trackers``; if one fails, those already open are closed."""
        run_dir = Path(os.path.abspath(run_dir))
        ctx = TrackerContext(run_dir=run_dir, project=cfg.log.project, name=cfg.log.run_name or run_dir.name,
                             start_step=start_step, config=cfg.model_dump(mode="json"))
        check_installed(cfg.log.trackers)
        opened: list[tuple[str, Tracker]] = []
        for name in cfg.log.trackers:
            try:
                opened.append((name, TRACKERS.get(name)(ctx)))
            except BaseException as exc:
                cls(opened).close(exc)
                if isinstance(exc, RlfoldError) or not isinstance(exc, Exception):
                    raise
                raise TrackerError(f"log.trackers: cannot open the {name} tracker in {run_dir}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        return cls(opened)

    def log(self, row: dict[str, Any]) -> None:
        """Send one metrics.jsonl row (its ``step`` and numeric metrics) to every tracker."""
        if not self.opened:
            return
        step, metrics = int(row["step"]), _numeric(row)
        for name, tracker in self.opened:
            self._call(name, f"log the metrics of step {step}", tracker.log, step, metrics)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Send the samples of ``step`` to every tracker (nothing when there are none)."""
        if not rows:
            return
        for name, tracker in self.opened:
            self._call(name, f"log the samples of step {step}", tracker.log_samples, step, rows)

    def close(self, primary: BaseException | None) -> None:
        """Close every tracker; a failure is raised only when no earlier exception (``primary``) is on its way out."""
        first: RlfoldError | None = None
        opened, self.opened = self.opened, []
        for name, tracker in opened:
            try:
                self._call(name, "finish", tracker.close, primary is not None)
            except RlfoldError as exc:
                first = first or exc
        if first is not None and primary is None:
            raise first

    @staticmethod
    def _call(name: str, what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except RlfoldError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tracker's own error, named with the tracker
            raise TrackerError(f"the {name} tracker could not {what}: {type(exc).__name__}: {exc}") from exc


# ----- the trackers ------------------------------------------------------------------------------


def _markdown_cell(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """TensorBoard event files in ``RUN/tb``: one scalar per metric, the samples as a markdown text table.

    A resumed run writes a new event file that purges the events an earlier try logged from
    ``start_step`` on, so every step reads back once."""

    package: ClassVar[str] = "tensorboard"
    extra: ClassVar[str] = "tensorboard"

    def __init__(self, ctx: TrackerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(ctx.run_dir / TB_DIR), purge_step=ctx.start_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One scalar event per metric."""
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The samples as a markdown table (TensorBoard's text tab)."""
        columns, data = table(step, rows)
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_markdown_cell(v) for v in r) + " |" for r in data]
        self.writer.add_text(SAMPLES_KEY, "\n".join(lines), global_step=step)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        """Flush and close the event file."""
        self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker:
    """A Weights & Biases run in ``RUN/wandb``, offline unless ``WANDB_MODE`` says otherwise.

    The run id is kept in ``RUN/wandb/rlfold-run-id``, so a resumed run continues the same W&B run
    (each session is its own offline file; ``wandb sync RUN/wandb/offline-run-*`` uploads them). The
    offline file is complete once ``close`` finished the run."""

    package: ClassVar[str] = "wandb"
    extra: ClassVar[str] = "wandb"

    def __init__(self, ctx: TrackerContext) -> None:
        import wandb

        self._wandb = wandb
        root = ctx.run_dir / WANDB_DIR
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if ctx.resumed and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(8)
            id_file.write_text(run_id + "\n", encoding="utf-8")
        # While this tracker is open, unless the user set them: WANDB_MODE=offline in the environment (W&B's
        # process-wide settings, which its telemetry reads, come from it: a mode passed to init alone still
        # lets the telemetry post to the W&B host), WANDB_DATA_DIR (where W&B stages the logged tables for a
        # later `wandb sync`; default ~/.local/share/wandb) and WANDB_CACHE_DIR (its artifact cache and
        # service logs; default ~/.cache/wandb) under the run.
        defaults = {"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "data"),
                    "WANDB_CACHE_DIR": str(root / "cache")}
        self._env_set = [key for key in defaults if not os.environ.get(key)]
        os.environ.update({key: defaults[key] for key in self._env_set})
        try:
            self.run = wandb.init(project=ctx.project, name=ctx.name, id=run_id, resume="allow",
                                  dir=str(ctx.run_dir), config=ctx.config,
                                  settings=wandb.Settings(console="off", quiet=True))
        except BaseException:
            self._restore_env()
            raise

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One history row at ``step``."""
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The samples as a ``wandb.Table`` under ``samples`` at ``step``."""
        columns, data = table(step, rows)
        self.run.log({SAMPLES_KEY: self._wandb.Table(columns=columns, data=data)}, step=step)

    def close(self, failed: bool) -> None:
        """Finish the run (exit code 1 when the run stops on an error)."""
        try:
            self.run.finish(exit_code=1 if failed else 0)
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        """Take back the environment variables ``__init__`` set."""
        for key in self._env_set:
            os.environ.pop(key, None)
        self._env_set = []


def _import_trackio(wanted: Path) -> tuple[Any, Path]:
    """Import trackio with its storage at ``wanted`` (or the user's ``TRACKIO_DIR``), and where it stores.

    trackio reads ``TRACKIO_DIR`` once, when it is first imported: a later run in the same process
    keeps the directory of the first."""
    if "trackio" in sys.modules or os.environ.get("TRACKIO_DIR"):
        trackio = importlib.import_module("trackio")
    else:
        os.environ["TRACKIO_DIR"] = str(wanted)
        try:
            trackio = importlib.import_module("trackio")
        finally:
            del os.environ["TRACKIO_DIR"]
    from trackio.utils import TRACKIO_DIR as where

    return trackio, Path(where)


@TRACKERS.register("trackio")
class TrackioTracker:
    """A trackio run in its local database (``RUN/trackio/<project>.db``); never a Space or a server.

    A resumed run continues the trackio run of the same name."""

    package: ClassVar[str] = "trackio"
    extra: ClassVar[str] = "trackio"

    def __init__(self, ctx: TrackerContext) -> None:
        for var in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
            if os.environ.get(var):
                raise ConfigError(f"log.trackers: trackio logs locally only (under {ctx.run_dir / TRACKIO_DIR}), "
                                  f"but {var}={os.environ[var]} asks it to send the metrics away; unset {var}")
        trackio, self.where = _import_trackio(ctx.run_dir / TRACKIO_DIR)
        self._trackio = trackio
        if self.where != ctx.run_dir / TRACKIO_DIR:
            print(f"rlfold: trackio stores this run in {self.where} (TRACKIO_DIR, or trackio imported earlier in "
                  "this process)", file=sys.stderr)
        self.run = trackio.init(project=ctx.project, name=ctx.name, config=ctx.config,
                                resume="allow" if ctx.resumed else "never", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One metrics row at ``step``."""
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The samples as a ``trackio.Table`` under ``samples`` at ``step``."""
        columns, data = table(step, rows)
        self.run.log({SAMPLES_KEY: self._trackio.Table(columns=columns, data=data)}, step=step)

    def close(self, failed: bool) -> None:
        """Write what is buffered to the database and finish the run (trackio's current run: this one)."""
        self._trackio.finish()


__all__ = ["SAMPLES_KEY", "TB_DIR", "TRACKIO_DIR", "WANDB_DIR", "WANDB_ID_FILE", "Tracker", "TrackerContext",
           "TrackerError", "Trackers", "TensorBoardTracker", "TrackioTracker", "WandbTracker", "check_installed",
           "table"]

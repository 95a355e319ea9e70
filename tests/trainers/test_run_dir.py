"""The run directory: exclusive lock, stale logs, verified resume, safe load, refusals, unwritable paths, Ctrl-C.

Runs are tiny (2 steps of 2 prompts x 2 samples). The lock tests use a real second process
(``python -m rlfold.cli``) with no wall-clock timeout: the first run blocks on a release file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlfold.cli import main
from rlfold.core.config_loader import load_config
from rlfold.core.errors import RlfoldError
from rlfold.rewards import REWARDS
from rlfold.rewards.arith import exact_match
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.loop import LOCK_FILE, RunLock, build_run
from rlfold.trainers.metrics import METRICS_FILE, SAMPLES_FILE, JsonlLog, RunDirError, read_jsonl
from rlfold.trainers.state import GlobalRNG, collect_state

RECIPES = Path(__file__).resolve().parents[2] / "src/rlfold/recipes"
TINY = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4",
        "log.progress=false", "threads=1"]


def _train(run: Path, *extra: str, recipe: str = "grpo") -> list[str]:
    return ["train", recipe, *TINY, f"run_dir={run}", *extra]


def _rc(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _fails(capsys, argv: list[str]) -> str:
    rc, err = _rc(capsys, argv)
    assert rc == 2, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    return err


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / METRICS_FILE)]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at steps 1 and 2 (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(_train(run, "checkpoint.every=1")) == 0
    assert ckpt.read_latest(run) == "step_0000002"
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    import shutil

    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _resume(run: Path, *extra: str) -> list[str]:
    return [*_train(run, "checkpoint.every=1", *extra), "--resume", str(run)]


# ----- 1. the lock ---------------------------------------------------------------------------------

GATE = '''
import os
import time
from pathlib import Path

from rlfold.rewards import REWARDS
from rlfold.rewards.arith import exact_match


def gated_match(prompts, completions, finishes):
    """exact_match that, once the run logged a row, waits for a release file (test helper)."""
    metrics, waiting, release = os.environ["RLFOLD_GATE"].split(os.pathsep)
    if Path(metrics).is_file() and Path(metrics).read_text().strip():
        Path(waiting).write_text(str(os.getpid()))
        while not Path(release).exists():
            time.sleep(0.05)
    return exact_match(prompts, completions, finishes)


if "gated_match" not in REWARDS:
    REWARDS.register("gated_match")(gated_match)
'''


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, capsys):
    plugin = tmp_path / "gate.py"
    plugin.write_text(GATE)
    run, waiting, release = tmp_path / "run", tmp_path / "waiting", tmp_path / "release"
    argv = _train(run, f"imports=[{plugin}]", "rewards=[{name: gated_match}]", "checkpoint.every=1")
    env = {**os.environ, "RLFOLD_GATE": os.pathsep.join(map(str, (run / METRICS_FILE, waiting, release)))}
    first = subprocess.Popen([sys.executable, "-m", "rlfold.cli", *argv], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not waiting.exists():  # bounded by the first run's steps: it blocks or it ends
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        holder = (run / LOCK_FILE).read_text()
        assert f"pid {first.pid}" in holder and "started" in holder
        before = _files(run)
        for second in (argv, [*argv, "--resume", str(run)]):  # a second run, and a resume of the running one
            err = _fails(capsys, second)
            assert f"run directory {run} is in use" in err and f"pid {first.pid}" in err, err
            assert _files(run) == before  # nothing written
    finally:
        release.touch()
        out, err = first.communicate()
    assert first.returncode == 0, err[-3000:]
    assert _steps(run) == [0, 1, 2]
    assert not (run / LOCK_FILE).exists()  # released on exit


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import os, signal, sys; from rlfold.trainers.loop import RunLock; "
            "lock = RunLock.acquire(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(run)])
    assert proc.returncode == -signal.SIGKILL
    assert (run / LOCK_FILE).read_text().startswith("pid ")  # the stale file stays
    lock = RunLock.acquire(run)
    assert (run / LOCK_FILE).read_text().startswith(f"pid {os.getpid()}\n")
    lock.release()
    assert not (run / LOCK_FILE).exists()


def test_the_lock_is_released_when_a_run_fails(tmp_path, capsys):
    run = tmp_path / "run"
    err = _fails(capsys, _train(run, "rewards=[{name: _test_run_dir_raises}]"))
    assert "_test_run_dir_raises" in err
    assert not (run / LOCK_FILE).exists()
    assert all(not str(k).startswith(str(run)) for k in RunLock._held)
    # the lock of a directory that exists is taken before the trainer is built, and given back on error
    err = _fails(capsys, _train(run, "model.path=/nonexistent-model"))
    assert not (run / LOCK_FILE).exists() and not (run / ckpt.CKPT_DIR).exists()


def _raises(prompts, completions, finishes):
    """Raises on its first call (test reward)."""
    raise ValueError("boom")


if "_test_run_dir_raises" not in REWARDS:
    REWARDS.register("_test_run_dir_raises")(_raises)


# ----- 2. stale logs -------------------------------------------------------------------------------


def test_a_fresh_run_truncates_the_logs_of_a_try_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / METRICS_FILE).write_text("".join(json.dumps({"step": s, "reward/mean": -7.0}) + "\n" for s in range(5)))
    (run / SAMPLES_FILE).write_text(json.dumps({"step": 4, "completion": "stale"}) + "\n")
    rc, err = _rc(capsys, _train(run))
    assert rc == 0, err
    assert f"{run} holds {METRICS_FILE} and {SAMPLES_FILE} of an earlier try without checkpoints" in err
    assert _steps(run) == [0, 1, 2]
    assert all(r.get("reward/mean") != -7.0 for r in read_jsonl(run / METRICS_FILE))
    assert "stale" not in (run / SAMPLES_FILE).read_text()


# ----- 3. verified resume --------------------------------------------------------------------------


def test_every_checkpoint_holds_a_manifest_of_its_files(trained):
    for step in (1, 2):
        path = trained / ckpt.CKPT_DIR / f"step_{step:07d}"
        listed = json.loads((path / ckpt.MANIFEST).read_text())["files"]
        on_disk = sorted(p.name for p in path.iterdir() if p.name != ckpt.MANIFEST)
        assert sorted(listed) == on_disk and ckpt.STATE_FILE in listed and "model.safetensors" in listed
        assert ckpt.verify_checkpoint(path) == []


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
    (lambda p: _flip(p / "model.safetensors"), ["model.safetensors fails its sha256 check"]),
    (lambda p: (p / ckpt.STATE_FILE).unlink(), [f"{ckpt.STATE_FILE} is missing"]),
    (lambda p: (p / ckpt.MANIFEST).unlink(), [f"{ckpt.MANIFEST} is missing"]),
    (lambda p: (p / "tokenizer.json").write_text("{}"), ["tokenizer.json has 2 bytes"]),
])
def test_a_damaged_latest_checkpoint_names_the_problem_and_the_previous_good_one(run_copy, capsys, damage, words):
    damage(run_copy / ckpt.CKPT_DIR / "step_0000002")
    before = _files(run_copy)
    err = _fails(capsys, _resume(run_copy, "train.steps=3"))
    for w in ["the latest checkpoint step_0000002 is damaged", *words,
              f"the previous good checkpoint is step_0000001: continue from it with --resume {run_copy} "
              "--from-checkpoint step_0000001"]:
        assert w in err, (w, err)
    assert _files(run_copy) == before


def test_a_dangling_latest_is_an_error_not_a_restart(run_copy, capsys):
    (run_copy / ckpt.CKPT_DIR / ckpt.LATEST).write_text("step_0000009")
    before = _files(run_copy)
    err = _fails(capsys, _resume(run_copy, "train.steps=3"))
    assert "names 'step_0000009', which does not exist (a dangling pointer)" in err
    assert "--from-checkpoint step_0000002" in err
    assert _files(run_copy) == before


def test_a_missing_latest_beside_checkpoints(run_copy, capsys):
    root = run_copy / ckpt.CKPT_DIR
    (root / ckpt.LATEST).unlink()  # as if killed between renaming step 2 into place and writing the pointer
    _flip(root / "step_0000002" / "model.safetensors")
    before = _files(run_copy)
    err = _fails(capsys, _resume(run_copy, "train.steps=3"))  # the newest is damaged: refused, nothing changed
    assert "latest is missing, and the newest checkpoint step_0000002 is damaged" in err
    assert "--from-checkpoint step_0000001" in err and _files(run_copy) == before
    _flip(root / "step_0000002" / "model.safetensors")  # intact again: continue from it
    rc, err = _rc(capsys, _resume(run_copy, "train.steps=3"))
    assert rc == 0, err
    assert "latest is missing; continuing from the newest checkpoint, step_0000002 (verified)" in err
    assert _steps(run_copy) == [0, 1, 2, 3]


def test_from_checkpoint_continues_from_an_earlier_checkpoint(run_copy, capsys):
    _flip(run_copy / ckpt.CKPT_DIR / "step_0000002" / "model.safetensors")
    err = _fails(capsys, [*_resume(run_copy), "--from-checkpoint", "step_0000002"])  # damaged: refused too
    assert "checkpoint step_0000002 is damaged" in err and "step_0000001" in err
    err = _fails(capsys, [*_resume(run_copy), "--from-checkpoint", "step_0000007"])
    assert "no such checkpoint" in err and "step_0000001, step_0000002" in err
    rc, err = _rc(capsys, [*_resume(run_copy, "checkpoint.keep=5"), "--from-checkpoint", "1"])
    assert rc == 0, err
    assert "moved the later checkpoint step_0000002 aside to abandoned-step_0000002" in err
    assert (run_copy / ckpt.CKPT_DIR / "abandoned-step_0000002").is_dir()  # kept, not deleted
    assert _steps(run_copy) == [0, 1, 2]
    assert ckpt.read_latest(run_copy) == "step_0000002" and ckpt.verify_checkpoint(ckpt.latest_checkpoint(run_copy)) == []
    assert "needs --resume" in _fails(capsys, [*_train(run_copy), "--from-checkpoint", "1"])


def test_a_resume_without_any_checkpoint_starts_from_step_0(tmp_path, capsys):
    run = tmp_path / "run"
    build_run(load_config(RECIPES / "grpo.yaml", [*TINY, "checkpoint.every=0"]), run).close()
    (run / METRICS_FILE).write_text('{"step": 0}\n{"step": 1}\n')
    rc, err = _rc(capsys, [*_train(run, "checkpoint.every=0"), "--resume", str(run)])
    assert rc == 0, err
    assert "has no checkpoint yet: starting from step 0" in err
    assert _steps(run) == [0, 1, 2]


def test_an_interrupted_resave_of_a_step_is_put_back(run_copy):
    root = run_copy / ckpt.CKPT_DIR
    os.replace(root / "step_0000002", root / ".old-step_0000002")  # killed between the two renames
    assert ckpt.latest_checkpoint(run_copy) == root / "step_0000002"
    assert ckpt.verify_checkpoint(root / "step_0000002") == []


# ----- 4. safe load ------------------------------------------------------------------------------------


def test_checkpoint_state_is_plain_data_and_loads_with_weights_only(trained):
    state = torch.load(trained / ckpt.CKPT_DIR / "step_0000002" / ckpt.STATE_FILE, weights_only=True)
    assert {"loop", "rng", "optimizer", "scheduler", "sampler", "scorer", "kl"} <= set(state)
    assert isinstance(state["rng"]["numpy"]["keys"], list) and isinstance(state["rng"]["python"]["internal"], list)


def test_global_rng_state_round_trips():
    import random

    import numpy as np

    rng = GlobalRNG(5)
    state = rng.state_dict()
    want = (random.random(), float(np.random.rand()), torch.rand(1).item(), np.random.randn())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    rng.load_state_dict(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item(), np.random.randn()) == want


def test_state_that_is_not_plain_data_is_refused_at_save():
    import numpy as np

    class Bad:
        def state_dict(self):
            return {"history": {"1+1=": np.float64(2.0)}}

        def load_state_dict(self, state):
            pass

    with pytest.raises(RlfoldError, match=r"bad\['history'\]\['1\+1='\]: numpy.float64"):
        collect_state({"bad": Bad()})


def test_an_unsafe_pickle_is_refused(run_copy, capsys):
    import numpy as np

    path = run_copy / ckpt.CKPT_DIR / "step_0000002"
    state = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # the old format: a tuple with an ndarray
    torch.save(state, path / ckpt.STATE_FILE)
    ckpt.write_manifest(path)
    with pytest.raises(RlfoldError, match="cannot load .*trainer_state.pt safely"):
        ckpt.load_state(path)
    err = _fails(capsys, _resume(run_copy, "train.steps=3"))
    assert "safely (weights_only=True)" in err


@pytest.mark.parametrize("recipe", ["hapo", "apriel_dap"])
def test_shaping_and_sampler_state_resume(tmp_path, recipe):
    over = [*TINY, "checkpoint.every=1"]
    cfg = load_config(RECIPES / f"{recipe}.yaml", over)
    run = build_run(cfg, tmp_path / "run")
    run.fit()
    saved = collect_state(run.loop.objects)
    torch.load(ckpt.latest_checkpoint(tmp_path / "run") / ckpt.STATE_FILE, weights_only=True)
    resumed = build_run(load_config(RECIPES / f"{recipe}.yaml", [*over, "train.steps=3"]), tmp_path / "run",
                        resume=True)
    got = collect_state(resumed.loop.objects)
    for name in ("sampler", "scorer", "loop", "kl"):
        assert got[name] == saved[name], name
    resumed.fit()
    assert _steps(tmp_path / "run") == [0, 1, 2, 3]


# ----- 5. refusals -------------------------------------------------------------------------------------


def test_resume_with_train_steps_below_the_checkpoint(run_copy, capsys):
    err = _fails(capsys, _resume(run_copy, "train.steps=1"))
    assert "checkpoint step_0000002 is at step 2, beyond train.steps=1" in err


def test_a_run_name_that_leaves_runs_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../../x", "a/b", ".."):
        err = _fails(capsys, ["train", "grpo", *TINY, f"name={name}"])
        assert f"name={name!r}" in err and "run_dir=" in err
    assert not any(tmp_path.parent.glob("x-*")) and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, words", [
    ("train: {steps: 2\nmodel: [\n", ["config.yaml:", "not valid YAML"]),
    ("- train\n- model\n", ["config.yaml holds a list"]),
])
def test_a_corrupted_config_yaml_on_resume(run_copy, capsys, text, words):
    (run_copy / "config.yaml").write_text(text)
    err = _fails(capsys, _resume(run_copy))
    assert str(run_copy / "config.yaml") in err
    for w in words:
        assert w in err, (w, err)


# ----- 6. unwritable run directories --------------------------------------------------------------------


def test_a_run_dir_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = _fails(capsys, _train(tmp_path / "afile" / "run"))
    assert f"cannot create run directory {tmp_path / 'afile' / 'run'}" in err and "regular file" in err


def test_a_log_that_becomes_unwritable_mid_run(tmp_path, capsys, monkeypatch):
    real_write = JsonlLog.write

    def write(self, row):
        if row.get("step") == 1:
            monkeypatch.setattr(self._fh, "write", _erofs)  # the disk turned read-only
        real_write(self, row)

    monkeypatch.setattr(JsonlLog, "write", write)
    err = _fails(capsys, _train(tmp_path / "run"))
    # the close (whose flush fails too) does not mask the first error
    assert f"cannot append to {tmp_path / 'run' / METRICS_FILE}: Read-only file system" in err, err
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def _erofs(*a, **k):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_close_errors_do_not_mask_the_first(tmp_path):
    log = JsonlLog(tmp_path / "m.jsonl")
    log._fh.close = _erofs  # type: ignore[method-assign]
    from rlfold.trainers.metrics import close_all

    close_all([log], primary=ValueError("first"))  # swallowed: the first error is on its way out
    log2 = JsonlLog(tmp_path / "n.jsonl")
    log2._fh.close = _erofs  # type: ignore[method-assign]
    with pytest.raises(RunDirError, match="cannot finish writing"):
        close_all([log2], primary=None)


def test_a_checkpoint_write_that_fails(tmp_path, capsys, monkeypatch):
    def denied(self, path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", denied)
    err = _fails(capsys, _train(tmp_path / "run", "checkpoint.every=1"))
    assert f"cannot write checkpoint {tmp_path / 'run' / ckpt.CKPT_DIR / 'step_0000001'}: Permission denied" in err


# ----- 7. Ctrl-C ------------------------------------------------------------------------------------------

_SIGINT = {"metrics": None, "rows": 0}


def _sigint_reward(prompts, completions, finishes):
    """exact_match that sends this process SIGINT once ``_SIGINT['metrics']`` has ``rows`` rows (test reward)."""
    m = _SIGINT["metrics"]
    if m is not None and m.is_file() and len(m.read_text().splitlines()) >= _SIGINT["rows"]:
        _SIGINT["metrics"] = None
        os.kill(os.getpid(), signal.SIGINT)
    return exact_match(prompts, completions, finishes)


if "_test_sigint_reward" not in REWARDS:
    REWARDS.register("_test_sigint_reward")(_sigint_reward)


def test_ctrl_c_while_generating_drops_the_step_and_saves_the_last_finished_one(tmp_path, capsys):
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background
    run = tmp_path / "run"
    argv = _train(run, "rewards=[{name: _test_sigint_reward}]", "train.steps=6", "checkpoint.every=2",
                  "checkpoint.keep=5", "eval.every=0")
    _SIGINT.update(metrics=run / METRICS_FILE, rows=4)  # steps 0-3 logged: Ctrl-C while scoring step 4
    rc, err = _rc(capsys, argv)
    assert rc == 130, err
    assert "which was dropped; checkpoint step_0000003 holds the last finished step (3)" in err
    assert f"continue with --resume {run}" in err
    assert ckpt.read_latest(run) == "step_0000003" and _steps(run) == [0, 1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored
    assert main([*argv, "--resume", str(run)]) == 0
    assert _steps(run) == list(range(7))


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_ctrl_c_during_the_update_finishes_the_step_then_saves(tmp_path, capsys, monkeypatch):
    from rlfold.trainers import online

    real = online.OnlineStep.step
    calls = {"n": 0}

    def step(self, index):
        if not calls["n"]:  # Ctrl-C right after the first optimiser step of step 1
            real_opt = self.optimizer.step

            def opt_step(*a, **k):
                out = real_opt(*a, **k)
                if not calls["n"]:
                    calls["n"] += 1
                    os.kill(os.getpid(), signal.SIGINT)
                return out

            monkeypatch.setattr(self.optimizer, "step", opt_step)
        return real(self, index)

    monkeypatch.setattr(online.OnlineStep, "step", step)
    run = tmp_path / "run"
    rc, err = _rc(capsys, _train(run, "train.steps=4", "checkpoint.every=0"))
    assert rc == 130, err
    assert "Ctrl-C: finishing step 1, then saving a checkpoint" in err
    assert "stopped after step 1; checkpoint step_0000001 holds it" in err
    assert ckpt.read_latest(run) == "step_0000001" and _steps(run) == [0, 1]


def test_a_second_ctrl_c_during_the_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = _train(run, "train.steps=4", "checkpoint.every=1")
    real_fsync = ckpt._fsync_tree
    state = {"saves": 0}

    def fsync(path):
        state["saves"] += 1
        if state["saves"] == 2:  # while writing step 2: Ctrl-C, and again
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_fsync(path)

    monkeypatch.setattr(ckpt, "_fsync_tree", fsync)
    rc, err = _rc(capsys, argv)
    assert rc == 130, err
    assert "a second Ctrl-C stopped the run at once" in err
    assert ckpt.read_latest(run) == "step_0000001"
    assert f"the latest checkpoint (step_0000001) is intact; continue with --resume {run}" in err
    assert list((run / ckpt.CKPT_DIR).glob(".tmp-*"))  # the cut-short write, removed by the next run
    monkeypatch.undo()
    assert main([*argv, "--resume", str(run)]) == 0
    assert not list((run / ckpt.CKPT_DIR).glob(".tmp-*"))
    assert _steps(run) == [0, 1, 2, 3, 4]

"""Bad input, end to end through the CLI: exit code 2, ``error: ...`` naming the culprit, no traceback,
and no finished checkpoint lost or overwritten.

Every case is one row of ``CASES``: ``Case(id, argv or setup function, expected_exit, must_mention)``.
A setup function gets a ``Ctx`` (its own ``tmp`` directory, the shared pre-trained run to copy,
``vars`` for placeholders) and returns the argv to run in-process through ``main(argv)``, or a
``Result`` it produced itself (the few cases that need a real process: concurrent runs, SIGINT,
SIGKILL). ``{tmp}``, ``{run}`` (``tmp/run``) and ``{<var>}`` in argv and ``must_mention`` are
replaced before use. Subprocesses are never given a wall-clock timeout: work is bounded by steps,
and a process that must stay alive waits on a release file the test creates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import pytest

from rlfold.cli import main
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.metrics import METRICS_FILE, read_jsonl

# Tiny overrides for every run (threads=1: the test machine is shared; it is a key a resume may change).
BASE = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4",
        "log.progress=false", "checkpoint.every=1", "threads=1"]
LATEST_CKPT = "step_0000002"  # what the shared pre-trained run ends with (train.steps=2, checkpoint.every=1)


def base(*drop: str) -> list[str]:
    """BASE without the overrides of the keys in ``drop`` (a YAML case's culprit must not be overridden)."""
    return [o for o in BASE if o.split("=", 1)[0] not in drop]


# ----- the table ---------------------------------------------------------------------------------


@dataclass
class Result:
    """The outcome of a case that ran its command itself (in a subprocess)."""

    rc: int
    out: str
    err: str


@dataclass
class Ctx:
    tmp: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch
    vars: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    finalizers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def copy_trained(self) -> Path:
        """A private copy of the pre-trained run directory at ``tmp/run``."""
        shutil.copytree(self.trained, self.run)
        return self.run

    def sub(self, s: str) -> str:
        s = s.replace("{tmp}", str(self.tmp)).replace("{run}", str(self.run))
        for k, v in self.vars.items():
            s = s.replace("{" + k + "}", v)
        return s


Setup = Callable[[Ctx], Union[list[str], Result]]


@dataclass
class Case:
    id: str
    argv: list[str] | Setup
    expected_exit: int
    must_mention: list[str]
    check: Callable[[Ctx, Result], None] | None = None  # extra assertions after the common ones


def train(*args: str, recipe: str = "grpo") -> list[str]:
    return ["train", recipe, *BASE, "run_dir={run}", *args]


def write(ctx: Ctx, name: str, text: str | bytes) -> Path:
    p = ctx.tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def recipe_case(text: str, *drop: str) -> Setup:
    """A YAML recipe file with ``text``, run with BASE minus the overrides of ``drop``."""

    def setup(ctx: Ctx) -> list[str]:
        path = write(ctx, "mine.yaml", text)
        return ["train", str(path), *base(*drop), "run_dir={run}"]

    return setup


def data_case(key: str, text: str | bytes, name: str = "data.jsonl", extra: tuple[str, ...] = ()) -> Setup:
    def setup(ctx: Ctx) -> list[str]:
        path = write(ctx, name, text)
        return train(f"{key}={path}", *extra)

    return setup


def plugin_case(name: str, body: str, extra: tuple[str, ...] = ()) -> Setup:
    """A reward function ``name`` defined by ``body`` in ``tmp/<name>.py``, imported by the run."""
    source = (
        "from rlfold.rewards import REWARDS\n\n"
        f"def {name}(prompts, completions, finishes):\n"
        f"    \"\"\"Test reward.\"\"\"\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + f"\nif {name!r} not in REWARDS:\n    REWARDS.register({name!r})({name})\n"
    )

    def setup(ctx: Ctx) -> list[str]:
        path = write(ctx, f"{name}.py", source)
        return train(f"imports=[{path}]", f"rewards=[{{name: {name}}}]", *extra)

    return setup


def resume(*args: str) -> list[str]:
    return [*train(*args), "--resume", "{run}"]


def resume_case(mutate: Callable[[Ctx, Path], None], *args: str) -> Setup:
    """``--resume`` of a private copy of the pre-trained run, after ``mutate(ctx, run_dir)``."""

    def setup(ctx: Ctx) -> list[str]:
        run = ctx.copy_trained()
        mutate(ctx, run)
        return resume(*args)

    return setup


def model_case(make: Callable[[Path], None], *extra: str) -> Setup:
    """A model directory ``tmp/model`` built by ``make``, used as model.path."""

    def setup(ctx: Ctx) -> list[str]:
        d = ctx.tmp / "model"
        make(d)
        return train(f"model.path={d}", *extra)

    return setup


def _tiny_copy(d: Path) -> None:
    from rlfold.models.loading import ASSETS

    shutil.copytree(ASSETS / "tiny-arith", d)


# ----- helpers of individual cases ----------------------------------------------------------------


def _broken_config_json(d: Path) -> None:
    _tiny_copy(d)
    (d / "config.json").write_text('{\n  "model_type": "qwen2",\n  "hidden_size": 128,,\n}\n')


def _empty_config_json(d: Path) -> None:
    d.mkdir()
    (d / "config.json").write_text("{}\n")


def _garbage_weights(d: Path) -> None:
    _tiny_copy(d)
    (d / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)


def _no_tokenizer(d: Path) -> None:
    _tiny_copy(d)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _flip_tail(path: Path, n: int = 64) -> None:
    """Invert ``n`` bytes near the end of ``path`` (same size, header intact: only a checksum notices)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 200, len(data) - 200 + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _latest(run: Path) -> Path:
    return run / ckpt.CKPT_DIR / LATEST_CKPT


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlfold.cli", *args]


def _run_proc(ctx: Ctx, argv: list[str]) -> Result:
    p = subprocess.run(_py(*map(ctx.sub, argv)), capture_output=True, text=True, cwd=ctx.tmp)
    return Result(p.returncode, p.stdout, p.stderr)


# A reward that, in a process whose environment names a gate, blocks once the run has logged
# ``rows`` metric rows, until the release file exists (touching a "waiting" marker first). Without
# the environment variable (the in-process runs of this file) it is plain exact_match.
GATE_PLUGIN = '''
import os
import time
from pathlib import Path

from rlfold.rewards import REWARDS
from rlfold.rewards.arith import exact_match


def gated_exact_match(prompts, completions, finishes):
    """exact_match that waits on a release file (test helper for concurrent and interrupted runs)."""
    gate = os.environ.get("RLFOLD_TEST_GATE")
    if gate:
        metrics, rows, waiting, release = gate.split(os.pathsep)
        m = Path(metrics)
        if m.is_file() and len(m.read_text().splitlines()) >= int(rows):
            Path(waiting).write_text(str(os.getpid()))
            while not Path(release).exists():
                time.sleep(0.05)
    return exact_match(prompts, completions, finishes)


if "gated_exact_match" not in REWARDS:
    REWARDS.register("gated_exact_match")(gated_exact_match)
'''


def _start_gated(ctx: Ctx, rows: int, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """Start ``rlfold train`` into ``tmp/run`` in a subprocess that blocks after ``rows`` metric rows;
    return it (once it is blocked) and the argv of the same run."""
    plugin = write(ctx, "gate_reward.py", GATE_PLUGIN)
    argv = [*train(f"imports=[{plugin}]", "rewards=[{name: gated_exact_match}, {name: format, weight: 0.1}]"),
            *args]
    waiting, release = ctx.tmp / "gate.waiting", ctx.tmp / "gate.release"
    env = {**os.environ, "RLFOLD_TEST_GATE": os.pathsep.join(
        map(str, (ctx.run / METRICS_FILE, rows, waiting, release)))}
    proc = subprocess.Popen(_py(*map(ctx.sub, argv)), cwd=ctx.tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def finish() -> None:
        release.touch()
        if proc.poll() is None:
            proc.communicate()

    ctx.finalizers.append(finish)
    while not waiting.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the gated run ended (rc {proc.returncode}) before reaching its gate:\n{err[-3000:]}")
        time.sleep(0.05)
    ctx.vars["pid"] = str(proc.pid)
    return proc, argv


def _concurrent(ctx: Ctx) -> list[str]:
    proc, argv = _start_gated(ctx, 1, "train.steps=4")
    ctx.procs["first"] = proc
    return argv  # the same command again, in-process, while the first holds the run directory


def _concurrent_check(ctx: Ctx, res: Result) -> None:
    proc = ctx.procs["first"]
    (ctx.tmp / "gate.release").touch()
    out, err = proc.communicate()
    assert proc.returncode == 0, f"the first run failed after the second was refused:\n{err[-3000:]}"
    steps = [r["step"] for r in read_jsonl(ctx.run / METRICS_FILE)]
    assert steps == [0, 1, 2, 3, 4], f"metrics.jsonl of the first run was written by two runs: steps {steps}"


def _sigint(ctx: Ctx) -> Result:
    # Checkpoints at steps 2 and 4 of 6; interrupted while step 4 is being generated (steps 0-3 logged).
    proc, argv = _start_gated(ctx, 4, "train.steps=6", "checkpoint.every=2", "checkpoint.keep=5")
    ctx.vars["argv"] = json.dumps(argv)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    return Result(proc.returncode, out, err)


def _sigint_check(ctx: Ctx, res: Result) -> None:
    root = ctx.run / ckpt.CKPT_DIR
    names = sorted(p.name for p in root.glob("step_*"))
    assert "step_0000002" in names, names
    # the interrupt keeps the last finished step (3): a checkpoint of it is written on the way out
    assert "step_0000003" in names, f"no checkpoint of the last finished step after SIGINT; have {names}"
    assert (root / ckpt.LATEST).read_text().strip() == "step_0000003"
    rc = main([ctx.sub(a) for a in json.loads(ctx.vars["argv"])] + ["--resume", str(ctx.run)])
    assert rc == 0
    steps = [r["step"] for r in read_jsonl(ctx.run / METRICS_FILE)]
    assert steps == list(range(7)), steps


def _sigkill_then_resume(ctx: Ctx) -> list[str]:
    proc, argv = _start_gated(ctx, 4, "train.steps=6", "checkpoint.every=2", "checkpoint.keep=5")
    proc.kill()
    proc.communicate()
    assert (ctx.run / ckpt.CKPT_DIR / ckpt.LATEST).read_text().strip() == "step_0000002"
    return [*argv, "--resume", "{run}"]


def _steps_once(ctx: Ctx, res: Result, n: int) -> None:
    steps = [r["step"] for r in read_jsonl(ctx.run / METRICS_FILE)]
    assert steps == list(range(n + 1)), f"metrics.jsonl steps {steps}"


def _stale_logs(ctx: Ctx) -> list[str]:
    ctx.run.mkdir()
    (ctx.run / METRICS_FILE).write_text("".join(json.dumps({"step": s, "reward/mean": -7.0}) + "\n" for s in range(6)))
    (ctx.run / "samples.jsonl").write_text(json.dumps({"step": 5, "completion": "stale"}) + "\n")
    return train()


def _stale_check(ctx: Ctx, res: Result) -> None:
    rows = read_jsonl(ctx.run / METRICS_FILE)
    assert [r["step"] for r in rows] == [0, 1, 2], f"stale rows kept: steps {[r['step'] for r in rows]}"
    assert all(r.get("reward/mean") != -7.0 for r in rows)
    assert "stale" not in (ctx.run / "samples.jsonl").read_text()


def _name_escapes(ctx: Ctx) -> list[str]:
    cwd = ctx.tmp / "a" / "b"
    cwd.mkdir(parents=True)
    ctx.monkeypatch.chdir(cwd)
    return ["train", "grpo", *BASE, "name=../../x"]


def _name_check(ctx: Ctx, res: Result) -> None:
    assert not list((ctx.tmp / "a").glob("x-*")), "the run wrote outside runs/"


def _under_file(ctx: Ctx) -> list[str]:
    write(ctx, "afile", "a regular file\n")
    return ["train", "grpo", *BASE, "run_dir={tmp}/afile/run"]


def _corrupt_config(ctx: Ctx, run: Path) -> None:
    (run / "config.yaml").write_text("train: {steps: 2\nmodel: [\n")


def _list_config(ctx: Ctx, run: Path) -> None:
    (run / "config.yaml").write_text("- train\n- model\n")


def _dangling_latest(ctx: Ctx, run: Path) -> None:
    (run / ckpt.CKPT_DIR / ckpt.LATEST).write_text("step_0000009")


def _resume_a_file(ctx: Ctx) -> list[str]:
    write(ctx, "run", "not a directory\n")
    return resume()


# ----- the cases ----------------------------------------------------------------------------------

ROW = '{"prompt": "1+1=", "answer": "2"}\n'  # a good JSONL row (line 1 of the data files)

CASES: list[Case] = [
    # --- configuration overrides: typos, unknown keys, wrong types, out-of-range values
    Case("override-typo-key", train("train.lr_rate=1e-4"), 2, ["train.lr_rate", "train.lr"]),
    Case("override-typo-rollout", train("rollout.temprature=0.5"), 2, ["rollout.temprature", "rollout.temperature"]),
    Case("override-unknown-section", train("trian.steps=2"), 2, ["trian", "train"]),
    Case("override-unknown-top-key", train("sede=3"), 2, ["sede", "seed"]),
    Case("override-wrong-type-int", train("train.steps=abc"), 2, ["train.steps", "abc"]),
    Case("override-wrong-type-bool", train("log.progress=maybe"), 2, ["log.progress", "maybe"]),
    Case("override-wrong-type-list", train("task.levels=two"), 2, ["task.levels", "two"]),
    Case("override-zero-steps", train("train.steps=0"), 2, ["train.steps"]),
    Case("override-negative-lr", train("train.lr=-1"), 2, ["train.lr", "-1"]),
    Case("override-top-p-range", train("rollout.top_p=1.5"), 2, ["rollout.top_p", "1.5"]),
    Case("override-zero-n", train("rollout.n=0"), 2, ["rollout.n"]),
    Case("override-fraction-range", train("task.held_out_fraction=1"), 2, ["task.held_out_fraction"]),
    Case("override-keep-zero", train("checkpoint.keep=0"), 2, ["checkpoint.keep"]),
    Case("override-betas-range", train("train.betas=[2,3]"), 2, ["train.betas"]),
    Case("override-betas-length", train("train.betas=[0.9]"), 2, ["train.betas"]),
    Case("override-dtype-unknown", train("model.dtype=float64"), 2, ["model.dtype", "float64"]),
    Case("override-dtype-float16-cpu", train("model.dtype=float16"), 2, ["model.dtype", "float16"]),
    Case("override-device-unknown", train("model.device=tpu"), 2, ["model.device", "tpu"]),
    Case("override-forward-unknown", train("model.forward=fast"), 2, ["model.forward", "fast"]),
    Case("override-device-missing-cuda", train("model.device=cuda:99"), 2, ["model.device=cuda:99"]),
    Case("override-mixed-precision-unknown", train("train.mixed_precision=fp8"), 2,
         ["train.mixed_precision", "fp8"]),
    Case("mixed-precision-needs-fp32-weights", train("train.mixed_precision=bf16", "model.dtype=bfloat16"), 2,
         ["train.mixed_precision=bf16", "model.dtype=float32"]),
    Case("override-micro-batch-tokens-negative", train("train.micro_batch_tokens=-1"), 2,
         ["train.micro_batch_tokens"]),
    Case("override-peak-tflops-zero", train("train.peak_tflops=0"), 2, ["train.peak_tflops"]),
    Case("lora-unknown-target", train("model.lora={target_modules: [qkv_proj]}"), 2,
         ["model.lora.target_modules", "qkv_proj", "q_proj", "down_proj"]),
    Case("lora-rank-zero", train("model.lora={r: 0}"), 2, ["model.lora.r", "greater than or equal to 1"]),
    Case("override-tracker-typo", train("log.trackers=[tensorbord]"), 2,
         ["log.trackers[0]", "tensorbord", "did you mean 'tensorboard'"]),
    Case("override-tracker-twice", train("log.trackers=[wandb, wandb]"), 2, ["log.trackers", "wandb", "twice"]),
    Case("tracker-package-missing",
         lambda c: (c.monkeypatch.setitem(sys.modules, "wandb", None), train("log.trackers=[wandb]"))[1], 2,
         ["log.trackers[0]=wandb", "pip install 'rlfold[wandb]'"]),
    Case("override-no-equals", train("train.lr"), 2, ["train.lr"]),
    Case("override-bad-yaml-value", train("rollout.n=[1,"), 2, ["rollout.n"]),
    Case("override-list-index-range", train("rewards.5.weight=1"), 2, ["rewards", "5"]),
    Case("override-into-a-value", train("train.lr.x=1"), 2, ["train.lr"]),
    Case("override-reward-weight-type", train("rewards.0.weight=abc"), 2, ["rewards[0].weight", "abc"]),
    Case("override-stop-token-out-of-vocab", train("rollout.stop_token_ids=[999999]"), 2,
         ["rollout.stop_token_ids", "999999"]),
    # --- YAML recipe files: located by file and line
    Case("yaml-typo-key-line", recipe_case("name: mine\nrollout:\n  n: 2\n  temprature: 0.7\n"), 2,
         ["{tmp}/mine.yaml:4", "rollout.temprature", "rollout.temperature"]),
    Case("yaml-wrong-type-line", recipe_case("name: mine\ntrain:\n  steps: ten\n", "train.steps"), 2,
         ["{tmp}/mine.yaml:3", "train.steps", "ten"]),
    Case("yaml-out-of-range-line", recipe_case("rollout:\n  top_p: 3\n"), 2, ["{tmp}/mine.yaml:2", "rollout.top_p"]),
    Case("yaml-unknown-part-line", recipe_case("name: mine\nalgo:\n  advantage: grpoo\n"), 2,
         ["{tmp}/mine.yaml:3", "grpoo"]),
    Case("yaml-missing-reward-name", recipe_case("rewards:\n  - weight: 1.0\n"), 2,
         ["{tmp}/mine.yaml:2", "rewards[0].name"]),
    Case("yaml-bad-part-option-line",
         recipe_case("name: mine\nalgo:\n  selection:\n    - name: top_entropy\n      kwargs: {quantil: 0.2}\n"), 2,
         ["{tmp}/mine.yaml:5", "quantil", "top_entropy"]),
    Case("yaml-syntax-unclosed-flow", recipe_case("name: mine\nrollout:\n  n: [2\ntrain:\n  lr: 1e-4\n"), 2,
         ["{tmp}/mine.yaml:"]),
    Case("yaml-syntax-bad-indent", recipe_case("name: mine\nrollout:\n  n: 2\n   temperature: 1.0\n"), 2,
         ["{tmp}/mine.yaml:4"]),
    Case("yaml-syntax-tab", recipe_case("name: mine\nrollout:\n\tn: 2\n"), 2, ["{tmp}/mine.yaml:3"]),
    Case("yaml-duplicate-key", recipe_case("name: mine\ntrain:\n  lr: 1.0e-4\n  lr: 2.0e-4\n"), 2,
         ["{tmp}/mine.yaml:4", "train.lr"]),
    Case("yaml-top-level-list", recipe_case("- train\n- rollout\n"), 2, ["{tmp}/mine.yaml"]),
    Case("yaml-not-utf8", recipe_case(b"name: caf\xe9\n"), 2, ["{tmp}/mine.yaml"]),
    # --- unknown recipes
    Case("recipe-unknown-name", ["train", "grpoo", *BASE, "run_dir={run}"], 2, ["grpoo", "grpo"]),
    Case("recipe-missing-yaml", ["train", "{tmp}/nope.yaml", *BASE, "run_dir={run}"], 2, ["{tmp}/nope.yaml"]),
    Case("recipe-is-a-directory", ["train", "{tmp}", *BASE, "run_dir={run}"], 2, ["{tmp}"]),
    Case("recipes-listing-unknown", ["recipes", "grpoo"], 2, ["grpoo"]),
    # --- unknown part names
    Case("part-advantage", train("algo.advantage=grpoo"), 2, ["algo.advantage", "grpoo"]),
    Case("part-policy-loss", train("algo.policy_loss=ppo_clp"), 2, ["algo.policy_loss", "ppo_clp"]),
    Case("part-aggregation", train("algo.loss_agg=token-men"), 2, ["algo.loss_agg", "token-men"]),
    Case("part-kl-estimator", train("algo.kl_estimator=k4"), 2, ["algo.kl_estimator", "k4"]),
    Case("part-selection", train("algo.selection=[{name: top_entropi}]"), 2, ["top_entropi", "top_entropy"]),
    Case("part-shaping", train("shaping=[{name: hapoo}]"), 2, ["hapoo", "hapo"]),
    Case("part-group-filter", train("algo.group_filters=[{name: dynamic_sample}]"), 2, ["dynamic_sample"]),
    Case("decs-curriculum-option", train("algo.group_filters=[{name: decs_curriculum, kwargs: {bta: 0.2}}]"), 2,
         ["bta", "beta"]),
    Case("part-regularizer", train("algo.regularizers=[{name: chi2_occupancy_x, coef: 0.1}]"), 2,
         ["algo.regularizers", "chi2_occupancy_x", "chi2_occupancy"]),
    Case("regularizer-no-coef", train("algo.regularizers=[{name: chi2_occupancy}]"), 2, ["coef"]),
    Case("part-replay", train("algo.replay={name: pipoo}"), 2, ["algo.replay.name", "pipoo", "pipo"]),
    Case("option-replay-name", train("algo.replay={name: pipo, kwargs: {windw: 4}}"), 2,
         ["algo.replay.kwargs.windw", "window"]),
    Case("option-replay-range", train("algo.replay={name: pipo, kwargs: {loss_scale_neg: -0.1}}"), 2,
         ["algo.replay.kwargs.loss_scale_neg", "-0.1"]),
    Case("replay-not-a-spec", train("algo.replay=pipo"), 2, ["algo.replay"]),
    Case("part-sampler", train("train.sampler.name=unifrom"), 2, ["train.sampler.name", "unifrom"]),
    Case("part-environment", train("rollout.env={name: multi_attemp}"), 2, ["rollout.env.name", "multi_attemp"]),
    Case("part-engine", train("rollout.engine=vlm"), 2, ["rollout.engine", "vlm", "vllm"]),
    # data parallelism: a strategy outside torchrun, a typo, --nproc without a parallel strategy or below 1
    Case("strategy-without-torchrun", train("train.strategy=ddp"), 2, ["train.strategy=ddp", "torchrun"]),
    Case("strategy-unknown", train("train.strategy=dpp"), 2, ["train.strategy", "dpp"]),
    Case("nproc-single-strategy", [*train(), "--nproc", "2"], 2, ["--nproc 2", "train.strategy=ddp"]),
    Case("nproc-zero", [*train("train.strategy=ddp"), "--nproc", "0"], 2, ["--nproc 0"]),
    # vLLM is not part of the default install: asking for it names the extra (the vLLM test command
    # installs vLLM and runs only the vllm-marked tests, so this case never meets an installed vLLM)
    Case("engine-vllm-not-installed", train("rollout.engine=vllm"), 2, ["rollout.engine=vllm", "rlfold[vllm]"]),
    Case("engine-vllm-server-not-installed", train("rollout.engine=vllm_server"), 2,
         ["rollout.engine=vllm_server", "rlfold[vllm]"]),
    Case("part-eval-engine", train("rollout.eval_engine=hff"), 2, ["rollout.eval_engine", "hff"]),
    Case("part-reward", train("rewards=[{name: exact_matc}]"), 2, ["exact_matc", "exact_match"]),
    Case("part-accuracy-reward", train("accuracy_reward=exact"), 2, ["accuracy_reward", "exact"]),
    Case("part-trainer", train("trainer=offline"), 2, ["trainer", "offline"]),
    Case("part-task", train("task.name=arithm"), 2, ["task.name", "arithm"]),
    # --- part options: names and values
    Case("option-advantage-value", train("algo.advantage_kwargs.scale=grop"), 2, ["scale", "grop"]),
    Case("option-advantage-name", train("algo.advantage_kwargs.epsilon=1"), 2, ["epsilon", "grpo"]),
    Case("option-advantage-type", train("algo.advantage_kwargs.eps=tiny"), 2, ["eps", "tiny"]),
    Case("option-policy-loss-name", train("algo.policy_loss_kwargs={eps: 0.2}"), 2, ["eps", "ppo_clip"]),
    Case("option-policy-loss-type", train("algo.policy_loss_kwargs={clip_low: abc}"), 2, ["clip_low", "abc"]),
    Case("option-mhpo-range", train("algo.policy_loss=mhpo", "algo.policy_loss_kwargs={c: 0}"), 2, ["mhpo", "c"]),
    Case("option-decoupled-ppo-cap", train("algo.policy_loss=decoupled_ppo", "algo.policy_loss_kwargs={cap: 0}"), 2,
         ["decoupled_ppo", "cap"]),
    Case("option-decoupled-ppo-mode", train("algo.policy_loss=decoupled_ppo", "algo.policy_loss_kwargs={mode: clip}"),
         2, ["decoupled_ppo", "mode", "'mask'"]),
    Case("option-kl-cov-clip", train("algo.policy_loss=kl_cov", "algo.clip_high=0.3"), 2, ["kl_cov", "clip_high"]),
    Case("option-adora-variant", train("algo.advantage=adora", "algo.advantage_kwargs={variant: vml}"), 2,
         ["adora", "variant", "vml"]),
    Case("option-w-reinforce-name", train("algo.advantage=w_reinforce", "algo.advantage_kwargs={positive_wieght: 1}"),
         2, ["positive_wieght", "positive_weight"]),
    Case("disco-splits-groups", train("algo.policy_loss=disco", "algo.loss_agg=token-sum", "train.mini_batch_size=3"),
         2, ["disco", "train.mini_batch_size=3", "rollout.n=2"]),
    Case("disco-aggregation", train("algo.policy_loss=disco"), 2, ["disco", "algo.loss_agg=token-sum"]),
    Case("option-clip-cov-ratio", train("algo.policy_loss=clip_cov", "algo.policy_loss_kwargs={clip_cov_ratio: 0}"), 2,
         ["clip_cov", "clip_cov_ratio"]),
    Case("option-drpo-lam", train("algo.policy_loss=drpo", "algo.loss_agg=token-sum",
                                  "algo.policy_loss_kwargs={lam: 0}"), 2, ["drpo", "lam"]),
    Case("option-psr-nsr-keep", train("algo.selection=[{name: psr_nsr, kwargs: {keep: both}}]"), 2,
         ["psr_nsr", "keep", "both"]),
    Case("option-unlikeliness-range", train("algo.advantage=unlikeliness", "algo.advantage_kwargs={beta_rank: -1}"),
         2, ["unlikeliness", "beta_rank"]),
    Case("option-ace-modulation", train("algo.advantage=ace", "algo.advantage_kwargs={modulation: exp}"), 2,
         ["ace", "modulation", "exp"]),
    Case("option-riskpo-credit", train("algo.advantage=riskpo", "algo.advantage_kwargs={credit: median}"), 2,
         ["riskpo", "credit", "median"]),
    Case("riskpo-bundles", train("algo.advantage=riskpo", "algo.advantage_kwargs={bundle_size: 3}"), 2,
         ["riskpo", "bundle_size=3", "train.prompts_per_step"]),
    Case("option-empo-answer", train("shaping=[{name: empo, kwargs: {answer: sympy}}]"), 2, ["empo", "answer", "sympy"]),
    Case("option-d3s-range", train("algo.selection=[{name: d3s_samples, kwargs: {fraction_init: 0}}]"), 2,
         ["d3s_samples", "fraction_init"]),
    Case("option-clip-high-on-reinforce", train("algo.policy_loss=reinforce", "algo.clip_high=0.3"), 2,
         ["clip_high", "reinforce"]),
    Case("option-shaping-value", train("shaping=[{name: hapo, kwargs: {variant: bogus}}]"), 2,
         ["variant", "bogus"]),
    Case("option-shaping-name", train("shaping=[{name: hapo, kwargs: {varient: cosine}}]"), 2,
         ["varient", "hapo"]),
    Case("part-reward-aggregation", train("reward_aggregation={name: gatd}"), 2,
         ["reward_aggregation.name", "gatd", "did you mean 'gated'"]),
    Case("option-reward-aggregation-name", train("reward_aggregation={name: gated, kwargs: {gate: {format: 1.0}}}"), 2,
         ["reward_aggregation.kwargs.gate", "did you mean 'gates'"]),
    Case("option-reward-aggregation-gate-typo", train("reward_aggregation={name: gated, kwargs: {gates: {formt: 1.0}}}"),
         2, ["reward_aggregation.kwargs.gates.formt", "did you mean 'format'"]),
    Case("option-reward-aggregation-objective-typo",
         train("reward_aggregation={name: gated, kwargs: {levels: [{gates: {format: 1.0}, objectives: [exact_mach]}]}}"),
         2, ["reward_aggregation.kwargs.levels[0].objectives[0]", "exact_mach", "did you mean 'exact_match'"]),
    Case("option-reward-aggregation-threshold-type",
         train("reward_aggregation={name: gated, kwargs: {gates: {format: high}}}"), 2,
         ["reward_aggregation.kwargs.gates", "high"]),
    Case("option-selection-value-range", train("algo.selection=[{name: top_entropy, kwargs: {quantile: 5}}]"), 2,
         ["quantile", "5"]),
    Case("option-selection-value-literal", train("algo.selection=[{name: tis, kwargs: {level: word}}]"), 2,
         ["level", "word"]),
    Case("option-selection-name", train("algo.selection=[{name: top_entropy, kwargs: {quantil: 0.2}}]"), 2,
         ["quantil", "top_entropy"]),
    Case("option-selection-required", train("algo.selection=[{name: after_marker}]"), 2,
         ["after_marker", "needs option marker", "algo.selection[0].kwargs.marker"]),
    Case("option-selection-empty-marker", train("algo.selection=[{name: after_marker, kwargs: {marker: ''}}]"), 2,
         ["after_marker", "marker"]),
    Case("option-group-filter-value",
         train("algo.group_filters=[{name: dynamic_sampling, kwargs: {metric: accuracy}}]"), 2, ["metric", "accuracy"]),
    Case("option-group-filter-name", train("algo.group_filters=[{name: dynamic_sampling, kwargs: {bogus: 1}}]"), 2,
         ["bogus", "dynamic_sampling"]),
    Case("option-regularizer-name", train("algo.regularizers=[{name: chi2_occupancy, coef: 0.1, kwargs: {clipp: 5}}]"),
         2, ["clipp", "chi2_occupancy", "clip"]),
    Case("option-regularizer-value", train("algo.regularizers=[{name: chi2_occupancy, coef: 0.1, kwargs: {clip: -1}}]"),
         2, ["clip", "-1"]),
    Case("option-sampler-name", train("train.sampler.kwargs={bogus: 1}"), 2, ["bogus", "uniform"]),
    Case("option-engine-value", train("rollout.engine_kwargs={weights: both}"), 2, ["weights", "both"]),
    Case("option-engine-name", train("rollout.engine_kwargs={wieghts: copy}"), 2, ["wieghts", "hf"]),
    Case("option-engine-threads", train("rollout.engine_kwargs={threads: -1}"), 2, ["threads", "-1"]),
    Case("ray-unknown-option", train("ray={num_workers: 2}"), 2, ["ray.num_workers", "unknown key"]),
    Case("ray-negative-workers", train("ray={num_rollout_workers: -1}"), 2,
         ["ray.num_rollout_workers", "greater than or equal to 0"]),
    Case("ray-cluster-too-small", train("ray={num_rollout_workers: 3}"), 2, ["ray.num_cpus", "3 CPUs"]),
    Case("option-vllm-engine-name", train("rollout.engine=vllm", "rollout.engine_kwargs={synk: rebuild}"), 2,
         ["synk", "sync"]),
    Case("option-vllm-engine-value", train("rollout.engine=vllm", "rollout.engine_kwargs={sync: reload}"), 2,
         ["sync", "reload"]),
    Case("option-environment-value", train("rollout.env={name: multi_attempt, kwargs: {attempts: 0}}"), 2,
         ["attempts", "0"]),
    Case("option-environment-name", train("rollout.env={name: multi_attempt, kwargs: {bogus: 1}}"), 2,
         ["bogus", "multi_attempt"]),
    Case("option-reward-name", train("rewards=[{name: exact_match, kwargs: {bogus: 1}}]"), 2,
         ["bogus", "exact_match"]),
    # --- tool agents
    Case("agent-unknown-tool", train("rollout.env={name: tool_agent, kwargs: {tools: {search: {name: bm52}}}}"), 2,
         ["bm52", "bm25"]),
    Case("agent-tool-option-typo", train("rollout.env={name: tool_agent, kwargs: {tools: {calc: {name: calculator, "
                                         "kwargs: {digts: 3}}}}}"), 2, ["rollout.env.kwargs.tools", "digts", "digits"]),
    Case("agent-tool-option-value", train("rollout.env={name: tool_agent, kwargs: {tools: {calc: {name: calculator, "
                                          "kwargs: {digits: 0}}}}}"), 2, ["calculator", "digits=0"]),
    Case("agent-no-tools", train("rollout.env={name: tool_agent, kwargs: {tools: {}}}"), 2, ["at least one tool"]),
    Case("agent-unknown-format", train("rollout.env={name: tool_agent, kwargs: {format: serch_r1, "
                                       "tools: {calc: {name: calculator}}}}"), 2, ["serch_r1", "search_r1"]),
    Case("agent-missing-corpus", train("rollout.env={name: tool_agent, kwargs: {tools: {search: {name: bm25, "
                                       "kwargs: {corpus: /nonexistent/corpus.jsonl}}}}}"), 2,
         ["/nonexistent/corpus.jsonl", "does not exist"]),
    Case("agent-eval-multi-turn-without-env", train("eval.multi_turn=true"), 2, ["eval.multi_turn", "rollout.env"]),
    Case("eval-confidence-typo", train("eval.confidence=answer_confidnce"), 2,
         ["eval.confidence", "answer_confidnce", "did you mean 'answer_confidence'"]),
    Case("followup-typo", train("rollout.followup={name: shuffled_optoins}"), 2,
         ["rollout.followup.name", "shuffled_optoins", "did you mean 'shuffled_options'"]),
    Case("followup-option-typo", train("rollout.followup={name: shuffled_options, kwargs: {max_new_token: 2}}"), 2,
         ["rollout.followup.kwargs", "max_new_token", "max_new_tokens"]),
    Case("acre-without-followup", train("model.path=tiny-choice-arith", "task.name=choice_arith",
                                        "accuracy_reward=choice_match", "rewards=[{name: acre}]"), 2,
         ["'acre'", "followup/consistent", "rollout.followup"]),
    Case("guidance-eta-range", train("trainer=guided_decoding", "guidance.eta=0"), 2, ["guidance.eta", "0.001"]),
    Case("guidance-rollin-typo", train("trainer=guided_decoding", "guidance.rollin=guide"), 2,
         ["guidance.rollin", "guided", "reference"]),
    Case("guidance-reward-range", train("trainer=guided_decoding", "rewards=[{name: exact_match, weight: 3.0}]",
                                        "train.prompts_per_step=8", "rollout.n=4"), 2,
         ["must lie in [0, 1]", "exact_match"]),
    Case("task-option-typo", train("task.name=search_qa", "task.kwargs={memory_fracton: 0.3}"), 2,
         ["task.kwargs.memory_fracton", "memory_fraction"]),
    Case("task-option-value", train("task.name=search_qa", "task.kwargs={memory_fraction: 1.5}"), 2,
         ["memory_fraction", "1.5"]),
    Case("agent-env-workers-zero", train("rollout.env_workers=0"), 2, ["rollout.env_workers", "greater than"]),
    # --- models
    Case("model-nonexistent", train("model.path=/nonexistent"), 2, ["/nonexistent"]),
    Case("model-broken-config-json", model_case(_broken_config_json), 2, ["{tmp}/model/config.json"]),
    Case("model-empty-dir", model_case(lambda d: d.mkdir()), 2, ["{tmp}/model", "config.json"]),
    Case("model-config-not-a-model", model_case(_empty_config_json), 2, ["{tmp}/model/config.json"]),
    Case("model-garbage-weights", model_case(_garbage_weights), 2, ["{tmp}/model", "model.safetensors"]),
    Case("model-no-tokenizer", model_case(_no_tokenizer), 2, ["{tmp}/model", "tokenizer"]),
    Case("model-path-is-a-file", model_case(lambda d: d.write_text("x")), 2, ["{tmp}/model"]),
    Case("model-critic-nonexistent", train("critic.path=/nonexistent/critic", recipe="ppo"), 2,
         ["/nonexistent/critic"]),
    # --- datasets
    Case("data-bad-json-row", data_case("task.train_file", ROW + '{"prompt": "2+2=" "answer": "4"}\n'), 2,
         ["{tmp}/data.jsonl:2"]),
    Case("data-missing-field", data_case("task.train_file", ROW + '{"prompt": "2+2=", "anwser": "4"}\n'), 2,
         ["{tmp}/data.jsonl:2", "answer"]),
    Case("data-empty-file", data_case("task.train_file", ""), 2, ["{tmp}/data.jsonl", "empty"]),
    Case("data-nonexistent", train("task.train_file={tmp}/none.jsonl"), 2, ["{tmp}/none.jsonl"]),
    Case("data-array-row", data_case("task.train_file", '["1+1=", "2"]\n'), 2, ["{tmp}/data.jsonl:1"]),
    Case("data-wrong-field-type", data_case("task.held_out_file", '{"prompt": "1+1=", "answer": [2]}\n'), 2,
         ["{tmp}/data.jsonl:1", "answer"]),
    Case("data-not-utf8", data_case("task.train_file", ROW.encode() + b'{"prompt": "\xff", "answer": "1"}\n'), 2,
         ["{tmp}/data.jsonl:2"]),
    Case("data-prompt-longer-than-context",
         data_case("task.train_file", ROW + json.dumps({"prompt": "1+" * 150 + "1=", "answer": "151"}) + "\n"),
         2, ["{tmp}/data.jsonl", "context"]),
    Case("data-max-new-tokens-beyond-context", train("rollout.max_new_tokens=400"), 2,
         ["rollout.max_new_tokens", "context"]),
    Case("data-missing-mapped-column", data_case("task.train_file", ROW, extra=("task.prompt_key=question",)), 2,
         ["{tmp}/data.jsonl:1", "'question'", "task.prompt_key"]),
    Case("data-messages-not-a-list", data_case("task.train_file", ROW + '{"messages": "1+1=", "answer": "2"}\n'), 2,
         ["{tmp}/data.jsonl:2", "'messages'", "list"]),
    Case("data-messages-unknown-role",
         data_case("task.train_file", ROW + '{"messages": [{"role": "tool", "content": "2"}], "answer": "2"}\n'), 2,
         ["{tmp}/data.jsonl:2", "unknown role", "tool"]),
    Case("data-chat-rows-without-template",
         data_case("task.train_file", '{"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}\n'), 2,
         ["{tmp}/data.jsonl: row 1", "chat template"]),
    Case("data-empty-parquet", data_case("task.train_file", b"", name="data.parquet"), 2,
         ["{tmp}/data.parquet", "empty"]),
    Case("data-unreadable-parquet", data_case("task.held_out_file", b"PAR1 not parquet", name="data.parquet"), 2,
         ["{tmp}/data.parquet", "cannot read it as a Parquet file"]),
    # --- rewards and plugins
    Case("reward-raises", plugin_case("raising_reward", "return [1.0 / (len(c) * 0) for c in completions]"), 2,
         ["raising_reward", "ZeroDivisionError", "sample"]),
    Case("reward-all-none", plugin_case("none_reward", "return [None for _ in completions]"), 2,
         ["none_reward", "None"]),
    Case("reward-wrong-count", plugin_case("short_count_reward", "return [1.0]"), 2, ["short_count_reward"]),
    Case("reward-not-a-number", plugin_case("word_reward", "return ['good' for _ in completions]"), 2,
         ["word_reward", "good"]),
    Case("plugin-missing-file", train("imports=[{tmp}/missing_plugin.py]"), 2, ["{tmp}/missing_plugin.py"]),
    Case("plugin-syntax-error", lambda c: train(f"imports=[{write(c, 'broken_plugin.py', 'def oops(:')}]"), 2,
         ["broken_plugin.py", "SyntaxError"]),
    # --- no learning signal
    Case("grpo-one-sample", train("rollout.n=1"), 2, ["rollout.n"]),
    Case("grpo-greedy", train("rollout.temperature=0"), 2, ["rollout.temperature"]),
    # --- asynchronous collection (rollout.async_mode)
    Case("async-shared-weights-engine", train("rollout.async_mode=one_step"), 2,
         ["rollout.async_mode", "weights of its own", "weights: copy"]),
    Case("async-negative-max-staleness", train("rollout.async_mode=bounded", "rollout.max_staleness=-1"), 2,
         ["rollout.max_staleness"]),
    Case("async-unknown-mode", train("rollout.async_mode=one_stp"), 2, ["rollout.async_mode", "one_step"]),
    Case("async-no-recompute", train("rollout.async_mode=one_step", "rollout.engine_kwargs={weights: copy}",
                                     "rollout.recompute_logprobs=false", "train.ppo_epochs=2"), 2,
         ["rollout.recompute_logprobs", "proximal"]),
    Case("async-one-step-staleness", train("rollout.async_mode=one_step", "rollout.engine_kwargs={weights: copy}",
                                           "rollout.max_staleness=2"), 2, ["rollout.max_staleness=2", "bounded"]),
    # --- eval
    Case("eval-k-zero", ["eval", "--model", "tiny-arith", "--size", "4", "--k", "0"], 2, ["--k"]),
    Case("eval-model-nonexistent", ["eval", "--model", "/nonexistent", "--size", "4"], 2, ["/nonexistent"]),
    Case("eval-size-zero", ["eval", "--model", "tiny-arith", "--size", "0", "--k", "1"], 2, ["--size"]),
    Case("eval-max-new-tokens-zero", ["eval", "--model", "tiny-arith", "--size", "4", "--max-new-tokens", "0"], 2,
         ["--max-new-tokens"]),
    Case("eval-unknown-task", ["eval", "--model", "tiny-arith", "--size", "4", "--task", "arithm"], 2, ["arithm"]),
    Case("eval-unknown-engine", ["eval", "--model", "tiny-arith", "--size", "4", "--engine", "vlm"], 2, ["vlm"]),
    Case("eval-unknown-reward", ["eval", "--model", "tiny-arith", "--size", "4", "--reward", "exact_matc"], 2,
         ["exact_matc"]),
    Case("eval-missing-data", ["eval", "--model", "tiny-arith", "--data", "{tmp}/held.jsonl"], 2, ["{tmp}/held.jsonl"]),
    Case("plot-missing-run", ["plot", "{tmp}/norun"], 2, ["{tmp}/norun"]),
    Case("report-missing-run", ["report", "{tmp}/norun"], 2, ["{tmp}/norun"]),
    Case("compare-missing-run", ["compare", "{tmp}/norun"], 2, ["{tmp}/norun"]),
    Case("compare-no-metrics", ["compare", "{tmp}"], 2, ["{tmp}", "metrics.jsonl"]),
    # --- resume
    Case("resume-nonexistent", ["train", "grpo", *BASE, "--resume", "{tmp}/nope"], 2, ["{tmp}/nope"]),
    Case("resume-a-file", _resume_a_file, 2, ["{run}"]),
    Case("resume-no-config", resume_case(lambda c, r: (r / "config.yaml").unlink()), 2, ["{run}", "config.yaml"]),
    Case("resume-changed-config", resume_case(lambda c, r: None, "train.lr=5e-4"), 2, ["train.lr"]),
    Case("resume-changed-seed", resume_case(lambda c, r: None, "seed=1"), 2, ["seed"]),
    Case("resume-steps-below-checkpoint", resume_case(lambda c, r: None, "train.steps=1"), 2, ["train.steps"]),
    Case("resume-corrupt-config-yaml", resume_case(_corrupt_config), 2, ["{run}/config.yaml"]),
    Case("resume-config-yaml-not-a-mapping", resume_case(_list_config), 2, ["{run}/config.yaml"]),
    Case("resume-corrupt-trainer-state", resume_case(lambda c, r: (_latest(r) / ckpt.STATE_FILE).write_bytes(b"junk")),
         2, [LATEST_CKPT, ckpt.STATE_FILE]),
    Case("resume-truncated-trainer-state", resume_case(lambda c, r: _truncate(_latest(r) / ckpt.STATE_FILE)), 2,
         [LATEST_CKPT, ckpt.STATE_FILE]),
    Case("resume-missing-trainer-state", resume_case(lambda c, r: (_latest(r) / ckpt.STATE_FILE).unlink()), 2,
         [LATEST_CKPT, ckpt.STATE_FILE]),
    Case("resume-garbage-weights",
         resume_case(lambda c, r: (_latest(r) / "model.safetensors").write_bytes(b"\x00" * 64)), 2,
         [LATEST_CKPT, "model.safetensors"]),
    Case("resume-flipped-weights", resume_case(lambda c, r: _flip_tail(_latest(r) / "model.safetensors")), 2,
         [LATEST_CKPT, "model.safetensors"]),
    Case("resume-dangling-latest", resume_case(_dangling_latest), 2, ["latest", "step_0000009"]),
    Case("fresh-run-into-trained-dir", lambda c: (c.copy_trained(), train())[1], 2, ["{run}", "--resume"]),
    # --- run directories
    Case("run-dir-under-a-file", _under_file, 2, ["{tmp}/afile"]),
    Case("run-name-escapes", _name_escapes, 2, ["name", "../../x"], check=_name_check),
    Case("run-dir-concurrent", _concurrent, 2, ["{run}", "{pid}"], check=_concurrent_check),
    Case("run-dir-stale-logs", _stale_logs, 0, [], check=_stale_check),
    # --- interrupted runs (real processes)
    Case("sigint-checkpoints-and-resumes", _sigint, 130, ["{run}", "--resume"], check=_sigint_check),
    Case("sigkill-then-resume", _sigkill_then_resume, 0, [], check=lambda c, r: _steps_once(c, r, 6)),
    # --- reward models (trainer: reward_modeling) and `rlfold data`
    Case("rm-strength-without-ensemble", train("trainer=reward_modeling", "reward_modeling.flip_fraction=0.2"), 2,
         ["reward_modeling.flip_fraction", "reward_modeling.ensemble"]),
    Case("rm-label-smoothing-range", train("trainer=reward_modeling", "reward_modeling.label_smoothing=0.7"), 2,
         ["reward_modeling.label_smoothing", "0.7"]),
    Case("rm-unpaired-data",
         data_case("preference.train_file", "".join(f'{{"prompt": "{i}+1=", "completion": "{i + 1}", "label": true}}\n'
                                                    for i in range(3)), extra=("trainer=reward_modeling",)), 2,
         ["{tmp}/data.jsonl", "pairs or ranked lists"]),
    Case("rm-chosen-equals-rejected",
         data_case("preference.train_file", '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                                            '{"prompt": "2+2=", "chosen": "4", "rejected": "4"}\n',
                   extra=("trainer=reward_modeling",)), 2, ["{tmp}/data.jsonl:2", "'chosen' equals 'rejected'"]),
    Case("rm-head-typo", train("trainer=reward_modeling", "reward_modeling.head=sentense"), 2,
         ["reward_modeling.head", "'sentence'"]),
    Case("rm-lora-refused", train("trainer=reward_modeling", "model.lora={r: 4}"), 2, ["model.lora"]),
    Case("data-audit-missing-file", ["data", "audit", "{tmp}/none.jsonl"], 2, ["{tmp}/none.jsonl"]),
    Case("data-audit-bad-row",
         lambda c: ["data", "audit", str(write(c, "pairs.jsonl", '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                                                                 '{"prompt": "2+2=", "chosen": "4"}\n'))], 2,
         ["{tmp}/pairs.jsonl:2", "'rejected'"]),
    Case("data-synth-flip-needs-pairs", ["data", "synth", "--out", "{tmp}/s.jsonl", "--kind", "lists", "--flip", "0.2"],
         2, ["--flip", "--kind pairs"]),
    # --- preference optimisation (trainer: preference)
    Case("pref-loss-typo", train("trainer=preference", "preference.loss=dpoo"), 2, ["preference.loss", "'dpo'"]),
    Case("pref-loss-option-typo", train("trainer=preference", "preference.loss=cdpo", "preference.loss_kwargs={epss: 0.1}"),
         2, ["preference.loss_kwargs.epss", "'eps'"]),
    Case("pref-loss-option-range", train("trainer=preference", "preference.loss=cdpo", "preference.loss_kwargs={eps: 0.7}"),
         2, ["preference.loss_kwargs.eps", "0.7"]),
    Case("pref-beta-in-kwargs", train("trainer=preference", "preference.loss_kwargs={beta: 0.5}"), 2,
         ["preference.beta"]),
    Case("pref-mean-reduction-with-simpo", train("trainer=preference", "preference.loss=simpo",
                                                 "preference.logp_reduction=mean"), 2,
         ["preference.logp_reduction", "sum"]),
    Case("pref-missing-file", train("trainer=preference", "preference.train_file={tmp}/none.jsonl"), 2,
         ["{tmp}/none.jsonl", "does not exist"]),
    Case("pref-missing-field",
         data_case("preference.train_file", '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                                            '{"prompt": "2+2=", "chosen": "4"}\n', extra=("trainer=preference",)), 2,
         ["{tmp}/data.jsonl:2", "'rejected'"]),
    Case("pref-chosen-equals-rejected",
         data_case("preference.train_file", '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                                            '{"prompt": "2+2=", "chosen": "4", "rejected": "4"}\n',
                   extra=("trainer=preference",)), 2, ["{tmp}/data.jsonl:2", "equals", "bad_rows=skip"]),
    Case("pref-empty-completion",
         data_case("preference.train_file", '{"prompt": "1+1=", "chosen": "", "rejected": "3"}\n',
                   extra=("trainer=preference",)), 2, ["{tmp}/data.jsonl:1", "empty completion"]),
    Case("pref-list-with-one-item",
         data_case("preference.train_file", '{"prompt": "1+1=", "responses": ["2"], "scores": [1]}\n',
                   extra=("trainer=preference", "preference.loss=lipo_lambda")), 2,
         ["{tmp}/data.jsonl:1", "at least 2 responses"]),
    Case("pref-longer-than-context",
         data_case("preference.train_file", '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                                            '{"prompt": "123456789+123456789=", "chosen": "246913578", "rejected": "1"}\n',
                   extra=("trainer=preference", "preference.max_length=12", "preference.held_out_fraction=0")), 2,
         ["{tmp}/data.jsonl:2", "longer than the model's context of 12"]),
    Case("pref-unpaired-data-for-a-pair-loss",
         data_case("preference.train_file", '{"prompt": "1+1=", "completion": "2", "label": true}\n'
                                            '{"prompt": "2+2=", "completion": "5", "label": false}\n',
                   extra=("trainer=preference", "preference.loss=dpo")), 2,
         ["preference.loss=dpo", "unpaired"]),
    Case("pref-several-processes", train("trainer=preference", "train.strategy=ddp"), 2, ["train.strategy"]),
]

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


# ----- the runner ---------------------------------------------------------------------------------


def _finished_checkpoints(root: Path) -> dict[str, str]:
    """sha256 of every file of every finished checkpoint (``checkpoints/step_*``) and ``final/`` under ``root``."""
    out = {}
    for d in [*root.rglob(f"{ckpt.CKPT_DIR}/step_*"), *root.rglob("final")]:
        if d.is_dir() and not d.name.startswith("."):
            for f in sorted(d.rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _latest_pointers(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob(f"{ckpt.CKPT_DIR}/{ckpt.LATEST}")
            if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One finished tiny run (checkpoints step 1 and 2, final/), copied by the cases that need a run directory."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "grpo", *BASE, f"run_dir={run}"]) == 0
    assert (run / ckpt.CKPT_DIR / ckpt.LATEST).read_text().strip() == LATEST_CKPT
    return run


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, trained_run, capsys, monkeypatch):
    ctx = Ctx(tmp=tmp_path, trained=trained_run, monkeypatch=monkeypatch)
    try:
        _check_case(case, ctx, capsys)
    finally:
        for fin in ctx.finalizers:
            fin()


def _check_case(case: Case, ctx: Ctx, capsys) -> None:
    prepared = case.argv(ctx) if callable(case.argv) else list(case.argv)
    before, pointers = _finished_checkpoints(ctx.tmp), _latest_pointers(ctx.tmp)
    if isinstance(prepared, Result):
        res = prepared
    else:
        argv = [ctx.sub(a) for a in prepared]
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the user would see as a traceback
            out = capsys.readouterr()
            pytest.fail(f"main({argv}) raised instead of reporting an error:\n{traceback.format_exc()[-4000:]}"
                        f"\n--- stderr ---\n{out.err[-2000:]}")
        out = capsys.readouterr()
        res = Result(rc, out.out, out.err)
    if os.environ.get("RLFOLD_SHOW_ERRORS"):  # print every case's outcome (for triage), pass or fail
        with capsys.disabled():
            print(f"\n=== {case.id}: exit {res.rc}\n{res.err.strip()[-1500:]}")
    shown = f"--- stderr ---\n{res.err[-3000:]}\n--- stdout ---\n{res.out[-1000:]}"
    assert "Traceback" not in res.out + res.err, shown
    assert res.rc == case.expected_exit, f"exit code {res.rc}, expected {case.expected_exit}\n{shown}"
    if case.expected_exit == 2:
        assert re.search(r"(^|: )error: ", res.err, re.M), f"no 'error: ...' line on stderr\n{shown}"
    missing = [m for m in map(ctx.sub, case.must_mention) if m not in res.err]
    assert not missing, f"stderr does not mention {missing}\n{shown}"
    after = _finished_checkpoints(ctx.tmp)
    if case.expected_exit == 2:  # a refused run loses and rewrites nothing
        changed = sorted(k for k in before if after.get(k) != before[k])
    else:  # a run that went on may prune old checkpoints (checkpoint.keep), never rewrite one
        changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not changed, f"finished checkpoint files lost or rewritten: {changed}\n{shown}"
    if case.expected_exit == 2:
        assert _latest_pointers(ctx.tmp) == pointers, f"a 'latest' pointer was changed by a refused run\n{shown}"
    if case.check is not None:
        case.check(ctx, res)

"""Bench scripts end a bad input with rlfold's one-line error and status 2, not a traceback."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=600)


def test_a_missing_model_directory_is_named_without_a_traceback(tmp_path):
    proc = _run(str(BENCH / "choice_binding.py"), "--model", str(tmp_path / "absent"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: model path") and "absent" in proc.stderr


def test_a_misspelt_override_stops_the_table_before_any_run_trains():
    proc = _run(str(BENCH / "learning_table.py"), "--recipes", "grpo", "dapo", "--", "model.pathh=x")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "did you mean 'model.path'" in proc.stderr
    assert "| grpo |" not in proc.stdout  # nothing trained


def test_a_misspelt_recipe_name_stops_the_table_before_any_run_trains():
    proc = _run(str(BENCH / "learning_table.py"), "--recipes", "grpo", "grpoo")
    assert proc.returncode == 2, proc.stderr
    assert "grpoo.yaml does not exist" in proc.stderr and "| grpo |" not in proc.stdout


def test_jobs_below_one_is_a_usage_error_naming_the_option():
    proc = _run(str(BENCH / "learning_table.py"), "--recipes", "grpo", "--jobs", "0")
    assert proc.returncode == 2, proc.stderr
    assert "--jobs" in proc.stderr and "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr

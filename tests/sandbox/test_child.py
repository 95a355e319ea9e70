"""The sandbox child is a plain stdlib script: importable without side effects, and unable to see rlfold."""

from __future__ import annotations

import subprocess
import sys

from rlfold.sandbox import run_sandboxed
from rlfold.sandbox.runner import CHILD


def test_child_loads_in_a_bare_interpreter_without_running_or_importing_rlfold():
    probe = (
        "import runpy, sys\n"
        "before = set(sys.modules)\n"
        f"ns = runpy.run_path({CHILD!r}, run_name='not_main')\n"
        "new = sorted(set(sys.modules) - before)\n"
        "assert callable(ns['main']), 'no main()'\n"
        "assert not [m for m in new if m.split('.')[0] in ('rlfold', 'torch', 'numpy', 'transformers')], new\n"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_candidate_cannot_import_rlfold_or_see_the_child_directory():
    tests = ["import sys; assert not [p for p in sys.path if 'sandbox' in p or p in ('', '.')], sys.path",
             "import importlib.util; assert importlib.util.find_spec('rlfold') is None"]
    result = run_sandboxed("", tests)
    assert result.statuses == ["pass", "pass"], result.stderr[-2000:]

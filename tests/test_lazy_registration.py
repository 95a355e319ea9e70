"""``import rlfold`` is light (no torch); the built-in parts are registered the first time a registry is read."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (this one has imported everything already)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def test_package_and_cli_import_without_torch():
    _fresh("import sys, rlfold, rlfold.core.errors, rlfold.core.registry, rlfold.cli\n"
           "heavy = [m for m in ('torch', 'transformers', 'numpy', 'rlfold.algos', 'rlfold.trainers') "
           "if m in sys.modules]\n"
           "assert not heavy, heavy\n")


def test_cli_help_imports_no_torch():
    out = _fresh("import sys\nfrom rlfold.cli import main\n"
                 "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
                 "assert 'torch' not in sys.modules\n")
    assert "usage: rlfold" in out.stdout


@pytest.mark.parametrize("read", ["'grpo' in ADVANTAGES", "ADVANTAGES.get('grpo')", "'grpo' in ADVANTAGES.names()",
                                  "ADVANTAGES.unregister('grpo')"])
def test_first_read_registers_every_builtin_part(read):
    _fresh("import sys\nfrom rlfold.core.registry import ADVANTAGES, ENGINES, REWARDS, TRAINERS\n"
           "assert 'rlfold.algos' not in sys.modules\n"
           f"assert {read}\n"
           "assert 'hf' in ENGINES and 'exact_match' in REWARDS and TRAINERS.names()\n")


def test_config_validation_sees_the_builtin_parts():
    _fresh("from rlfold.core.config_loader import load_config\n"
           "assert load_config(None, ['algo.advantage=rloo']).algo.advantage == 'rloo'\n")


def test_layers_are_attributes_of_the_package():
    _fresh("import sys, rlfold\nassert 'rlfold.trainers' not in sys.modules\n"
           "assert rlfold.trainers.__name__ == 'rlfold.trainers' and rlfold.algos.ADVANTAGES.get('grpo')\n"
           "try:\n    rlfold.no_such_layer\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit('no error')\n")


def test_a_part_registered_first_by_a_plugin_still_sees_the_builtins():
    _fresh("from rlfold.core.registry import ADVANTAGES\n"
           "ADVANTAGES.register('my_adv')(lambda rewards, group_ids: rewards)\n"
           "assert {'my_adv', 'grpo'} <= set(ADVANTAGES.names())\n")


def test_concurrent_first_reads_see_the_full_registry():
    _fresh("import threading\nfrom rlfold.core.registry import ADVANTAGES, REWARDS\n"
           "seen = []\n"
           "def read():\n    seen.append(('grpo' in ADVANTAGES, 'exact_match' in REWARDS))\n"
           "threads = [threading.Thread(target=read) for _ in range(4)]\n"
           "for t in threads: t.start()\n"
           "for t in threads: t.join()\n"
           "assert seen == [(True, True)] * 4, seen\n")


def test_importing_one_layer_module_directly_still_works():
    """A module imported on its own registers its parts; a later read adds the other layers' (no cycle)."""
    _fresh("import rlfold.trainers.online\nfrom rlfold.core.registry import REWARDS\nassert 'exact_match' in REWARDS\n")
    _fresh("import rlfold.algos.advantages\nfrom rlfold.core.registry import ENGINES\nassert 'hf' in ENGINES\n")

"""The base-model build script is seeded: two short builds give byte-identical weights."""

import hashlib
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_tiny_model.py"
SHIPPED = Path(__file__).resolve().parents[2] / "src" / "rlfold" / "assets" / "tiny-arith"


def _build(out: Path) -> str:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--steps", "15", "--batch-size", "32"],
                   check=True, capture_output=True)
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_reproducible_and_loads(tmp_path):
    assert _build(tmp_path / "a") == _build(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert tok.decode(tok("58+67=")["input_ids"], skip_special_tokens=True) == "58+67="
    assert tok.decode(tok("58+67=125. check 125.")["input_ids"], skip_special_tokens=True) == "58+67=125. check 125."
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the build writes the shipped tokenizer files
        assert (tmp_path / "a" / name).read_bytes() == (SHIPPED / name).read_bytes(), name

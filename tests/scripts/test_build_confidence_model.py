"""The confidence base's build script is seeded, and its tokenizer spells the Rewarding Doubt format."""

import hashlib
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_confidence_model.py"
SHIPPED = Path(__file__).resolve().parents[2] / "src" / "rlfold" / "assets" / "tiny-confidence-arith"


def _build(out: Path) -> str:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--steps", "10", "--batch-size", "16"],
                   check=True, capture_output=True)
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_confidence_build_is_reproducible_and_spells_the_format(tmp_path):
    assert _build(tmp_path / "a") == _build(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert type(model).__name__ == "Qwen2ForCausalLM"
    text = "123+456=? (confidence 0-10) Answer: 579, Confidence: 7"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the build writes the shipped tokenizer files
        assert (tmp_path / "a" / name).read_bytes() == (SHIPPED / name).read_bytes(), name

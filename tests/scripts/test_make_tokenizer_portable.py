"""scripts/make_tokenizer_portable.py turns a directory saved by an older rlfold into today's portable one."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from transformers import AutoTokenizer

from rlfold.models.loading import ASSETS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_tokenizer_portable.py"
TEXT = "58+67=125. check 125.\nnext"


def _old_style(dest: Path) -> Path:
    """The shipped model as rlfold saved it before: class TokenizersBackend, no added space/newline."""
    shutil.copytree(ASSETS / "tiny-arith", dest)
    data = json.loads((dest / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["special"]]
    (dest / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    cfg = json.loads((dest / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "TokenizersBackend"
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return dest


def test_old_directory_becomes_the_shipped_one(tmp_path):
    old = _old_style(tmp_path / "final")
    before = AutoTokenizer.from_pretrained(old, local_files_only=True)
    assert before.decode(before(TEXT)["input_ids"], skip_special_tokens=True) == "58+67=125.check125.next"
    out = subprocess.run([sys.executable, str(SCRIPT), str(old), str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "added tokens '\\n', ' '; tokenizer_class PreTrainedTokenizerFast" in out
    assert "skipped: no tokenizer.json" in out  # tmp_path itself is not a model directory
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (old / name).read_bytes() == (ASSETS / "tiny-arith" / name).read_bytes(), name
    after = AutoTokenizer.from_pretrained(old, local_files_only=True)
    assert after.decode(after(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    again = subprocess.run([sys.executable, str(SCRIPT), str(old)], capture_output=True, text=True, check=True)
    assert again.stdout.strip().endswith("already portable")

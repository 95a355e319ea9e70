"""Make model directories saved before rlfold wrote portable tokenizers load right with plain AutoTokenizer.

Checkpoints, ``final/`` directories and models built by older rlfold versions declare
``"tokenizer_class": "TokenizersBackend"``, and transformers 5's AutoTokenizer rebuilds their character-level
tokenizer as a byte-level one that drops spaces and newlines. This rewrites, in place, the two tokenizer
files the way rlfold now saves them (see ``rlfold.models.portable``): space and newline become added tokens
with their own ids, and the class becomes ``PreTrainedTokenizerFast``. Token ids do not change; weights are
not touched. Only character-level tokenizers (one pre-token per character) are rewritten.

    python scripts/make_tokenizer_portable.py runs/grpo/final runs/grpo/checkpoints/step_*
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tokenizers import Tokenizer

from rlfold.models.portable import protect_byte_level_rewrites

CHAR_SPLIT = {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False}
GENERIC = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_portable(directory: Path) -> str:
    """Rewrite ``directory``'s tokenizer files; returns what was done (or why nothing was)."""
    tok_json, cfg_json = directory / "tokenizer.json", directory / "tokenizer_config.json"
    if not tok_json.is_file() or not cfg_json.is_file():
        return "skipped: no tokenizer.json and tokenizer_config.json"
    data = json.loads(tok_json.read_text(encoding="utf-8"))
    cfg = json.loads(cfg_json.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") not in GENERIC:
        return f"skipped: tokenizer_class {cfg.get('tokenizer_class')!r} is not a generic tokenizers pipeline"
    if data.get("pre_tokenizer") != CHAR_SPLIT or (data.get("model") or {}).get("type") != "WordLevel":
        return "skipped: not a character-level tokenizer"
    backend = Tokenizer.from_str(json.dumps(data))
    added = protect_byte_level_rewrites(backend)
    done = []
    if added:
        # Tokenizer.save writes the file the way transformers' save_pretrained does.
        tmp = tok_json.with_name(f".tmp-{tok_json.name}")
        backend.save(str(tmp))
        os.replace(tmp, tok_json)
        done.append(f"added tokens {', '.join(map(repr, added))}")
    if cfg["tokenizer_class"] != "PreTrainedTokenizerFast":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        _write(cfg_json, json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        done.append("tokenizer_class PreTrainedTokenizerFast")
    return "; ".join(done) or "already portable"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directories", type=Path, nargs="+", help="model directories (checkpoints, final/)")
    args = ap.parse_args()
    for d in args.directories:
        print(f"{d}: {make_portable(d)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model loading: the shipped model is a plain HF directory; a broken directory is named with what is wrong."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlfold.core.errors import ModelLoadError
from rlfold.models.loading import (
    ASSETS,
    load_model_and_tokenizer,
    resolve_model_path,
    shipped_models,
)

TINY = ASSETS / "tiny-arith"


def _error(path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model_and_tokenizer(str(path))
    return str(info.value)


def test_tiny_arith_is_shipped():
    assert "tiny-arith" in shipped_models()
    assert resolve_model_path("tiny-arith") == TINY


def test_tiny_arith_loads_with_plain_transformers():
    model = AutoModelForCausalLM.from_pretrained(TINY, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(TINY, local_files_only=True)
    ids = tok("58+67=", return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 1
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_load_by_name_and_by_path_agree():
    m1, t1 = load_model_and_tokenizer("tiny-arith")
    m2, t2 = load_model_and_tokenizer(str(TINY))
    assert t1.padding_side == "left" and t1.pad_token_id is not None
    assert t1("12+34=")["input_ids"] == t2("12+34=")["input_ids"]
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_missing_directory_names_path_and_lists_shipped_models(tmp_path):
    missing = tmp_path / "no-such-model"
    msg = _error(missing)
    assert msg == f"model path {str(missing)!r} is neither a directory nor a shipped model (shipped models: tiny-arith, tiny-choice-arith, tiny-confidence-arith, tiny-graded-verbose-arith, tiny-search, tiny-verbose-arith)"


def test_misspelt_shipped_name_suggests_it():
    msg = _error("tiny-arth")
    assert "'tiny-arth'" in msg and "did you mean 'tiny-arith'?" in msg and "shipped models: tiny-arith" in msg


def test_a_file_is_not_a_model_directory(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    assert "is a file, not a model directory" in _error(f)


def test_directory_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    msg = _error(tmp_path)
    assert msg.startswith(f"model directory {tmp_path} has no config.json")
    assert "weights.bin" in msg


@pytest.mark.parametrize("text, words", [('{"model_type": ', ["config.json:1: not valid JSON"]),
                                         ("", ["config.json:1: not valid JSON"]),
                                         ("[1, 2]", ["config.json: expected a JSON object, got list"]),
                                         ('{"hidden_size": 8}', ["config.json is not a usable model config",
                                                                 "model_type"])])
def test_corrupt_config_json(tmp_path, text, words):
    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    (d / "config.json").write_text(text)
    msg = _error(d)
    assert str(d) in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_weights(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    (d / "model.safetensors").unlink()
    msg = _error(d)
    assert msg.startswith(f"could not load a causal LM from {d}:") and "model.safetensors" in msg


def test_corrupt_weights(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(TINY, d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    assert _error(d).startswith(f"could not load a causal LM from {d}:")


def test_missing_tokenizer_files_are_not_silently_replaced_by_an_empty_tokenizer(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY / name, d / name)
    msg = _error(d)
    assert str(d) in msg and "encodes text to nothing" in msg and "tokenizer.json" in msg


def test_shipped_tokenizer_keeps_spaces_round_trip():
    """AutoTokenizer would map the saved generic tokenizer to Qwen2Tokenizer and drop spaces."""
    _, tok = load_model_and_tokenizer("tiny-arith")
    text = "wait, check 58+67=125. 125"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text

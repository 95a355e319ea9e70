"""The interface every reflection / redundancy shaping part keeps: signature, docstring, metric names."""

from __future__ import annotations

import inspect

import pytest
from shaping_inputs import make_input, run_part

from rlfold.rewards.shaping import SHAPINGS

PARTS = ("arlcp", "decs", "redundancy", "crf")


@pytest.mark.parametrize("name", PARTS)
def test_shaping_signature(name: str) -> None:
    params = list(inspect.signature(SHAPINGS.get(name)).parameters.values())
    assert params[0].name == "inp" and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
    assert params[1].name == "state" and params[1].kind is params[1].KEYWORD_ONLY
    assert params[1].default is params[1].empty
    for p in params[2:]:
        assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, (name, p.name)
    doc = inspect.getdoc(SHAPINGS.get(name))
    assert "arXiv 25" in doc.splitlines()[0] or "arXiv 26" in doc.splitlines()[0]


@pytest.mark.parametrize("name", PARTS)
def test_metric_names_and_incorrect_rows(name: str) -> None:
    texts = ["Compute.\nSo x is 12. Wait, check 12 again.", "No idea, maybe 7."]
    out = run_part(name, make_input(texts, "12", [1, 0], lengths=[40, 17], max_len=64, scores=[1, 0]))
    assert out.metrics and all(k.startswith(f"shaping/{name}/") for k in out.metrics)
    assert out.scores.shape == (2,)
    assert out.scores[1].item() == 0.0
    assert out.scores[0].item() > 0.0
    if out.token_rewards is not None:
        assert (out.token_rewards[1] == 0).all()

"""Reward models as rewards: one model, ensembles (mean / WCO / UWO, arXiv 2310.02743), caching, load errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

from rlfold.core.errors import ConfigError, ModelLoadError
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.models.tiny import build_char_tokenizer
from rlfold.rewards import REWARDS, score_rewards
from rlfold.rewards.reward_models import (
    RewardModel,
    aggregate_scores,
    clear_reward_model_cache,
    get_reward_model,
    reward_model,
)

PROMPTS = [Prompt("58+67=", "125"), Prompt("1+1=", "2"), Prompt("12+34=", "46")]
COMPLETIONS = ["125", "a much longer completion text", "4"]


def _save_rm(directory, seed: int, num_labels: int = 1, pad_in_config: bool = True) -> str:
    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_labels=num_labels,
        pad_token_id=tok.pad_token_id if pad_in_config else None, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = Qwen2ForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # scores of order 1, clearly different between seeds
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return [_save_rm(root / f"seed{s}", s) for s in range(3)]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_reward_model_cache()
    yield
    clear_reward_model_cache()


def _direct(path: str, label: int = 0) -> torch.Tensor:
    """Each text scored alone (no padding) with a freshly loaded model."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for p, c in zip(PROMPTS, COMPLETIONS):
            enc = tok(p.text + c, return_tensors="pt")
            out.append(model(**enc).logits[0, label].double())
    return torch.stack(out)


def _score(**kw) -> torch.Tensor:
    return torch.tensor(reward_model(PROMPTS, COMPLETIONS, [FINISH_STOP] * 3, **kw), dtype=torch.float64)


def test_single_model_scores_prompt_plus_completion(rm_dirs):
    direct = _direct(rm_dirs[0])
    got = _score(path=rm_dirs[0])
    assert torch.allclose(got, direct, atol=1e-5)  # batched with padding == alone
    assert got.std() > 0.01  # the texts get different scores
    # batch size does not change the scores
    small = RewardModel(rm_dirs[0], batch_size=1).score([p.text + c for p, c in zip(PROMPTS, COMPLETIONS)])
    assert torch.allclose(small.double(), direct, atol=1e-5)


def test_ensemble_aggregates_match_members(rm_dirs):
    members = torch.stack([_direct(d) for d in rm_dirs])  # [3, N]
    assert (members.max(0).values - members.min(0).values).min() > 1e-3  # members really differ
    assert torch.allclose(_score(path=rm_dirs), members.mean(0), atol=1e-5)
    assert torch.allclose(_score(path=rm_dirs, aggregate="mean"), members.mean(0), atol=1e-5)
    assert torch.allclose(_score(path=rm_dirs, aggregate="wco"), members.min(0).values, atol=1e-5)
    mean = members.mean(0)
    sample_var = ((members - mean) ** 2).sum(0) / 2
    pop_var = ((members - mean) ** 2).sum(0) / 3
    assert torch.allclose(_score(path=rm_dirs, aggregate="uwo"), mean - 0.1 * sample_var, atol=1e-5)  # defaults
    assert torch.allclose(_score(path=rm_dirs, aggregate="uwo", uwo_lambda=0.5, uwo_ddof=0),
                          mean - 0.5 * pop_var, atol=1e-5)
    # a one-member "ensemble" is that member, whatever the aggregate
    for agg in ("mean", "wco", "uwo"):
        assert torch.allclose(_score(path=[rm_dirs[1]], aggregate=agg), members[1], atol=1e-5)


def test_aggregate_worked_example():
    s = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    assert aggregate_scores(s, "mean").item() == pytest.approx(2.3333, abs=1e-4)
    assert aggregate_scores(s, "wco").item() == 1.0
    assert aggregate_scores(s, "uwo", 0.5, 0).item() == pytest.approx(1.5556, abs=1e-4)  # population var 1.5556
    assert aggregate_scores(s, "uwo", 0.5, 1).item() == pytest.approx(1.1667, abs=1e-4)  # sample var 2.3333
    with pytest.raises(ConfigError, match="unknown aggregate"):
        aggregate_scores(s, "median")
    with pytest.raises(ConfigError, match="uwo_ddof"):
        aggregate_scores(s, "uwo", 0.5, 2)


def test_label_zero_of_a_two_label_head_and_missing_pad_in_config(tmp_path):
    d = _save_rm(tmp_path / "two", 7, num_labels=2, pad_in_config=False)
    got = _score(path=d)  # batch of 3 needs a pad id: taken from the tokenizer
    assert torch.allclose(got, _direct(d, label=0), atol=1e-5)


def test_models_cached_per_path(rm_dirs):
    a = get_reward_model(rm_dirs[0])
    assert get_reward_model(rm_dirs[0]) is a and get_reward_model(rm_dirs[1]) is not a
    _score(path=rm_dirs[0])
    assert get_reward_model(rm_dirs[0]) is a
    assert not a.model.training and not any(p.requires_grad for p in a.model.parameters())


def test_registered_and_scored_by_name(rm_dirs):
    assert REWARDS.get("reward_model") is reward_model
    res = score_rewards([("reward_model", 2.0, {"path": rm_dirs, "aggregate": "wco"})], PROMPTS, COMPLETIONS,
                        [FINISH_STOP] * 3)
    members = torch.stack([_direct(d) for d in rm_dirs])
    assert torch.allclose(res.total.double(), 2 * members.min(0).values, atol=1e-4)


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_rm"
    with pytest.raises(ModelLoadError, match="no_such_rm") as err:
        reward_model(PROMPTS, COMPLETIONS, [FINISH_STOP] * 3, path=str(missing))
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        RewardModel(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(ConfigError, match="needs option 'path'"):
        reward_model(PROMPTS, COMPLETIONS, [FINISH_STOP] * 3)
    with pytest.raises(ConfigError, match="unknown aggregate"):
        reward_model(PROMPTS, COMPLETIONS, [FINISH_STOP] * 3, path=str(missing), aggregate="max")

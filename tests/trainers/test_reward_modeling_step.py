"""The reward-model step: pairs from every data kind, the exact micro-batched update, the cross-fitted strength;
end to end, a trained RM whose final/ directory is the ``reward_model`` reward, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlfold.cli import main, resolve_recipe
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.types import Prompt
from rlfold.models import load_model_and_tokenizer
from rlfold.tasks.preference_data import PreferenceData, PreferenceExample
from rlfold.trainers import checkpoint as ckpt
from rlfold.trainers.reward_modeling import (Objective, Optim, Pairs, bt_update, build_reward_model,
                                             cross_fit_strength, flips_of, fold_ids, pairs_of, score_pairs)

# A small, fast run: 600 synthetic prompts (about 400 pairs), one thread (the machine is shared).
SMALL = ["preference.synthetic.prompts=600", "log.progress=false", "threads=1", "eval.every=0",
         "checkpoint.every=0"]


def _ex(prompt: str, responses: list[str], scores: list[float], line: int, **meta) -> PreferenceExample:
    return PreferenceExample(Prompt(prompt, ""), responses, scores, f"f.jsonl:{line}", meta=meta)


@pytest.fixture(scope="module")
def tok():
    _, t = load_model_and_tokenizer("tiny-arith")
    return t


def _pairs(n: int = 6) -> Pairs:
    return Pairs([f"{i}+1=" for i in range(n)], [str(i + 1) for i in range(n)], [str(i + 2) for i in range(n)],
                 [f"f:{i}" for i in range(n)])


# ----- data ----------------------------------------------------------------------------------------


def test_pairs_keep_order_margin_and_planted_flips():
    data = PreferenceData("pairs", [_ex("1+1=", ["2", "3"], [1, 0], 1, flipped=False),
                                    _ex("2+2=", ["5", "4"], [1, 0], 2, flipped=True)])
    data.examples[0].margin = 0.5
    p = pairs_of(data)
    assert (p.prompts, p.chosen, p.rejected, p.where) == (["1+1=", "2+2="], ["2", "5"], ["3", "4"],
                                                          ["f.jsonl:1", "f.jsonl:2"])
    assert p.margin.tolist() == [0.5, 0.0] and p.planted == [False, True]
    assert pairs_of(PreferenceData("pairs", data.examples[1:])).margin is None


def test_lists_give_every_differently_scored_pair_or_best_worst():
    data = PreferenceData("lists", [_ex("1+1=", ["a", "b", "c", "d"], [0.0, 2.0, 1.0, 1.0], 1)])
    p = pairs_of(data)
    assert sorted(zip(p.chosen, p.rejected)) == sorted([("b", "c"), ("b", "d"), ("b", "a"), ("c", "a"),
                                                        ("d", "a")])
    bw = pairs_of(data, "best_worst")
    assert (bw.chosen, bw.rejected) == (["b"], ["a"])
    assert p.planted is None


def test_unpaired_data_is_refused_naming_where():
    with pytest.raises(DataError, match="f.jsonl:1: a Bradley-Terry reward model trains on pairs or ranked lists"):
        pairs_of(PreferenceData("unpaired", [_ex("1+1=", ["2"], [1.0], 1)]))


def test_swapping_pairs_twice_is_the_identity():
    p = _pairs()
    mask = torch.tensor([True, False, True, False, False, True])
    q = p.swapped(mask)
    assert q.chosen[0] == p.rejected[0] and q.chosen[1] == p.chosen[1]
    r = q.swapped(mask)
    assert (r.chosen, r.rejected) == (p.chosen, p.rejected)


def test_folds_keep_a_prompts_pairs_together_and_are_balanced():
    prompts = [f"p{i % 10}" for i in range(40)]
    f = fold_ids(prompts, 3, seed=0)
    by_prompt = {}
    for p, k in zip(prompts, f):
        by_prompt.setdefault(p, set()).add(k)
    assert all(len(v) == 1 for v in by_prompt.values())
    assert sorted(set(f)) == [0, 1, 2]
    assert fold_ids(prompts, 3, seed=0) == f


def test_flips_of_combines_fraction_and_threshold():
    s = torch.tensor([0.3, -2.0, 1.0, -0.1, 4.0])
    assert flips_of(s, 0.2, None).tolist() == [False, True, False, False, False]
    assert flips_of(s, 0.2, 0.0).tolist() == [False, True, False, True, False]
    assert flips_of(s, 0.0, 0.5).tolist() == [True, True, False, True, False]


def test_strength_options_need_an_ensemble():
    with pytest.raises(ConfigError, match="reward_modeling.ensemble"):
        load_config(None, ["trainer=reward_modeling", "reward_modeling.adaptive_margin=1"])
    with pytest.raises(ConfigError, match="reward_modeling.label_smoothing"):
        load_config(None, ["reward_modeling.label_smoothing=0.6"])


# ----- the update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["last_token", "sentence"])
def test_micro_batches_give_the_whole_batch_gradient(tok, head):
    pairs = _pairs(6)
    margin = torch.tensor([0.0, 1.0, -0.5, 0.2, 0.0, 2.0])
    grads, metrics = [], []
    for mb in (0, 4):
        model = build_reward_model("tiny-arith", tok, seed=3, head=head)
        o = Optim(batch=6, micro_batch=mb, lr=0.0)
        opt, sched = o.optimizer(model, 1)
        captured = {}

        def keep(*_):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        opt.register_step_pre_hook(keep)
        m, finite = bt_update(model, tok, pairs, margin, Objective(center_coef=0.01, label_smoothing=0.1), opt,
                              sched, o)
        assert finite
        grads.append(captured)
        metrics.append(m)
    assert metrics[0]["rm/loss"] == pytest.approx(metrics[1]["rm/loss"], rel=1e-5)
    assert metrics[0]["rm/accuracy"] == metrics[1]["rm/accuracy"]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-4), name


def test_a_non_finite_loss_skips_the_update(tok):
    model = build_reward_model("tiny-arith", tok, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    o = Optim(batch=2, micro_batch=0, lr=1e-2)
    opt, sched = o.optimizer(model, 1)
    _, finite = bt_update(model, tok, _pairs(2), torch.tensor([float("nan"), 0.0]), Objective(), opt, sched, o)
    assert not finite
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_cross_fitted_strength_scores_every_pair_out_of_fold(tok):
    pairs = _pairs(8)
    calls = []

    def make(seed):
        calls.append(seed)
        return build_reward_model("tiny-arith", tok, seed=seed)

    s = cross_fit_strength(make, tok, pairs, members=2, folds=2, steps=1, o=Optim(batch=4, micro_batch=0, lr=1e-4),
                           obj=Objective(), seed=0)
    assert s.diffs.shape == (2, 8) and (s.diffs != 0).all()
    assert len(calls) == 4 and len(set(calls)) == 4  # 2 folds x 2 members, each its own seed
    assert s.std.shape == (8,) and (s.std > 0).all()
    with pytest.raises(DataError, match="folds"):
        cross_fit_strength(make, tok, pairs.subset([0, 0]), members=1, folds=2, steps=1, o=Optim(2, 0, 1e-4),
                           obj=Objective(), seed=0)


# ----- end to end ----------------------------------------------------------------------------------


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One reward model trained on the synthetic pairs of 1500 prompts (the accuracy bar below is for this size)."""
    from rlfold.trainers.loop import build_run

    run_dir = tmp_path_factory.mktemp("rm") / "run"
    cfg = load_config(resolve_recipe("bt_reward_model"),
                      [*SMALL, "preference.synthetic.prompts=1500", "train.steps=250", "train.prompts_per_step=32",
                       "train.warmup_steps=10", "eval.every=125"])
    run = build_run(cfg, run_dir)
    rows = run.fit()
    return run, run_dir, rows


@pytest.mark.slow
def test_trained_rm_ranks_held_out_pairs(trained):
    _, run_dir, rows = trained
    first = rows[0]
    last = [r for r in rows if "val/rm/accuracy" in r][-1]
    assert first["data/train_pairs"] > 800 and first["data/held_out_pairs"] > 80
    assert abs(first["val/rm/margin"]) < 0.2  # an untrained head has no preference
    # measured 0.79 / 0.87 / 0.86 for seeds 0 / 1 / 2 of this small run (~900 training pairs, 250 steps; about
    # 100 held-out pairs, so +-4 points of noise); the full recipe's 1000 steps: docs/reward_models.md
    assert last["val/rm/accuracy"] >= 0.72, last
    assert last["val/rm/accuracy"] >= first["val/rm/accuracy"] + 0.15
    assert last["val/rm/margin"] > 1.0
    assert all(r["nonfinite_steps"] == 0 for r in rows[1:])
    assert "trainer: reward_modeling" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_final_loads_as_the_reward_model_reward_and_scores_identically(trained):
    from rlfold.rewards import REWARDS
    from rlfold.rewards.reward_models import RewardModel, clear_reward_model_cache

    run, run_dir, _ = trained
    step = run.trainer
    held = step.held_pairs
    rc, rr = score_pairs(step.model, step.tokenizer, held)
    rm = RewardModel(run_dir / "final")
    served = rm.score([p + c for p, c in zip(held.prompts, held.chosen)])
    assert torch.allclose(served, rc, atol=1e-5), (served[:5], rc[:5])
    clear_reward_model_cache()
    got = REWARDS.get("reward_model")([Prompt(p, "") for p in held.prompts[:8]], held.rejected[:8], ["stop"] * 8,
                                      path=str(run_dir / "final"))
    assert got == pytest.approx(rr[:8].tolist(), abs=1e-5)
    clear_reward_model_cache()


@pytest.mark.slow
def test_a_sentence_rm_learns_and_its_final_dir_is_served_with_the_sentence_head(tmp_path):
    from rlfold.rewards.reward_models import RewardModel, clear_reward_model_cache
    from rlfold.trainers.loop import build_run

    cfg = load_config(resolve_recipe("bt_reward_model"),
                      [*SMALL, "reward_modeling.head=sentence", "train.steps=120", "train.prompts_per_step=32",
                       "train.warmup_steps=10", "eval.every=120"])
    run = build_run(cfg, tmp_path / "run")
    rows = run.fit()
    evals = [r for r in rows if "val/rm/accuracy" in r]
    # measured 0.39 -> 0.83 (seed 0, 41 held-out pairs; the last-token head reaches 0.76 in the same run)
    assert evals[-1]["val/rm/accuracy"] >= max(0.65, evals[0]["val/rm/accuracy"] + 0.15), evals
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["rlfold_reward_head"] == "sentence"
    held = run.trainer.held_pairs
    rc, _ = score_pairs(run.trainer.model, run.trainer.tokenizer, held)
    clear_reward_model_cache()
    assert torch.allclose(RewardModel(final).score_completions(held.prompts, held.chosen), rc, atol=1e-5)
    clear_reward_model_cache()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    common = [*SMALL, "preference.synthetic.prompts=200", "train.prompts_per_step=8", "train.schedule=constant",
              "train.warmup_steps=0"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert main(["train", "bt_reward_model", f"run_dir={whole}", "train.steps=6", *common]) == 0
    assert main(["train", "bt_reward_model", f"run_dir={half}", "train.steps=3", *common]) == 0
    assert main(["train", "bt_reward_model", "train.steps=6", *common, "--resume", str(half)]) == 0
    from safetensors.torch import load_file

    a, b = load_file(whole / "final" / "model.safetensors"), load_file(half / "final" / "model.safetensors")
    assert a.keys() == b.keys() and "score.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["rm/loss"] for r in _metrics(whole)[1:]] == [r["rm/loss"] for r in _metrics(half)[1:]]


@pytest.mark.slow
def test_flip_aware_run_measures_strength_once_and_resumes_without_retraining(tmp_path):
    run = tmp_path / "flip"
    opts = [*SMALL, "preference.synthetic.prompts=200", "preference.synthetic.flip_fraction=0.2",
            "train.prompts_per_step=16", "reward_modeling.ensemble=1", "reward_modeling.folds=2",
            "reward_modeling.member_steps=20", "reward_modeling.flip_fraction=0.2",
            "reward_modeling.adaptive_margin=0.5", "reward_modeling.label_smoothing=0.05",
            "train.schedule=constant", "train.warmup_steps=0"]
    assert main(["train", "bt_reward_model", f"run_dir={run}", "train.steps=2", *opts]) == 0
    rows = _metrics(run)
    first = rows[0]
    n = first["data/train_pairs"]
    assert first["strength/flipped"] == int(0.2 * n)
    assert 0 <= first["strength/flip_recall"] <= 1 and "val/rm/clean_accuracy" in rows[-1]
    state = ckpt.load_state(ckpt.latest_checkpoint(run))
    assert state["strength"]["ready"] and int(state["strength"]["flip"].sum()) == int(0.2 * n)
    # a resume restores the strength from the checkpoint: no ensemble member is trained again
    import rlfold.trainers.reward_modeling as rmod

    calls = []
    real = rmod.train_member
    rmod.train_member = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        assert main(["train", "bt_reward_model", "train.steps=4", *opts, "--resume", str(run)]) == 0
    finally:
        rmod.train_member = real
    assert not calls
    assert [r["step"] for r in _metrics(run)] == [0, 1, 2, 3, 4]

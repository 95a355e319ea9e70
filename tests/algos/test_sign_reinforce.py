"""PSR / NSR / W-REINFORCE (arXiv 2506.01347): the w_reinforce advantage and the psr_nsr batch subset."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlfold.algos.sign_reinforce  # noqa: F401  (registers w_reinforce and psr_nsr)
from rlfold.algos import ADVANTAGES, POLICY_LOSSES, SELECTIONS, aggregate
from rlfold.algos.selection import SelectionInput
from rlfold.cli import main

W = ADVANTAGES.get("w_reinforce")
SUBSET = SELECTIONS.get("psr_nsr")


def _official(scores, lam, mode):
    """The official compute_psr_nsr_outcome_advantage per row for outcome scores in {0, 1}, gamma 1 (return = R)."""
    out = []
    for r in scores:
        if mode == "positive":
            out.append(r)
        elif mode == "negative":
            out.append(r - 1)
        else:
            out.append(lam * r if r == 1 else (r - 1 if r == 0 else r))
    return torch.tensor(out)


def _inp(adv_rows, mask):
    n = len(adv_rows)
    adv = torch.tensor(adv_rows, dtype=torch.float32)[:, None] * mask
    return SelectionInput(rewards=torch.zeros(n), group_ids=torch.zeros(n, dtype=torch.long), response_mask=mask,
                          advantages=adv, truncated=torch.zeros(n, dtype=torch.bool), old_logprobs=torch.zeros_like(mask),
                          behaviour_logprobs=torch.zeros_like(mask))


def test_w_reinforce_is_lambda_on_correct_and_minus_one_on_incorrect():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.3, 0.7])
    mask = torch.tensor([[1, 1, 0]] * 6, dtype=torch.float32)
    adv, m = W(r, torch.arange(6), mask)
    assert adv[:, 0].tolist() == pytest.approx([0.1, -1.0, 0.1, -1.0, -1.0, 0.1])
    assert (adv[:, 1] == adv[:, 0]).all() and (adv[:, 2] == 0).all()  # broadcast, 0 on padding
    assert m["w_reinforce/correct_frac"] == pytest.approx(0.5)
    # the threshold option decides the class
    adv2, _ = W(r, torch.arange(6), mask, threshold=0.2)
    assert adv2[4, 0].item() == pytest.approx(0.1)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0])
def test_matches_the_official_weighted_advantage_on_binary_rewards(lam):
    scores = [1, 0, 0, 1, 1, 0, 1, 0]
    adv, _ = W(torch.tensor(scores, dtype=torch.float32), torch.zeros(8, dtype=torch.long), torch.ones(8, 2),
               positive_weight=lam)
    assert torch.allclose(adv[:, 0], _official(scores, lam, "weighted"))
    # on the class each trains, PSR's +R and NSR's R - 1 are W-REINFORCE with lambda = 1
    adv1, _ = W(torch.tensor(scores, dtype=torch.float32), torch.zeros(8, dtype=torch.long), torch.ones(8, 2),
                positive_weight=1.0)
    pos, neg = torch.tensor(scores) == 1, torch.tensor(scores) == 0
    assert torch.equal(adv1[pos, 0], _official(scores, 1, "positive")[pos].float())
    assert torch.equal(adv1[neg, 0], _official(scores, 1, "negative")[neg].float())


def test_lambda_one_is_reinforce_with_plus_minus_one_rewards():
    # policy.md 9(e): with lambda = 1, W-REINFORCE is REINFORCE on r in {+1, -1}: the PPO loss at ratio 1
    # has the gradient of -mean_tokens(r * logp).
    gen = torch.Generator().manual_seed(0)
    r01 = (torch.rand(6, generator=gen) > 0.5).float()
    mask = torch.tensor([[1, 1, 1, 0]] * 3 + [[1, 1, 0, 0]] * 3, dtype=torch.float32)
    adv, _ = W(r01, torch.arange(6), mask, positive_weight=1.0)
    assert torch.equal(adv, (2 * r01 - 1)[:, None] * mask)
    logp = torch.randn(6, 4, generator=gen, dtype=torch.float64).requires_grad_()
    loss, _ = POLICY_LOSSES.get("ppo_clip")(logp, logp.detach(), adv.double(), mask.double())
    aggregate(loss, mask.double(), "token-mean").backward()
    expected = -((2 * r01 - 1)[:, None].double() * mask.double()) / mask.sum()
    assert torch.allclose(logp.grad, expected)


def test_psr_nsr_keeps_the_rows_of_one_sign():
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0], [1, 1]], dtype=torch.float32)
    inp = _inp([1.0, -1.0, 0.0, -1.0, -1.0], mask)  # row 3 has no valid token, row 2 has A = 0
    neg = SUBSET(inp, keep="negative")
    assert neg.rows.tolist() == [1, 4] and neg.token_mask is None and neg.token_weights is None
    assert neg.metrics["selection/psr_nsr_kept_frac"] == pytest.approx(2 / 5)
    assert SUBSET(inp, keep="positive").rows.tolist() == [0]
    with pytest.raises(ValueError, match="keep must be 'positive' or 'negative'"):
        SUBSET(inp, keep="both")


def test_nsr_on_a_batch_with_no_incorrect_sample_selects_nothing():
    # policy.md 9(e): NSR with every sample correct is an empty update (no row left)
    r = torch.ones(4)
    adv, _ = W(r, torch.zeros(4, dtype=torch.long), torch.ones(4, 3), positive_weight=1.0)
    sel = SUBSET(_inp(adv[:, 0].tolist(), torch.ones(4, 3)), keep="negative")
    assert sel.rows.numel() == 0 and sel.metrics["selection/psr_nsr_kept_frac"] == 0.0
    empty = SUBSET(_inp([], torch.zeros(0, 3)), keep="positive")
    assert empty.rows.numel() == 0 and empty.metrics["selection/psr_nsr_kept_frac"] == 0.0


def test_the_subset_leaves_the_token_mean_normaliser():
    # PSR: the loss is the token-mean over the correct rows' tokens only, not over the whole batch
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    adv, _ = W(r, torch.arange(4), mask, positive_weight=1.0)
    rows = SUBSET(_inp(adv[:, 0].tolist(), mask), keep="positive").rows
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-5.0, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    old = logp - 0.05  # ratio exp(0.05) inside the clip range
    loss, _ = POLICY_LOSSES.get("ppo_clip")(logp[rows], old[rows], adv[rows], mask[rows])
    got = aggregate(loss, mask[rows], "token-mean")
    assert got.item() == pytest.approx(-math.exp(0.05))  # (3 + 1) tokens of -1 * ratio, over 4 kept tokens


def test_bad_inputs_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        W(torch.ones(2, 2), torch.zeros(2, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="response_mask must be"):
        W(torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(3, 3))
    with pytest.raises(ValueError, match="rewards must be finite"):
        W(torch.tensor([1.0, float("nan")]), torch.zeros(2, dtype=torch.long), torch.ones(2, 3))


def _run(recipe, tmp_path, *extra):
    run_dir = tmp_path / "run"
    rc = main(["train", recipe, f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4", "eval.size=8",
               "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1", *extra])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    return rc, [r for r in rows if r["step"] > 0]


@pytest.mark.parametrize("recipe,sign", [("psr", -1.0), ("nsr", 1.0), ("w_reinforce", None)])
def test_recipe_runs_two_steps_through_the_cli(recipe, sign, tmp_path, capsys):
    rc, steps = _run(recipe, tmp_path)
    assert rc == 0, capsys.readouterr().err
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad and r["nonfinite_steps"] == 0 and r["train/empty_step"] == 0.0
        correct = r["w_reinforce/correct_frac"]
        assert correct == pytest.approx(r["acc/mean"])
        if sign is None:
            assert "selection/psr_nsr_kept_frac" not in r
            continue
        kept = correct if recipe == "psr" else 1.0 - correct
        assert r["selection/psr_nsr_kept_frac"] == pytest.approx(kept)
        # one update at ratio 1 over the kept rows only: token-mean of -A is exactly -A (A = +-1)
        assert r["actor/pg_loss"] == pytest.approx(sign, abs=1e-4)


def test_nsr_with_every_sample_correct_is_an_empty_step_and_the_run_stops(tmp_path, capsys):
    # threshold -1 makes every sample "correct": NSR keeps no row, each step is skipped as empty, and a run
    # none of whose steps trained stops with the cause instead of writing an untrained model
    rc, steps = _run("nsr", tmp_path, "algo.advantage_kwargs.threshold=-1")
    err = capsys.readouterr().err
    assert rc != 0
    assert "none of the 2 steps of the run could train" in err and "psr_nsr" in err
    assert steps and steps[0]["train/empty_step"] == 1.0 and steps[0]["selection/psr_nsr_kept_frac"] == 0.0


def test_option_domains_are_validated_by_the_config(tmp_path, capsys):
    rc, _ = _run("w_reinforce", tmp_path, "algo.advantage_kwargs.positive_weight=-0.5")
    assert rc != 0 and "positive_weight" in capsys.readouterr().err
    rc, _ = _run("nsr", tmp_path, "algo.selection.0.kwargs.keep=both")
    assert rc != 0 and "keep" in capsys.readouterr().err


def test_both_parts_are_per_row_so_splitting_the_batch_changes_nothing():
    gen = torch.Generator().manual_seed(3)
    r = (torch.rand(10, generator=gen) > 0.5).float()
    ids = torch.arange(5).repeat_interleave(2)
    mask = (torch.rand(10, 4, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    whole, _ = W(r, ids, mask)
    halves = torch.cat([W(r[:5], ids[:5], mask[:5])[0], W(r[5:], ids[5:], mask[5:])[0]])
    assert torch.equal(whole, halves)
    rows = SUBSET(_inp(whole[:, 0].tolist(), mask), keep="negative").rows
    first = SUBSET(_inp(whole[:5, 0].tolist(), mask[:5]), keep="negative").rows
    second = SUBSET(_inp(whole[5:, 0].tolist(), mask[5:]), keep="negative").rows + 5
    assert rows.tolist() == torch.cat([first, second]).tolist() == torch.nonzero(r == 0).flatten().tolist()

"""D³S (arXiv 2509.22115): max-variance row subset, top |A|·H tokens, the linear schedule, and the recipe."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

import rlfold.algos.d3s  # noqa: F401  (registers d3s_samples and d3s_tokens)
from rlfold.algos.d3s import budget, d3s_samples, d3s_tokens, max_variance_subset, scheduled, sequence_advantages
from rlfold.algos.selection import SELECTIONS, SelectionInput
from rlfold.trainers.inputs import INPUTS


def make_input(seq_adv, mask=None, entropy=None, group_ids=None, adv=None):
    seq_adv = torch.tensor(seq_adv, dtype=torch.float32)
    n = seq_adv.numel()
    mask = torch.ones(n, 3) if mask is None else torch.tensor(mask, dtype=torch.float32)
    r = mask.shape[1]
    advantages = seq_adv[:, None].expand(n, r).clone() if adv is None else torch.tensor(adv, dtype=torch.float32)
    return SelectionInput(
        rewards=seq_adv.clone(),
        group_ids=torch.arange(n) // 3 if group_ids is None else torch.tensor(group_ids),
        response_mask=mask,
        advantages=advantages * mask,
        truncated=torch.zeros(n, dtype=torch.bool),
        old_logprobs=torch.zeros(n, r),
        behaviour_logprobs=torch.zeros(n, r),
        entropy=None if entropy is None else torch.tensor(entropy, dtype=torch.float32),
    )


def progress(n, p):
    return torch.full((n,), float(p), dtype=torch.float64)


def pvar(xs):
    mu = sum(xs) / len(xs)
    return sum((x - mu) ** 2 for x in xs) / len(xs)


# ----- the max-variance subset ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_max_variance_subset_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    if seed % 2:  # many ties (GRPO advantages take few distinct values)
        vals = [float(rng.choice([-1.5, -0.5, 0.0, 0.5, 1.5])) for _ in range(n)]
    else:
        vals = [rng.gauss(0.0, 1.0) for _ in range(n)]
    for m in range(1, n + 1):
        got = max_variance_subset(torch.tensor(vals, dtype=torch.float64), m).tolist()
        assert len(got) == m and len(set(got)) == m and got == sorted(got)
        best = max(pvar([vals[i] for i in c]) for c in itertools.combinations(range(n), m))
        assert pvar([vals[i] for i in got]) == pytest.approx(best, abs=1e-12, rel=1e-12), (vals, m, got)


def test_max_variance_subset_edge_sizes_and_errors():
    v = torch.tensor([3.0, 1.0, 2.0])
    assert max_variance_subset(v, 3).tolist() == [0, 1, 2]
    assert max_variance_subset(v, 5).tolist() == [0, 1, 2]
    assert max_variance_subset(v, 0).tolist() == []
    with pytest.raises(ValueError, match="1-D"):
        max_variance_subset(v[None], 2)
    with pytest.raises(ValueError, match=r"finite; non-finite at \[1\]"):
        max_variance_subset(torch.tensor([0.0, float("nan"), 1.0]), 2)


# ----- the sample level -------------------------------------------------------------------------------------------

def test_d3s_samples_hand_numbers_and_tie_break():
    # Sorted: -2 (row 4), -1 (1), 0 (2), 0.5 (3), 1 (5), 2 (0). For N = 3: k=1 -> {-2, -1, 2} and k=2 -> {-2, 1, 2}
    # both have variance 78/27, the largest; the smaller k wins -> rows 0, 1, 4.
    inp = make_input([2.0, -1.0, 0.0, 0.5, -2.0, 1.0])
    sel = d3s_samples(inp, train_progress=progress(6, 0.0), fraction_init=0.5, fraction_final=1.0)
    assert sel.rows.tolist() == [0, 1, 4]
    assert sel.token_mask is None and sel.token_weights is None
    m = sel.metrics
    assert m["selection/d3s_row_fraction"] == 0.5
    assert m["selection/d3s_kept_row_frac"] == 0.5
    assert m["selection/d3s_adv_var_kept"] == pytest.approx(78 / 27, rel=1e-12)
    assert m["selection/d3s_adv_var_all"] == pytest.approx(pvar([2.0, -1.0, 0.0, 0.5, -2.0, 1.0]), rel=1e-12)
    # the same call again: the same rows (deterministic, no generator used)
    again = d3s_samples(inp, train_progress=progress(6, 0.0), fraction_init=0.5, fraction_final=1.0,
                        generator=torch.Generator().manual_seed(1))
    assert again.rows.tolist() == [0, 1, 4]


def test_d3s_samples_across_groups_may_empty_a_group():
    # group 0 has all-equal advantages (0): the max-variance pair comes from group 1's extremes.
    inp = make_input([0.0, 0.0, 0.0, 1.2, -1.2, 0.1], group_ids=[0, 0, 0, 1, 1, 1])
    sel = d3s_samples(inp, train_progress=progress(6, 0.0), fraction_init=2 / 6, fraction_final=2 / 6)
    assert sel.rows.tolist() == [3, 4]


def test_d3s_samples_permutation_equivariant():
    vals = [0.3, -1.1, 2.0, 0.7, -0.4, 1.5, -2.2, 0.05]
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    a = d3s_samples(make_input(vals), train_progress=progress(8, 0), fraction_init=0.5, fraction_final=0.5)
    b = d3s_samples(make_input([vals[i] for i in perm]), train_progress=progress(8, 0),
                    fraction_init=0.5, fraction_final=0.5)
    assert sorted(perm[i] for i in b.rows.tolist()) == a.rows.tolist()


def test_d3s_samples_skips_rows_without_valid_tokens():
    # Row 0 (advantage 5, the most extreme) has no valid token left: it is never chosen.
    mask = [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    inp = make_input([5.0, 1.0, 0.0, -1.0], mask=mask)
    sel = d3s_samples(inp, train_progress=progress(4, 0), fraction_init=0.5, fraction_final=0.5)
    assert sel.rows.tolist() == [1, 3]
    # more rows asked than candidates: only the candidates come back
    sel = d3s_samples(inp, train_progress=progress(4, 0), fraction_init=0.75, fraction_final=0.75)
    assert sel.rows.tolist() == [1, 2, 3]
    assert sel.metrics["selection/d3s_kept_row_frac"] == 0.75


def test_sequence_advantage_is_the_mean_over_valid_tokens():
    adv = torch.tensor([[1.0, 3.0, 100.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert sequence_advantages(adv, mask).tolist() == [2.0, 0.0]


def test_d3s_samples_schedule_is_linear_in_progress():
    inp = make_input([float(i) for i in range(10)])
    for p, f, kept in [(0.0, 0.2, 2), (0.5, 0.5, 5), (1.0, 0.8, 8), (0.25, 0.35, 4)]:
        sel = d3s_samples(inp, train_progress=progress(10, p), fraction_init=0.2, fraction_final=0.8)
        assert sel.metrics["selection/d3s_row_fraction"] == pytest.approx(f)
        assert sel.rows.numel() == kept  # round half up: 3.5 -> 4
    with pytest.raises(ValueError, match=r"train_progress must be in \[0, 1\]"):
        d3s_samples(inp, train_progress=progress(10, 1.5))


def test_budget_and_schedule_helpers():
    assert budget(0.3, 10) == 3 and budget(0.25, 2) == 1 and budget(0.01, 10) == 1 and budget(1.0, 7) == 7
    assert budget(0.5, 0) == 0
    assert scheduled(0.2, 0.6, 0.5) == pytest.approx(0.4)
    assert scheduled(0.2, 0.6, -1.0) == 0.2 and scheduled(0.2, 0.6, 2.0) == 0.6


# ----- the token level --------------------------------------------------------------------------------------------

TOK_MASK = [[1, 1, 1, 0], [1, 1, 1, 1]]
TOK_ADV = [[1.0, 1.0, 1.0, 1.0], [-0.5, -0.5, -0.5, -0.5]]
TOK_H = [[0.2, 0.9, 0.5, 9.9], [1.0, 1.8, 0.4, 1.0]]   # 9.9 sits on padding and must be ignored
# |A| * H: row 0 -> 0.2, 0.9, 0.5 ; row 1 -> 0.5, 0.9, 0.2, 0.5   (7 valid tokens)


def tok_input():
    return make_input([1.0, -0.5], mask=TOK_MASK, entropy=TOK_H, adv=TOK_ADV)


@pytest.mark.parametrize("frac, kept", [
    (3 / 7, [[0, 1, 1, 0], [0, 1, 0, 0]]),   # the two 0.9s, then the first 0.5 in row-major order
    (4 / 7, [[0, 1, 1, 0], [1, 1, 0, 0]]),   # next 0.5 tie: (1, 0) before (1, 3)
    (5 / 7, [[0, 1, 1, 0], [1, 1, 0, 1]]),
    (6 / 7, [[1, 1, 1, 0], [1, 1, 0, 1]]),   # 0.2 tie: (0, 0) before (1, 2)
])
def test_d3s_tokens_rank_by_abs_advantage_times_entropy(frac, kept):
    sel = d3s_tokens(tok_input(), train_progress=progress(2, 0.0), fraction_init=frac, fraction_final=1.0)
    assert sel.token_mask.tolist() == [[float(x) for x in row] for row in kept]
    assert sel.token_mask.dtype == torch.float32
    assert sel.rows is None and sel.token_weights is None
    assert sel.metrics["selection/d3s_kept_token_frac"] == pytest.approx(sum(map(sum, kept)) / 7)
    assert sel.metrics["selection/d3s_token_fraction"] == pytest.approx(frac)


def test_d3s_tokens_uses_magnitude_of_negative_advantages():
    # Same entropies, opposite-signed advantages: -3 outranks +1.
    inp = make_input([1.0, -3.0], mask=[[1, 1], [1, 1]], entropy=[[1.0, 1.0], [1.0, 1.0]],
                     adv=[[1.0, 1.0], [-3.0, -3.0]])
    sel = d3s_tokens(inp, train_progress=progress(2, 0), fraction_init=0.5, fraction_final=0.5)
    assert sel.token_mask.tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_d3s_tokens_refuses_missing_entropy_and_non_finite_scores():
    with pytest.raises(ValueError, match="'d3s_tokens' needs per-token entropies.*entropy is None"):
        d3s_tokens(make_input([1.0, 0.0]), train_progress=progress(2, 0))
    bad = make_input([1.0, -0.5], mask=TOK_MASK, entropy=[[0.2, float("nan"), 0.5, 0.0], [1, 1, 1, 1]], adv=TOK_ADV)
    with pytest.raises(ValueError, match=r"non-finite at \[row, token\] \[\[0, 1\]\]"):
        d3s_tokens(bad, train_progress=progress(2, 0))


def test_d3s_tokens_empty_batch():
    inp = make_input([1.0], mask=[[0, 0]], entropy=[[1.0, 1.0]], adv=[[1.0, 1.0]])
    sel = d3s_tokens(inp, train_progress=progress(1, 0))
    assert sel.token_mask.tolist() == [[0.0, 0.0]]
    assert sel.metrics["selection/d3s_kept_token_frac"] == 0.0


# ----- neutral setting: the base algorithm exactly -----------------------------------------------------------------

def test_full_budgets_change_nothing():
    inp = tok_input()
    for p in (0.0, 0.3, 1.0):
        s = d3s_samples(inp, train_progress=progress(2, p), fraction_init=1.0, fraction_final=1.0)
        assert s.rows is None and s.token_mask is None and s.token_weights is None
        assert s.metrics["selection/d3s_kept_row_frac"] == 1.0
        t = d3s_tokens(inp, train_progress=progress(2, p), fraction_init=1.0, fraction_final=1.0)
        assert torch.equal(inp.response_mask * t.token_mask, inp.response_mask)
        assert t.rows is None and t.token_weights is None
        assert t.metrics["selection/d3s_kept_token_frac"] == 1.0
    # a schedule that ends at 1: the last step is the base algorithm
    assert d3s_samples(inp, train_progress=progress(2, 1.0), fraction_init=0.5, fraction_final=1.0).rows is None


def test_registered_with_needs_and_option_domains():
    for name, fn in (("d3s_samples", d3s_samples), ("d3s_tokens", d3s_tokens)):
        assert SELECTIONS.get(name) is fn
        assert fn.needs == ("train_progress",)
        assert fn.__doc__.splitlines()[0].endswith("(Wang et al. 2025, arXiv 2509.22115).")


# ----- the recipe through the CLI ---------------------------------------------------------------------------------

@pytest.fixture
def train_progress_input():
    """The ``train_progress`` trainer input (step / (train.steps - 1)); a stand-in for train.steps=2 until the
    trainer provides it."""
    added = "train_progress" not in INPUTS
    if added:
        @INPUTS.register("train_progress")
        def _stand_in(ctx):
            total = getattr(ctx, "total_steps", None) or 2
            p = min(max(ctx.step / max(total - 1, 1), 0.0), 1.0)
            return torch.full((ctx.group_ids.shape[0],), p, dtype=torch.float64)
    yield
    if added:
        INPUTS.unregister("train_progress")


def run_recipe(tmp_path, name, *overrides):
    from rlfold.cli import main

    run_dir = tmp_path / name
    rc = main(["train", "d3s", f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4", "eval.size=8",
               "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1", *overrides])
    assert rc == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] > 0]


def test_d3s_recipe_runs_two_steps(tmp_path, train_progress_input):
    steps = run_recipe(tmp_path, "run")
    assert len(steps) == 2
    # step 0 -> progress 0 (0.25 of the rows, 0.2 of their tokens), step 1 -> progress 1 (0.5 and 0.5)
    assert [r["selection/d3s_row_fraction"] for r in steps] == pytest.approx([0.25, 0.5])
    assert [r["selection/d3s_token_fraction"] for r in steps] == pytest.approx([0.2, 0.5])
    for r in steps:
        assert r["selection/d3s_kept_row_frac"] <= r["selection/d3s_row_fraction"] + 1e-9
        assert 0.0 < r["selection/d3s_kept_token_frac"] <= 1.0
        assert r["selection/d3s_adv_var_kept"] >= r["selection/d3s_adv_var_all"] - 1e-9
        for k, v in r.items():
            if isinstance(v, float) and k.startswith(("actor/", "selection/")):
                assert v == v and abs(v) != float("inf"), k


def test_config_refuses_a_zero_fraction(tmp_path, capsys):
    from rlfold.cli import main

    rc = main(["train", "d3s", f"run_dir={tmp_path}/bad", "algo.selection=[{name: d3s_samples, "
               "kwargs: {fraction_init: 0}}]", "train.steps=1", "log.progress=false"])
    assert rc == 2
    assert "fraction_init" in capsys.readouterr().err


def test_full_budgets_train_exactly_like_grpo(tmp_path, train_progress_input):
    full = ("algo.selection=[{name: d3s_samples, kwargs: {fraction_init: 1.0, fraction_final: 1.0}}, "
            "{name: d3s_tokens, kwargs: {fraction_init: 1.0, fraction_final: 1.0}}]")
    a = run_recipe(tmp_path, "full", full)
    # without selection parts GRPO would take its old log-probs from the update's own forward (on-policy
    # shortcut); a run with selection parts uses the engine's, so compare with GRPO using the engine's too
    b = run_recipe(tmp_path, "grpo", "algo.selection=[]", "rollout.recompute_logprobs=false")
    assert [r["selection/d3s_kept_token_frac"] for r in a] == [1.0, 1.0]
    for ra, rb in zip(a, b, strict=True):
        for k in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/ppo_kl", "reward/mean"):
            assert ra[k] == rb[k], k

"""Length shaping parts: the worked examples of the reward specs, invariants, and HAPO's state round-trip."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from rlfold.core.types import Prompt
from rlfold.rewards import SHAPINGS, ShapingInput

PARTS = ["kimi_len", "cosine_len", "dler", "da_dler", "hapo", "grpo_lambda", "apriel_dap"]


def make(correct, lengths, *, groups=None, truncated=None, scores=None, texts=None, max_len=16000, step=0):
    n = len(correct)
    groups = [0] * n if groups is None else groups
    texts = [f"problem {g}" for g in groups] if texts is None else texts
    return ShapingInput(
        scores=torch.tensor(correct if scores is None else scores, dtype=torch.float32),
        correct=torch.tensor(correct, dtype=torch.float32),
        lengths=torch.tensor(lengths, dtype=torch.long),
        truncated=torch.tensor([False] * n if truncated is None else truncated, dtype=torch.bool),
        group_ids=torch.tensor(groups, dtype=torch.long),
        prompts=[Prompt(t, "0") for t in texts],
        completions=["x"] * n,
        max_len=max_len,
        step=step,
    )


def run(name, inp, state=None, **kw):
    return SHAPINGS.get(name)(inp, state={} if state is None else state, **kw)


def approx(t, expected, tol=1e-4):
    assert t.tolist() == pytest.approx(expected, abs=tol)


# ----- registry and interface -------------------------------------------------------------------
@pytest.mark.parametrize("name", PARTS)
def test_registered_with_paper_docstring_and_metric_names(name):
    fn = SHAPINGS.get(name)
    assert "arXiv" in fn.__doc__.splitlines()[0]
    out = run(name, make([1, 0, 1, 0], [100, 200, 300, 400], groups=[0, 0, 1, 1]), buffer=100) \
        if name == "apriel_dap" else run(name, make([1, 0, 1, 0], [100, 200, 300, 400], groups=[0, 0, 1, 1]))
    assert out.scores.shape == (4,) and out.scores.dtype == torch.float32
    assert out.metrics and all(k.startswith(f"shaping/{name}/") for k in out.metrics)


# ----- 1. Kimi -----------------------------------------------------------------------------------
def test_kimi_worked_example():
    out = run("kimi_len", make([1, 1, 1, 1], [100, 200, 300, 400], scores=[0, 0, 0, 0]))
    approx(out.scores, [0.5, 0.1667, -0.1667, -0.5])
    out = run("kimi_len", make([0, 0, 0, 0], [100, 200, 300, 400]))
    approx(out.scores, [0, 0, -0.1667, -0.5])


def test_kimi_is_per_group_weighted_and_added():
    inp = make([1, 1, 0, 0], [100, 300, 10, 20], groups=[0, 0, 1, 1])
    out = run("kimi_len", inp, weight=0.5)
    approx(out.scores, [1 + 0.25, 1 - 0.25, 0.0, -0.25])


def test_kimi_equal_lengths_and_warmup_leave_scores_unchanged():
    inp = make([1, 0, 1], [50, 50, 50], scores=[1.0, 0.2, 0.7])
    approx(run("kimi_len", inp).scores, [1.0, 0.2, 0.7])
    single = make([0, 1], [10, 999], groups=[0, 1])  # groups of one
    approx(run("kimi_len", single).scores, [0.0, 1.0])
    warm = make([0, 0], [100, 400], step=4)
    approx(run("kimi_len", warm, warmup_steps=5).scores, [0.0, 0.0])
    approx(run("kimi_len", make([0, 0], [100, 400], step=5), warmup_steps=5).scores, [0.0, -0.5])


# ----- 2. cosine ---------------------------------------------------------------------------------
def test_cosine_worked_examples():
    inp = make([1, 1, 0, 0, 1], [0, 7168, 7168, 0, 14330], max_len=14336)
    approx(run("cosine_len", inp).scores, [2.0, 1.5, -5.0, -10.0, -10.0])


def test_cosine_margin_truncation_and_max_len_option():
    inp = make([1, 1, 1], [14319, 14320, 100], truncated=[False, False, True], max_len=14336)
    out = run("cosine_len", inp).scores.tolist()
    assert out[0] > 1.0 and out[1] == -10.0 and out[2] == -10.0
    approx(run("cosine_len", make([1], [500]), max_len=1000, exceed_margin=0).scores, [1.5])


# ----- 3./4. DLER ----------------------------------------------------------------------------------
def test_dler_reward_and_truncation_invariant():
    inp = make([1, 1, 0, 1, 1], [100, 4000, 50, 4000, 3000], truncated=[False, True, False, False, False],
               scores=[5.0, 5.0, 5.0, 5.0, 5.0], max_len=4000)
    approx(run("dler", inp).scores, [1, 0, 0, 1, 1])
    approx(run("dler", inp, target_len=2500).scores, [1, 0, 0, 0, 0])
    # truncated rows get 0 whatever their correctness or length
    inp = make([1, 1, 1], [10, 20, 30], truncated=[True, True, True])
    assert run("dler", inp).scores.tolist() == [0, 0, 0]


def test_da_dler_tiers_and_boundary():
    # group 0: p = 0.75 (easy -> 2000); group 1: p = 0.5 exactly (hard side -> 4000); group 2: p = 0.25
    correct = [1, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0]
    lengths = [1500, 2500, 3000, 100, 3500, 1000, 10, 10, 3900, 1, 1, 1]
    groups = [0] * 4 + [1] * 4 + [2] * 4
    out = run("da_dler", make(correct, lengths, groups=groups, max_len=8000))
    approx(out.scores, [1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    assert out.metrics["shaping/da_dler/easiest_tier_group_frac"] == pytest.approx(1 / 3)
    # three tiers: p > 0.7 -> 1000, 0.3 < p <= 0.7 -> 2000, p <= 0.3 -> 3000
    out = run("da_dler", make(correct, lengths, groups=groups, max_len=8000),
              thresholds=[0.3, 0.7], target_lens=[1000, 2000, 3000])
    approx(out.scores, [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    trunc = make([1, 1], [10, 10], truncated=[True, False])
    approx(run("da_dler", trunc).scores, [0, 1])
    with pytest.raises(ValueError, match="target_lens"):
        run("da_dler", trunc, thresholds=[0.5], target_lens=[2000])


# ----- 5. HAPO -------------------------------------------------------------------------------------
def hapo_inp(correct, lengths, key="p"):
    return make(correct, lengths, texts=[key] * len(correct))


def test_hapo_cosine_worked_example_table():
    state = {"history": {"p": 1000}}
    inp = hapo_inp([1, 1, 1, 0, 0], [500, 1500, 2500, 500, 1500])
    out = run("hapo", inp, state=state)
    approx(out.scores, [1 + 0.7071, 1 - 0.7, 1 - 0.7, 0.0, -0.7071])
    # case 6: h unset -> r_len = 0 for any length and correctness
    approx(run("hapo", hapo_inp([1, 0, 1], [5, 500, 99999], key="new")).scores, [1, 0, 1])


def test_hapo_linear_worked_example():
    inp = hapo_inp([1, 1, 1, 1, 0, 0, 0], [500, 1050, 1500, 3000, 1500, 3000, 1050])
    out = run("hapo", inp, state={"history": {"p": 1000}}, variant="linear")
    approx(out.scores, [1.5, 1.0, 0.6, 0.3, -0.4, -1.0, 0.0])


def test_hapo_scores_with_old_history_then_updates_min():
    state: dict = {}
    out = run("hapo", hapo_inp([1, 1, 0], [800, 600, 100]), state=state)
    approx(out.scores, [1, 1, 0])  # never solved before: no length term
    assert state["history"] == {"p": 600}
    out = run("hapo", hapo_inp([1, 0], [300, 1200]), state=state)
    approx(out.scores, [1 + math.cos(math.pi / 4), math.cos(math.pi / 2 * 1200 / 600)])
    assert state["history"] == {"p": 300}
    run("hapo", hapo_inp([1, 0], [900, 10]), state=state)  # longer correct / short wrong: no change
    assert state["history"] == {"p": 300}


def test_hapo_mean_mode_is_count_weighted():
    state: dict = {}
    run("hapo", hapo_inp([1, 1, 0], [100, 300, 5]), state=state, mode="mean")
    assert state["history"]["p"] == pytest.approx(200) and state["counts"]["p"] == 2
    out = run("hapo", hapo_inp([1], [500]), state=state, mode="mean")
    approx(out.scores, [1 + max(-0.7, math.cos(math.pi / 2 * 500 / 200))])
    assert state["history"]["p"] == pytest.approx(300) and state["counts"]["p"] == 3


def test_hapo_correct_never_below_incorrect_of_same_problem():
    g = torch.Generator().manual_seed(0)
    for weight in (0.3, 1.0):
        for variant in ("cosine", "linear"):
            lengths = torch.randint(1, 5000, (64,), generator=g).tolist()
            correct = [i % 2 for i in range(64)]
            for h in (50, 700, 3000):
                out = run("hapo", hapo_inp(correct, lengths), state={"history": {"p": h}},
                          weight=weight, variant=variant).scores.tolist()
                worst_right = min(s for s, c in zip(out, correct) if c)
                best_wrong = max(s for s, c in zip(out, correct) if not c)
                assert worst_right > best_wrong


def test_hapo_history_is_per_problem_text():
    state: dict = {"history": {"a": 100}}
    inp = make([1, 1], [200, 200], groups=[0, 1], texts=["a", "b"])
    approx(run("hapo", inp, state=state).scores, [1 + max(-0.7, math.cos(math.pi)), 1.0])
    assert state["history"] == {"a": 100, "b": 200}


def test_hapo_state_round_trip_json_and_torch(tmp_path):
    state: dict = {}
    for i, key in enumerate(["x", "y", "x"]):
        run("hapo", hapo_inp([1, 1, 0], [300 + 10 * i, 500, 50], key=key), state=state, mode="mean")
    via_json = json.loads(json.dumps(state))
    assert via_json == state
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    via_torch = torch.load(buf, weights_only=True)
    assert via_torch == state
    # a restored state scores the next batch exactly like the live one
    nxt = hapo_inp([1, 0, 1], [250, 900, 800], key="x")
    ref = run("hapo", nxt, state=state, mode="mean").scores
    for restored in (via_json, via_torch):
        assert torch.equal(run("hapo", nxt, state=restored, mode="mean").scores, ref)
        assert restored == state


def test_hapo_rejects_unknown_options():
    with pytest.raises(ValueError, match="variant"):
        run("hapo", hapo_inp([1], [1]), variant="cos")
    with pytest.raises(ValueError, match="mode"):
        run("hapo", hapo_inp([1], [1]), mode="max")


# ----- 6. GRPO-λ -----------------------------------------------------------------------------------
def test_grpo_lambda_worked_example():
    inp = make([1, 1, 1, 0], [100, 200, 300, 50])
    approx(run("grpo_lambda", inp).scores, [0.8637, 0.7000, 0.5363, 0.0])


def test_grpo_lambda_only_top_groups_are_shaped():
    # 6 groups of 4; top ceil(6 * 0.2) = 2 groups by ratio: group 2 (1.0) and group 0 (0.75)
    correct = [1, 1, 1, 0] + [1, 0, 0, 0] + [1, 1, 1, 1] + [0, 0, 0, 0] + [1, 1, 0, 0] + [1, 0, 1, 0]
    lengths = [100, 200, 300, 10, 100, 5, 5, 5, 100, 100, 100, 100, 9, 9, 9, 9, 1, 900, 3, 4, 7, 8, 9, 10]
    groups = [g for g in range(6) for _ in range(4)]
    out = run("grpo_lambda", make(correct, lengths, groups=groups)).scores.tolist()
    approx(torch.tensor(out[:4]), [0.8637, 0.7, 0.5363, 0.0])
    approx(torch.tensor(out[8:12]), [0.7] * 4)  # equal lengths: z = 0 -> 1 - 0.6/2
    others = list(range(4, 8)) + list(range(12, 24))
    assert [out[i] for i in others] == [float(correct[i]) for i in others]
    assert all(out[i] == 0.0 for i, c in enumerate(correct) if not c)


def test_grpo_lambda_ties_by_group_order_and_single_correct():
    # all ratios equal: the first group in batch order (id 7) is the top one, even with a larger id
    inp = make([1, 0, 1, 0, 1, 0], [10, 20, 30, 40, 50, 60], groups=[7, 7, 3, 3, 5, 5])
    out = run("grpo_lambda", inp).scores.tolist()
    assert out == pytest.approx([0.7, 0.0, 1.0, 0.0, 1.0, 0.0])  # one correct: std_eps, z = 0
    out = run("grpo_lambda", inp, top_frac=0.5).scores.tolist()  # ceil(1.5) = 2: ids 7 and 3
    assert out == pytest.approx([0.7, 0.0, 0.7, 0.0, 1.0, 0.0])


# ----- 7. Apriel DAP --------------------------------------------------------------------------------
def test_apriel_dap_worked_examples():
    # group 0: 1 of 4 correct (s = 0.25); the correct row has l = 14000 -> LP = -0.5
    inp = make([1, 0, 0, 0], [14000, 14000, 10000, 16000], truncated=[False, False, False, True],
               max_len=16000)
    approx(run("apriel_dap", inp, buffer=4000).scores, [0.875, -0.5, 0.0, -1.0])
    # l = 16000 unfinished with task reward 1: lambda = 1 -> total 0
    inp = make([1, 1, 1, 1], [16000, 100, 100, 100], truncated=[True, False, False, False], max_len=16000)
    approx(run("apriel_dap", inp, buffer=4000).scores, [0.0, 1.0, 1.0, 1.0])


def test_apriel_dap_gamma_failure_scale_and_outside_buffer_unchanged():
    inp = make([1, 1, 0, 0], [13000, 12000, 15000, 11000], scores=[1.0, 1.3, 0.1, -0.2], max_len=16000)
    out = run("apriel_dap", inp, buffer=4000, gamma=2.0, failure_scale=0.5).scores
    approx(out, [1.0 - 0.25 * 0.25, 1.3, 0.1 - 0.5 * 0.75, -0.2])
    # every l <= L - B leaves the score unchanged; buffer 0 turns the penalty off
    short = make([1, 0, 1], [12000, 3, 11999], scores=[0.4, -1.0, 2.0], max_len=16000)
    approx(run("apriel_dap", short, buffer=4000).scores, [0.4, -1.0, 2.0])
    approx(run("apriel_dap", inp).scores, [1.0, 1.3, 0.1, -0.2])
    approx(run("apriel_dap", make([1], [900], max_len=16000), buffer=200, max_len=1000).scores, [0.5])
    with pytest.raises(ValueError, match="failure_scale"):
        run("apriel_dap", inp, buffer=10, failure_scale=1.5)

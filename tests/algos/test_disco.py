"""DisCO (arXiv 2505.12366) and DRPO (arXiv 2510.04474): group objectives on binary rewards with a KL hinge."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlfold.algos.disco  # noqa: F401  (registers the disco and drpo policy losses)
from rlfold.algos import POLICY_LOSSES
from rlfold.algos.disco import (
    disco_loss,
    drpo_log_weights,
    group_objectives,
    kl_estimate,
    kl_hinge_penalty,
    kl_hinge_surrogate,
    negative_term,
    score_gradients,
    sequence_scores,
)
from rlfold.core.errors import ConfigError
from rlfold.core.registry import needed_inputs

D = torch.float64
S = torch.tensor([-0.2, -0.4, -1.0, -0.6], dtype=D)   # policy.md §5(e)
R = torch.tensor([1.0, 1.0, 0.0, 0.0])
G0 = torch.zeros(4, dtype=torch.long)


# ----- policy.md §5(e) -------------------------------------------------------------------------
def test_worked_numbers_of_policy_md():
    j, valid = group_objectives(S, R, G0, form="mean")
    assert valid.tolist() == [True] and j.item() == pytest.approx(0.5, abs=1e-12)      # DisCO-b
    lme = negative_term(S[2:], form="lse", tau=10.0)
    assert lme.item() == pytest.approx(-0.7980, abs=5e-5)
    assert lme.item() == pytest.approx(10 * math.log((math.exp(-0.1) + math.exp(-0.06)) / 2), abs=1e-12)
    j_lse, _ = group_objectives(S, R, G0, form="lse", tau=10.0)
    assert j_lse.item() == pytest.approx(-0.3 - lme.item(), abs=1e-12)


def test_lse_limits_mean_and_max():
    neg = S[2:]
    assert negative_term(neg, tau=1e6).item() == pytest.approx(-0.8, abs=1e-6)   # tau -> inf: mean
    assert negative_term(neg, tau=1e-6).item() == pytest.approx(-0.6, abs=1e-5)  # tau -> 0: max
    assert negative_term(neg, form="mean").item() == pytest.approx(-0.8, abs=1e-12)
    # monotone in between: mean <= tau-LSE <= max
    for tau in (0.05, 0.5, 5.0):
        v = negative_term(neg, tau=tau).item()
        assert -0.8 <= v <= -0.6


@pytest.mark.parametrize("form", ["lse", "mean"])
def test_groups_without_both_kinds_contribute_nothing(form):
    s = torch.tensor([-0.2, -0.4, -1.0, -0.6, -0.3, -0.9, -0.5, -0.7], dtype=D, requires_grad=True)
    r = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])      # all correct, then all wrong
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    j, valid = group_objectives(s, r, g, form=form)
    assert valid.tolist() == [False, False] and j.tolist() == [0.0, 0.0]
    j.sum().backward()
    assert torch.count_nonzero(s.grad) == 0


def test_normalised_by_all_questions():
    """One valid group beside an all-correct one: the loss is -J / 2, not -J."""
    logp = torch.tensor([[-0.2, -0.2], [-0.4, -0.4], [-1.0, -1.0], [-0.6, -0.6],
                         [-0.1, -0.1], [-0.3, -0.3], [-0.2, -0.2], [-0.5, -0.5]], dtype=D)
    mask = torch.ones_like(logp)
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss, parts = disco_loss(logp, logp, mask, r, g, n_questions=2, form="mean")
    assert loss.item() == pytest.approx(-0.5 / 2, abs=1e-12)
    assert parts["valid_groups"].item() == 1 and parts["kl"].item() == 0.0


# ----- gradients ------------------------------------------------------------------------------
def _direct_loss(logp, old, mask, rewards, groups, *, n_questions, score, form, tau, beta, delta,
                 log_w=None):
    """The formula written out row by row and group by group (the paper's exact LSE, not the code's surrogate)."""
    rows = logp.shape[0]
    s = []
    for i in range(rows):
        valid = [t for t in range(logp.shape[1]) if mask[i, t] > 0]
        vals = [logp[i, t] if score == "logL" else torch.exp(logp[i, t] - old[i, t]) for t in valid]
        s.append(sum(vals) / len(vals))
    total = logp.new_zeros(())
    for q in sorted(set(groups.tolist())):
        pos = [i for i in range(rows) if groups[i] == q and rewards[i] == 1]
        neg = [i for i in range(rows) if groups[i] == q and rewards[i] == 0]
        if not pos or not neg:
            continue
        if log_w is None:
            pos_part = sum(s[i] for i in pos) / len(pos)
        else:
            z = sum(math.exp(float(log_w[i])) for i in pos)
            pos_part = sum(math.exp(float(log_w[i])) / z * s[i] for i in pos)
        if form == "mean":
            neg_part = sum(s[j] for j in neg) / len(neg)
        else:
            neg_part = tau * torch.log(sum(torch.exp(s[j] / tau) for j in neg) / len(neg))
        total = total + pos_part - neg_part
    k3 = [(-(logp[i, t] - old[i, t]) + torch.exp(logp[i, t] - old[i, t]) - 1) for i in range(rows)
          for t in range(logp.shape[1]) if mask[i, t] > 0]
    d_hat = sum(k3) / len(k3)
    return -total / n_questions + 0.5 * beta * torch.clamp(d_hat - delta, min=0) ** 2


def _batch(seed=0, rows=8, width=5):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=gen, dtype=D) * 2
    logp = (old + 0.3 * torch.randn(rows, width, generator=gen, dtype=D)).clamp(max=-1e-3)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1, 4, 3])[:rows]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(D)
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])[:rows]
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[:rows]
    return logp, old, mask, r, g


@pytest.mark.parametrize("score", ["logL", "Lratio"])
@pytest.mark.parametrize("form", ["lse", "mean"])
def test_gradient_matches_the_direct_formula(score, form):
    """KL above delta (the hinge active): value and gradient of the squared-hinge form (beta/2 convention)."""
    logp, old, mask, r, g = _batch()
    x = logp.clone().requires_grad_(True)
    loss, parts = disco_loss(x, old, mask, r, g, n_questions=2, score=score, form=form, tau=0.7, beta=3.0,
                             delta=1e-3)
    assert parts["kl"].item() > 1e-3
    loss.backward()
    y = logp.clone().requires_grad_(True)
    ref = _direct_loss(y, old, mask, r, g, n_questions=2, score=score, form=form, tau=0.7, beta=3.0, delta=1e-3)
    ref.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    # the value: objective exact; the penalty is the code's sg(beta [D - delta]_+) D, not (beta/2)[D - delta]^2
    d = parts["kl"]
    expected = ref.item() - kl_hinge_penalty(d, delta=1e-3, beta=3.0).item() + (3.0 * (d - 1e-3) * d).item()
    assert loss.item() == pytest.approx(expected, abs=1e-10)
    assert torch.count_nonzero(x.grad * (1 - mask)) == 0  # padded tokens get no gradient


def test_closed_form_score_gradients_equal_autograd():
    s = torch.tensor([-0.2, -0.4, -1.0, -0.6, -0.3, -0.9, -0.5, -0.7], dtype=D, requires_grad=True)
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    lw = torch.tensor([0.0, 2.0, 5.0, -1.0, 0.3, 0.0, 0.0, 0.0], dtype=D)
    for form in ("lse", "mean"):
        for log_w in (None, lw):
            s.grad = None
            j, _ = group_objectives(s, r, g, form=form, tau=10.0, positive_log_weights=log_w)
            j.sum().backward()
            torch.testing.assert_close(s.grad, score_gradients(s.detach(), r, g, form=form, tau=10.0,
                                                               positive_log_weights=log_w))
    # §5(e): dJ/ds = [1/2, 1/2, -softmax(s_neg / 10)]
    grads = score_gradients(S, R, G0, tau=10.0)
    soft = torch.softmax(torch.tensor([-0.1, -0.06], dtype=D), 0)
    torch.testing.assert_close(grads, torch.cat([torch.tensor([0.5, 0.5], dtype=D), -soft]))


def test_official_surrogate_has_the_same_gradient_and_value_mean_minus_tau():
    """Optimization-AI/DisCO writes tau * S / sg(S) (S = sum exp(s/tau - max)) for the LSE term: the gradient is
    ours, the value is mean_+ s - tau (written here independently on the §5(e) group)."""
    tau = 10.0
    s1 = S.clone().requires_grad_(True)
    j, _ = group_objectives(s1, R, G0, tau=tau)
    j.sum().backward()
    s2 = S.clone().requires_grad_(True)
    z = s2[2:] / tau
    big = torch.exp(z - z.max().detach()).sum()
    official = s2[:2].mean() - tau * big / (big.detach() + torch.finfo(D).eps)
    official.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert official.item() == pytest.approx(-0.3 - tau, abs=1e-9)


# ----- the KL hinge ---------------------------------------------------------------------------
def test_no_penalty_gradient_at_or_below_delta():
    d = torch.tensor(5e-5, dtype=D, requires_grad=True)
    kl_hinge_surrogate(d, delta=1e-4, beta=1e3).backward()
    assert d.grad.item() == 0.0
    d = torch.tensor(3e-4, dtype=D, requires_grad=True)
    kl_hinge_surrogate(d, delta=1e-4, beta=1e3).backward()
    g_code = d.grad.item()
    d.grad = None
    kl_hinge_penalty(d, delta=1e-4, beta=1e3).backward()
    assert g_code == pytest.approx(1e3 * 2e-4) and d.grad.item() == pytest.approx(g_code)  # beta/2 convention
    # through the loss: D^ <= delta leaves exactly the objective's gradient
    logp, old, mask, r, g = _batch()
    near = (old + 1e-4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1), dtype=D))
    x = near.clone().requires_grad_(True)
    loss, parts = disco_loss(x, old, mask, r, g, n_questions=2, delta=1e-4, beta=1e3)
    assert 0 < parts["kl"].item() <= 1e-4 and parts["penalty"].item() == 0.0
    loss.backward()
    y = near.clone().requires_grad_(True)
    loss0, _ = disco_loss(y, old, mask, r, g, n_questions=2, delta=1e-4, beta=0.0)
    loss0.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=0)


def test_kl_estimators():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], dtype=D)
    old = torch.tensor([[-1.5, -2.0, -0.5]], dtype=D)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=D)
    lr = torch.tensor([0.5, 0.0])
    torch.testing.assert_close(kl_estimate(logp, old, mask)[0, :2], -lr.to(D) + torch.exp(lr.to(D)) - 1)
    torch.testing.assert_close(kl_estimate(logp, old, mask, kl="k1")[0, :2], -lr.to(D))
    assert kl_estimate(logp, old, mask)[0, 2].item() == 0.0


# ----- DRPO -----------------------------------------------------------------------------------
def _part(name, logp, old, mask, r, g, **kw):
    fn = POLICY_LOSSES.get(name)
    extra = {"max_response_length": mask.shape[1]} if "max_response_length" in needed_inputs(fn) else {}
    n_groups = torch.tensor(float(torch.unique(g).numel()))
    return fn(logp, old, torch.zeros_like(logp), mask, rewards=r, group_ids=g, batch_groups=n_groups,
              batch_tokens=mask.sum(), **extra, **kw)


def test_drpo_with_infinite_lambda_is_disco_logl():
    logp, old, mask, r, g = _batch()
    x1, x2 = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    l1, _ = _part("drpo", x1, old, mask, r, g, lam=math.inf, tau=10.0)
    l2, _ = _part("disco", x2, old, mask, r, g, score="logL", form="lse", tau=10.0)
    l1.sum().backward()
    l2.sum().backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_drpo_weights_positives_by_length_and_never_reads_negative_lengths():
    logp, old, mask, r, g = _batch()
    base, _ = _part("drpo", logp, old, mask, r, g, lam=0.1)
    plain, _ = _part("disco", logp, old, mask, r, g)
    assert not torch.allclose(base.sum(), plain.sum())   # positives of unequal length: the weights matter
    # the worked formula on group 0: w_i = exp((1 - L_i/L_max)/lam) over positives, DisCO's LSE on negatives
    s = sequence_scores(logp, old, mask)
    lens = mask.sum(-1)
    lw = drpo_log_weights(lens, 5, lam=0.1)
    for q in (0, 1):
        rows = (g == q)
        p, m = rows & (r == 1), rows & (r == 0)
        w = torch.exp(lw[p]) / torch.exp(lw[p]).sum()
        expected = (w * s[p]).sum() - negative_term(s[m], tau=10.0)
        j, _ = group_objectives(s, r, g, positive_log_weights=lw)
        assert j[q].item() == pytest.approx(expected.item(), abs=1e-12)
    # a negative row made longer with tokens at its own mean log-prob keeps its score: DRPO is unchanged
    i = 1                                   # a negative of group 0, 3 valid tokens of 5
    logp2, mask2 = logp.clone(), mask.clone()
    logp2[i, 3:] = s[i]
    mask2[i, 3:] = 1.0
    assert sequence_scores(logp2, old, mask2)[i].item() == pytest.approx(s[i].item(), abs=1e-12)
    loss_a, _ = disco_loss(logp, old, mask, r, g, n_questions=2, beta=0.0, positive_log_weights=lw)
    lw2 = drpo_log_weights(mask2.sum(-1), 5, lam=0.1)
    loss_b, _ = disco_loss(logp2, old, mask2, r, g, n_questions=2, beta=0.0, positive_log_weights=lw2)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-12)
    # the same change on a positive (row 0 -> row 2 of group 0 is positive with 4 tokens) changes the loss
    j = 2
    logp3, mask3 = logp.clone(), mask.clone()
    logp3[j, 4:] = s[j]
    mask3[j, 4:] = 1.0
    lw3 = drpo_log_weights(mask3.sum(-1), 5, lam=0.1)
    loss_c, _ = disco_loss(logp3, old, mask3, r, g, n_questions=2, beta=0.0, positive_log_weights=lw3)
    assert abs(loss_c.item() - loss_a.item()) > 1e-6


def test_drpo_small_lambda_does_not_overflow():
    logp, old, mask, r, g = _batch()
    loss, _ = _part("drpo", logp, old, mask, r, g, lam=1e-4)
    assert torch.isfinite(loss).all()


# ----- registered parts -----------------------------------------------------------------------
def test_parts_are_registered_with_their_inputs_and_docstrings():
    for name in ("disco", "drpo"):
        fn = POLICY_LOSSES.get(name)
        assert {"rewards", "group_ids", "batch_groups", "batch_tokens"} <= set(needed_inputs(fn))
        assert "arXiv 25" in fn.__doc__.splitlines()[0]
    assert "max_response_length" in needed_inputs(POLICY_LOSSES.get("drpo"))


def test_token_sum_of_the_part_is_the_loss_and_micro_batches_add_up():
    """Whole groups in two calls with the mini-batch's normalisers give the one-call loss and gradient (hinge off)."""
    logp, old, mask, r, g = _batch()
    x = logp.clone().requires_grad_(True)
    per_token, metrics = _part("disco", x, old, mask, r, g, beta=0.0)
    loss, _ = disco_loss(logp, old, mask, r, g, n_questions=2, beta=0.0)
    assert (per_token * mask).sum().item() == pytest.approx(loss.item(), abs=1e-12)
    assert torch.count_nonzero(per_token * (1 - mask)) == 0
    per_token.sum().backward()
    fn = POLICY_LOSSES.get("disco")
    y = logp.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 4), slice(4, 8)):
        part, _ = fn(y[rows], old[rows], torch.zeros_like(old[rows]), mask[rows], rewards=r[rows], group_ids=g[rows],
                     batch_groups=torch.tensor(2.0), batch_tokens=mask.sum(), beta=0.0)
        part.sum().backward()
        total += part.sum().item()
    assert total == pytest.approx(loss.item(), abs=1e-12)
    torch.testing.assert_close(x.grad, y.grad)
    assert set(metrics) >= {"disco_objective", "disco_kl", "disco_valid_group_frac", "ppo_kl"}


def test_non_binary_rewards_and_bad_shapes_are_refused():
    logp, old, mask, r, g = _batch()
    with pytest.raises(ConfigError, match="binary rewards"):
        _part("disco", logp, old, mask, r * 0.9 + 0.05, g)
    with pytest.raises(ValueError, match="binary rewards"):
        group_objectives(S, torch.tensor([1.0, 0.5, 0.0, 0.0]), G0)
    with pytest.raises(ValueError, match="rewards must be"):
        group_objectives(S, R[:3], G0)
    with pytest.raises(ValueError, match="must have the shape"):
        sequence_scores(logp, old[:, :3], mask)
    with pytest.raises(ValueError, match="tau"):
        negative_term(S, tau=0.0)
    # a row without a loss token leaves its group (a non-binary reward there is not read)
    r2 = r.clone()
    r2[0] = 0.5
    mask2 = mask.clone()
    mask2[0] = 0
    _part("disco", logp, old, mask2, r2, g)


def test_option_domains_are_refused_at_config_load():
    from rlfold.core.config import LocatedValueError, check_part_options

    fn = POLICY_LOSSES.get("disco")
    for bad in ({"tau": 0.0}, {"beta": -1.0}, {"form": "max"}, {"score": "ratio"}, {"kl": "k2"}):
        with pytest.raises(LocatedValueError):
            check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "disco", fn, bad, n_positional=4)
    check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "disco", fn, {"tau": 1.0, "score": "Lratio"},
                       n_positional=4)
    with pytest.raises(LocatedValueError):
        check_part_options(("algo", "policy_loss_kwargs"), "policy loss", "drpo", POLICY_LOSSES.get("drpo"),
                           {"lam": 0.0}, n_positional=4)


# ----- the trainer (runs once the update supplies the inputs: trainers/update.py POLICY_INPUTS) ----------
def _trainer_supports_group_objectives() -> bool:
    from rlfold.trainers import update

    return hasattr(update, "POLICY_INPUTS") and "disco" in POLICY_LOSSES


needs_trainer = pytest.mark.skipif(
    not _trainer_supports_group_objectives(),
    reason="the update does not supply rewards / group_ids / batch_groups / batch_tokens to policy losses yet "
           "(trainers/update.py POLICY_INPUTS missing: the DisCO trainer diff is not applied)")


@needs_trainer
@pytest.mark.parametrize("recipe", ["disco", "drpo"])
def test_recipe_runs_two_steps_through_the_cli(recipe, tmp_path, capsys):
    from rlfold.cli import main

    run_dir = tmp_path / "run"
    rc = main(["train", recipe, f"run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4", "eval.size=8",
               "eval.every=0", "checkpoint.every=0", "log.progress=false"])
    assert rc == 0, capsys.readouterr().err
    steps = [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row["step"] > 0]
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert not {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
        assert row["nonfinite_steps"] == 0 and "actor/disco_objective" in row and "actor/disco_kl" in row


@needs_trainer
def test_settings_that_split_a_group_are_refused(tmp_path, capsys):
    from rlfold.cli import main

    rc = main(["train", "disco", f"run_dir={tmp_path}/run", "train.steps=1", "train.prompts_per_step=4",
               "train.micro_batch_size=12", "eval.size=8", "eval.every=0", "checkpoint.every=0",
               "log.progress=false"])
    err = capsys.readouterr().err
    assert rc != 0 and "micro_batch_size=12" in err and "multiple of 8" in err


@needs_trainer
def test_policy_term_refuses_a_call_that_splits_a_group():
    from rlfold.trainers.update import MicroBatch, PolicyTerm, PreparedBatch

    logp, old, mask, r, g = _batch()
    prep = PreparedBatch(roll=None, advantages=torch.zeros_like(logp), old_logprobs=old,  # type: ignore[arg-type]
                         loss_mask=mask, prompts=[], rewards=r, group_ids=g)
    term = PolicyTerm(POLICY_LOSSES.get("disco"), {})
    rows = torch.arange(0, 6)
    mb = MicroBatch(rows=rows, roll=None, mask=mask[rows], norm=torch.tensor(1.0),  # type: ignore[arg-type]
                    logprobs=logp[rows], entropy=torch.zeros_like(logp[rows]), columns=logp.shape[1],
                    total_tokens=float(mask.sum()), batch_rows=torch.arange(8))
    with pytest.raises(ConfigError, match="splits a prompt group"):
        term._inputs(prep, mb)
    whole = torch.arange(0, 4)
    mb.rows, mb.mask, mb.logprobs = whole, mask[whole], logp[whole]
    inputs = term._inputs(prep, mb)
    assert inputs["batch_groups"].item() == 2 and inputs["group_ids"].tolist() == [0, 0, 0, 0]

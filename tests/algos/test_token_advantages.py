"""Token-level advantage estimators against hand numbers: REINFORCE++ (arXiv 2501.03262), GAE (1506.02438)
with VC-PPO's decoupled lambda (2503.01491), EGAE from T-PPO (2506.15050), ReMax (2310.10505)."""

from __future__ import annotations

import inspect
import statistics

import pytest
import torch

from rlfold.algos import ADVANTAGES
from rlfold.algos.token_advantages import discounted_returns, gae_targets, masked_whiten
from rlfold.core.registry import needed_inputs


def _ids(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def _outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sequence reward on the last valid token, 0 elsewhere (the trainer's convention)."""
    out = torch.zeros(mask.shape, dtype=rewards.dtype)
    for i, n in enumerate(mask.sum(1).tolist()):
        if n:
            out[i, n - 1] = rewards[i]
    return out


def _gae_reference(r: list[float], v: list[float], gamma: float, lam: float, boot: float = 0.0):
    """Textbook GAE on one row: A_t = sum_l (gamma lam)^l delta_{t+l}, V after the row = boot."""
    n = len(r)
    nxt = v[1:] + [boot]
    delta = [r[t] + gamma * nxt[t] - v[t] for t in range(n)]
    adv = [sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) for t in range(n)]
    return adv, [a + b for a, b in zip(adv, v)]


# --- registration ---------------------------------------------------------------------------------


def test_needs_and_keyword_hyperparameters() -> None:
    assert needed_inputs(ADVANTAGES.get("reinforce_pp")) == ("token_rewards",)
    assert needed_inputs(ADVANTAGES.get("remax")) == ("token_rewards", "baseline_rewards")
    assert needed_inputs(ADVANTAGES.get("gae")) == ("token_rewards", "values", "truncated")
    for name in ("grpo", "dr_grpo", "rloo", "opo", "reinforce_pp_baseline"):
        assert needed_inputs(ADVANTAGES.get(name)) == ()
    for name in ADVANTAGES.names():
        params = list(inspect.signature(ADVANTAGES.get(name)).parameters.values())
        assert [p.name for p in params[:3]] == ["rewards", "group_ids", "response_mask"]
        assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), name
        needed = set(needed_inputs(ADVANTAGES.get(name)))
        for p in params[3:]:
            assert (p.default is p.empty) == (p.name in needed), (name, p.name)


# --- discounted returns and whitening -------------------------------------------------------------


def test_discounted_returns_gamma_half() -> None:
    r = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]])
    got = discounted_returns(r, _mask([4, 2], 4), 0.5)
    # row 0: G3 = 2, G2 = 1, G1 = 1 + 0.5 = 1.5, G0 = 0.75; row 1: G1 = 3, G0 = 1.5
    assert torch.allclose(got, torch.tensor([[0.75, 1.5, 1.0, 2.0], [1.5, 3.0, 0.0, 0.0]]))


def test_discounted_returns_skip_masked_positions() -> None:
    # an interior masked position contributes nothing and does not count for the discount
    got = discounted_returns(torch.tensor([[0.0, 5.0, 1.0]]), torch.tensor([[1, 0, 1]]), 0.5)
    assert torch.equal(got, torch.tensor([[0.5, 0.0, 1.0]]))


def test_masked_whiten_mean_zero_unbiased_var_one() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, generator=gen) * 3 + 2
    mask = _mask([6, 1, 3, 0, 4], 6)
    out = masked_whiten(x, mask)
    valid = out[mask.bool()].tolist()
    assert abs(statistics.mean(valid)) < 1e-5
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(out[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.equal(masked_whiten(torch.zeros(2, 3), torch.ones(2, 3)), torch.zeros(2, 3))


# --- REINFORCE++ (arXiv 2501.03262) ---------------------------------------------------------------


def test_reinforce_pp_whitens_discounted_returns() -> None:
    token_rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 3.0, 0.0, 0.0]])
    mask = _mask([4, 2], 4)
    adv, metrics = ADVANTAGES.get("reinforce_pp")(
        torch.tensor([2.0, 3.0]), _ids(0, 0), mask, token_rewards=token_rewards, gamma=0.5
    )
    returns = [0.75, 1.5, 1.0, 2.0, 1.5, 3.0]  # hand values, see test_discounted_returns_gamma_half
    mean, std = statistics.mean(returns), (statistics.variance(returns) + 1e-8) ** 0.5
    assert metrics["returns_mean"] == pytest.approx(1.625)
    expected = [(g - mean) / std for g in returns]
    assert adv[mask.bool()].tolist() == pytest.approx(expected, abs=1e-5)
    assert adv[1, 2:].tolist() == [0.0, 0.0]
    valid = adv[mask.bool()].tolist()
    assert abs(statistics.mean(valid)) < 1e-5
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-5)


# --- ReMax ----------------------------------------------------------------------------------------


def test_remax_hand_example() -> None:
    remax = ADVANTAGES.get("remax")
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [-0.1, 0.6, 0.0]])
    mask = _mask([3, 2], 3)
    adv, metrics = remax(
        torch.tensor([1.0, 0.5]), _ids(0, 1), mask,
        token_rewards=token_rewards, baseline_rewards=torch.tensor([0.25, 0.6]),
    )
    # row 0: G = [1, 1, 1] - 0.25; row 1: G = [0.5, 0.6] - 0.6
    assert torch.allclose(adv, torch.tensor([[0.75, 0.75, 0.75], [-0.1, 0.0, 0.0]]), atol=1e-6)
    assert adv[1, 2].item() == 0.0
    assert metrics["baseline_mean"] == pytest.approx(0.425)
    adv, _ = remax(
        torch.tensor([1.0, 0.5]), _ids(0, 1), mask,
        token_rewards=token_rewards, baseline_rewards=torch.tensor([0.5, 0.6]), gamma=0.9,
    )
    # row 0: G = [0.81, 0.9, 1] - 0.5; row 1: G = [-0.1 + 0.54, 0.6] - 0.6
    assert torch.allclose(adv, torch.tensor([[0.31, 0.4, 0.5], [-0.16, 0.0, 0.0]]), atol=1e-6)


def test_remax_baseline_equal_to_reward_gives_zero() -> None:
    rewards = torch.tensor([0.1, 1.0, 0.0, 0.7, 0.3])
    mask = _mask([3, 1, 4, 2, 0], 4)
    adv, _ = ADVANTAGES.get("remax")(
        rewards, _ids(0, 1, 2, 3, 4), mask,
        token_rewards=_outcome_token_rewards(rewards, mask), baseline_rewards=rewards.clone(),
    )
    assert torch.equal(adv, torch.zeros(5, 4))


# --- GAE, decoupled lambda (VC-PPO, arXiv 2503.01491) and EGAE (T-PPO, arXiv 2506.15050) ----------


def _gae(token_rewards, values, mask, truncated, **kw):
    n = mask.shape[0]
    return ADVANTAGES.get("gae")(
        torch.zeros(n), torch.arange(n), mask,
        token_rewards=token_rewards, values=values, truncated=truncated, **kw,
    )


def test_gae_worked_example() -> None:
    r, v = torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5)
    m, done = torch.ones(1, 3), torch.tensor([False])
    # lambda_critic = 1: delta = [0, 0, 0.5], A = [0.5, 0.5, 0.5], returns = MC = [1, 1, 1]
    adv, ret = gae_targets(r, v, m, done, gamma=1.0, lam=1.0)
    assert torch.allclose(ret, torch.ones(1, 3))
    assert torch.allclose(adv, torch.full((1, 3), 0.5))
    # lambda_actor = 0.95: A = [0.95^2 * 0.5, 0.95 * 0.5, 0.5]
    adv, metrics = _gae(r, v, m, done, lam=0.95, whiten=False)
    assert torch.allclose(adv, torch.tensor([[0.45125, 0.475, 0.5]]), atol=1e-6)
    assert metrics["advantages_mean_raw"] == pytest.approx((0.45125 + 0.475 + 0.5) / 3, abs=1e-6)
    _, ret = gae_targets(r, v, m, done, gamma=1.0, lam=0.95)
    assert torch.allclose(ret, torch.tensor([[0.95125, 0.975, 1.0]]), atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.9, 0.8), (0.99, 0.0)])
def test_gae_equals_textbook_single_lambda(gamma: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(4)
    lengths = [5, 3, 1, 4]
    mask = _mask(lengths, 5)
    r = torch.randn(4, 5, generator=gen, dtype=torch.float64) * mask
    v = torch.randn(4, 5, generator=gen, dtype=torch.float64) * mask
    adv, ret = gae_targets(r, v, mask, torch.zeros(4, dtype=torch.bool), gamma=gamma, lam=lam)
    done = torch.zeros(4, dtype=torch.bool)
    registered, _ = _gae(r, v, mask, done, gamma=gamma, lam=lam, whiten=False)
    assert torch.equal(registered, adv)
    for i, n in enumerate(lengths):
        ref_adv, ref_ret = _gae_reference(r[i, :n].tolist(), v[i, :n].tolist(), gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(ref_adv, abs=1e-12)
        assert ret[i, :n].tolist() == pytest.approx(ref_ret, abs=1e-12)
        assert torch.equal(adv[i, n:], torch.zeros(5 - n, dtype=torch.float64))
        assert torch.equal(ret[i, n:], torch.zeros(5 - n, dtype=torch.float64))


def test_critic_lambda_one_gives_mc_returns_independent_of_values() -> None:
    gen = torch.Generator().manual_seed(5)
    mask = _mask([4, 2, 3], 4)
    r = torch.randn(3, 4, generator=gen, dtype=torch.float64) * mask
    mc = r.flip(1).cumsum(1).flip(1) * mask
    done = torch.zeros(3, dtype=torch.bool)
    for _ in range(2):
        v = torch.randn(3, 4, generator=gen, dtype=torch.float64) * mask
        _, ret = gae_targets(r, v, mask, done, gamma=1.0, lam=1.0)
        assert torch.allclose(ret, mc, atol=1e-12)


def test_egae_equals_gae_on_finished_rows() -> None:
    gen = torch.Generator().manual_seed(6)
    mask = _mask([4, 2, 3], 4)
    r = torch.randn(3, 4, generator=gen) * mask
    v = torch.randn(3, 4, generator=gen) * mask
    truncated = torch.tensor([False, True, False])
    plain = gae_targets(r, v, mask, truncated, gamma=0.99, lam=0.95)
    ext = gae_targets(r, v, mask, truncated, gamma=0.99, lam=0.95, egae=True)
    for a, b in zip(plain, ext):
        assert torch.equal(a[[0, 2]], b[[0, 2]])
        assert not torch.equal(a[1], b[1])
    none_truncated = torch.zeros(3, dtype=torch.bool)
    for a, b in zip(
        gae_targets(r, v, mask, none_truncated, gamma=0.99, lam=0.95),
        gae_targets(r, v, mask, none_truncated, gamma=0.99, lam=0.95, egae=True),
    ):
        assert torch.equal(a, b)


def test_egae_truncated_row_bootstraps_last_value() -> None:
    # unfinished row, r = 0, V = [0.2, 0.4, 0.7], gamma = lam = 1, padding value ignored.
    r = torch.zeros(1, 4)
    v = torch.tensor([[0.2, 0.4, 0.7, 9.0]])
    mask = _mask([3], 4)
    truncated = torch.tensor([True])
    # EGAE: V(s_3) ~= V(s_2) = 0.7 -> delta = [0.2, 0.3, 0], A = [0.5, 0.3, 0], returns = 0.7
    adv, ret = gae_targets(r, v, mask, truncated, gamma=1.0, lam=1.0, egae=True)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.3, 0.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.7, 0.7, 0.7, 0.0]]))
    # plain GAE treats it as finished: delta = [0.2, 0.3, -0.7], A = [-0.2, -0.4, -0.7], returns 0
    adv, ret = gae_targets(r, v, mask, truncated, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[-0.2, -0.4, -0.7, 0.0]]))
    assert torch.allclose(ret, torch.zeros(1, 4), atol=1e-7)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_egae_last_delta_is_zero_when_last_reward_is_zero(lam: float) -> None:
    gen = torch.Generator().manual_seed(7)
    mask = _mask([5, 3], 5)
    v = torch.rand(2, 5, generator=gen) * mask
    r = torch.rand(2, 5, generator=gen) * mask
    r[0, 4] = 0.0
    r[1, 2] = 0.0
    adv, _ = gae_targets(r, v, mask, torch.tensor([True, True]), gamma=1.0, lam=lam, egae=True)
    # A_{l-1} = delta_{l-1} = 0 + V(s_{l-1}) - V(s_{l-1}) = 0 exactly
    assert adv[0, 4].item() == 0.0
    assert adv[1, 2].item() == 0.0


def test_gae_rows_of_different_lengths_and_padding() -> None:
    # padding carries junk that must be ignored; the trainer contract has 0 there anyway
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 7.0], [1.0, 7.0, 7.0]])
    v = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 3.0], [0.5, 3.0, 3.0]])
    mask = _mask([3, 2, 1], 3)
    adv, _ = _gae(r, v, mask, torch.tensor([False, False, True]), lam=0.95, whiten=False)
    # row 1: delta = [0, 0.5] -> A = [0.475, 0.5]; row 2: delta = [0.5] (finished bootstrap 0)
    expected = torch.tensor([[0.45125, 0.475, 0.5], [0.475, 0.5, 0.0], [0.5, 0.0, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(adv[mask == 0], torch.zeros(3))
    # EGAE on the one-token truncated row: delta = 1 + 0.5 - 0.5 = 1
    adv, _ = _gae(r, v, mask, torch.tensor([False, False, True]), lam=0.95, whiten=False, egae=True)
    assert adv[2].tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(adv[:2], expected[:2], atol=1e-6)


def test_gae_whitened_over_batch() -> None:
    gen = torch.Generator().manual_seed(8)
    mask = _mask([6, 2, 4, 5], 6)
    r = torch.randn(4, 6, generator=gen) * mask
    v = torch.randn(4, 6, generator=gen) * mask
    done = torch.zeros(4, dtype=torch.bool)
    adv, _ = _gae(r, v, mask, done)  # defaults gamma 1, lam 0.95, whiten
    raw, _ = gae_targets(r, v, mask, done, gamma=1.0, lam=0.95)
    assert torch.allclose(adv, masked_whiten(raw, mask))
    valid = adv[mask.bool()].tolist()
    assert abs(statistics.mean(valid)) < 1e-5
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_token_estimators_reject_bad_inputs() -> None:
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="token_rewards"):
        ADVANTAGES.get("reinforce_pp")(
            torch.ones(2), _ids(0, 0), mask, token_rewards=torch.ones(2, 4)
        )
    with pytest.raises(ValueError, match="baseline_rewards"):
        ADVANTAGES.get("remax")(
            torch.ones(2), _ids(0, 0), mask,
            token_rewards=torch.ones(2, 3), baseline_rewards=torch.ones(3),
        )
    with pytest.raises(ValueError, match="values"):
        _gae(torch.ones(2, 3), torch.ones(2, 2), mask, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="lam"):
        _gae(torch.ones(2, 3), torch.ones(2, 3), mask, torch.zeros(2, dtype=torch.bool), lam=1.5)

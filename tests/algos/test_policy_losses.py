"""Policy losses against hand-computed numbers: PPO clip with DAPO's clip-higher (arXiv 1707.06347, 2503.14476),
GSPO (arXiv 2507.18071), CISPO (arXiv 2506.13585) and SAPO (arXiv 2511.20347), with verl's conventions."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from rlfold.core.registry import needed_inputs

from rlfold.algos import POLICY_LOSSES, aggregate

ppo_clip = POLICY_LOSSES.get("ppo_clip")


def _single(ratio: float, adv: float, **kw: float | None) -> tuple[float, float, dict]:
    """Loss value and d loss / d logp for one token with old_logp = 0."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = ppo_clip(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[adv]], dtype=torch.float64),
        torch.ones(1, 1), **kw,
    )
    loss.sum().backward()
    return loss.item(), logp.grad.item(), {k: v.item() for k, v in metrics.items()}


def test_clip_higher_keeps_gradient_at_ratio_1_25() -> None:
    # A > 0, r = 1.25: PPO (eps = 0.2) clips to 1.2 -> constant, zero gradient;
    # DAPO eps_high = 0.28 leaves r unclipped -> d(-A r)/dlogp = -A r = -1.25.
    value, grad, metrics = _single(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    assert value == pytest.approx(-1.2)
    assert grad == 0.0
    assert metrics["pg_clipfrac"] == 1.0
    value, grad, metrics = _single(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert value == pytest.approx(-1.25)
    assert grad == pytest.approx(-1.25)
    assert metrics["pg_clipfrac"] == 0.0


def test_dual_clip_c3() -> None:
    # A = -1, r = 5: max(5, 1.2) = 5 > -A c = 3 -> loss 3, constant in logp
    value, grad, metrics = _single(5.0, -1.0, clip_c=3.0)
    assert value == pytest.approx(3.0)
    assert grad == 0.0
    assert metrics["pg_clipfrac_lower"] == 1.0
    assert metrics["pg_clipfrac"] == 0.0
    # A = -0.5, r = 4: max(2.0, 0.5 * 1.2 = 0.6) = 2.0 > 0.5 * 3 = 1.5 -> 1.5
    assert _single(4.0, -0.5, clip_c=3.0)[0] == pytest.approx(1.5)
    # A = -1, r = 2: max(2, 1.2) = 2 < 3 -> unbounded branch, gradient -A r = 2
    value, grad, metrics = _single(2.0, -1.0, clip_c=3.0)
    assert (value, grad, metrics["pg_clipfrac_lower"]) == (pytest.approx(2.0), pytest.approx(2.0), 0.0)
    # A = -2, r = 0.5: max(1.0, 2 * 0.8 = 1.6) = 1.6 (lower eps clip), below 6
    value, grad, metrics = _single(0.5, -2.0, clip_c=3.0)
    assert value == pytest.approx(1.6) and grad == 0.0
    assert metrics["pg_clipfrac"] == 1.0 and metrics["pg_clipfrac_lower"] == 0.0
    # dual clip never touches positive advantages
    assert _single(10.0, 1.0, clip_c=3.0)[0] == pytest.approx(-1.2)


def test_clipfrac_and_ppo_kl_hand_example() -> None:
    ratio = torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.5, 2.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, m = ppo_clip(ratio.log(), torch.zeros(2, 3), adv, mask)
    # row 0 (A=1):  -1.2 (clipped), -1.0, -0.5 ; row 1 (A=-1): 0.8 (clipped), 1.5, masked -> 0
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.0, -0.5], [0.8, 1.5, 0.0]]))
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 5)
    assert m["pg_clipfrac_lower"].item() == 0.0
    # ppo_kl = mean(old - new) = -(2 ln 1.5 + 2 ln 0.5 + 0) / 5
    assert m["ppo_kl"].item() == pytest.approx(-(2 * math.log(1.5) + 2 * math.log(0.5)) / 5, abs=1e-6)
    for v in m.values():
        assert v.dim() == 0 and not v.requires_grad
    # dual clip at c = 1.4: only row 1 token 1 (1.5 > 1.4); the masked token (2.0) does not count
    loss, m = ppo_clip(ratio.log(), torch.zeros(2, 3), adv, mask, clip_c=1.4)
    assert loss[1, 1].item() == pytest.approx(1.4)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 5)


def test_loss_is_per_token_and_zero_on_mask() -> None:
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    loss, _ = ppo_clip(logp, old, adv, mask, clip_high=0.28, clip_c=3.0)
    assert loss.shape == (3, 5)
    assert torch.equal(loss[mask == 0], torch.zeros(int((mask == 0).sum())))


def test_log_ratio_is_clamped() -> None:
    loss, m = ppo_clip(torch.tensor([[60.0]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert m["ppo_kl"].item() == -20.0


def test_ratio_one_equals_policy_gradient() -> None:
    # on-policy (old = logp.detach()) the gradient is -A, like REINFORCE
    logp = torch.tensor([[-0.7, -1.2]], requires_grad=True)
    adv = torch.tensor([[0.5, -2.0]])
    loss, m = ppo_clip(logp, logp.detach(), adv, torch.ones(1, 2))
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv)
    assert m["pg_clipfrac"].item() == 0.0 and m["ppo_kl"].item() == 0.0


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_bound_must_exceed_one(c: float) -> None:
    with pytest.raises(ValueError, match="clip_c"):
        ppo_clip(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_c=c)


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3))


def test_every_part_cites_a_paper() -> None:
    for name in POLICY_LOSSES.names():
        assert "arXiv" in (POLICY_LOSSES.get(name).__doc__ or "").strip().splitlines()[0], name


# ---------------------------------------------------------------------------------------------
# Convention shared by every registered loss

_F64 = torch.float64


def _t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=_F64, requires_grad=grad)


def test_every_part_declares_only_keyword_hyperparameters_with_defaults() -> None:
    for name in POLICY_LOSSES.names():
        params = list(inspect.signature(POLICY_LOSSES.get(name)).parameters.values())
        assert [p.name for p in params[:4]] == ["logprobs", "old_logprobs", "advantages", "mask"], name
        for p in params[4:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
            if p.name not in needed_inputs(POLICY_LOSSES.get(name)):  # inputs the update supplies (DisCO's)
                assert p.default is not inspect.Parameter.empty, (name, p.name)


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "gspo_token", "cispo", "reinforce", "sapo"])
def test_masked_positions_give_zero_loss_and_gradient(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 5, generator=g, dtype=_F64) - 1.0
    old = base + 0.3 * torch.randn(3, 5, generator=g, dtype=_F64)
    adv = torch.randn(3, 5, generator=g, dtype=_F64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    logp = base.clone().requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get(name)(logp, old, adv, mask)
    assert loss.shape == (3, 5)
    assert torch.equal(loss[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=_F64))
    loss.sum().backward()
    assert torch.equal(logp.grad[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=_F64))
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()
    assert "ppo_kl" in metrics
    for v in metrics.values():
        assert v.dim() == 0 and not v.requires_grad


# ---------------------------------------------------------------------------------------------
# GSPO (arXiv 2507.18071)

gspo = POLICY_LOSSES.get("gspo")
gspo_token = POLICY_LOSSES.get("gspo_token")


def test_gspo_sequence_ratio_is_geometric_mean() -> None:
    # token log-ratios [0.1, -0.1, 0.3] -> log s = 0.1 -> s = e^0.1 = 1.10517; wide clip, A = 1 -> l = -s
    logp = _t([[0.1, -0.1, 0.3]])
    loss, m = gspo(logp, torch.zeros(1, 3, dtype=_F64), torch.ones(1, 3, dtype=_F64), torch.ones(1, 3),
                   clip_low=1.0, clip_high=1.0)
    assert torch.allclose(loss, torch.full((1, 3), -1.1051709, dtype=_F64))
    assert m["pg_clipfrac"].item() == 0.0
    assert m["ppo_kl"].item() == pytest.approx(-0.1)
    # all token ratios equal to c -> s = c
    c = 1.37
    loss, _ = gspo(torch.full((1, 4), math.log(c), dtype=_F64), torch.zeros(1, 4, dtype=_F64),
                   torch.ones(1, 4, dtype=_F64), torch.ones(1, 4), clip_low=1.0, clip_high=1.0)
    assert torch.allclose(loss, torch.full((1, 4), -c, dtype=_F64))


def test_gspo_hand_example_with_mask_and_default_clip() -> None:
    # row 0: s = e^0.1 = 1.10517 > 1 + 4e-4, A = 1 -> clipped: l = -1.0004 on its 3 tokens
    # row 1: log-ratios [2e-4, 4e-4] (third masked, 5.0 ignored) -> s = e^3e-4 = 1.00030005 inside
    #        [1 - 3e-4, 1 + 4e-4]; A = mean(1, 3) = 2 -> l = -2.0006001
    # row 2: all masked -> zeros, not counted in pg_clipfrac
    logp = _t([[0.1, -0.1, 0.3], [2e-4, 4e-4, 5.0], [1.0, 1.0, 1.0]])
    adv = _t([[1.0, 1.0, 1.0], [1.0, 3.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    loss, m = gspo(logp, torch.zeros(3, 3, dtype=_F64), adv, mask)
    expected = _t([[-1.0004] * 3, [-2 * 1.0003000450045, -2 * 1.0003000450045, 0.0], [0.0] * 3])
    assert torch.allclose(loss, expected, atol=1e-12)
    assert m["pg_clipfrac"].item() == pytest.approx(1 / 2)
    assert m["ppo_kl"].item() == pytest.approx(-(0.3 + 6e-4) / 5)


def test_gspo_negative_advantage_keeps_unclipped_sequence() -> None:
    # A = -1, s = 1.10517: max(1.10517, 1.0004) = 1.10517 (unclipped branch), pg_clipfrac 0
    loss, m = gspo(_t([[0.1, -0.1, 0.3]]), torch.zeros(1, 3, dtype=_F64), -torch.ones(1, 3, dtype=_F64),
                   torch.ones(1, 3))
    assert torch.allclose(loss, torch.full((1, 3), 1.1051709, dtype=_F64))
    assert m["pg_clipfrac"].item() == 0.0


def test_gspo_gradient_under_seq_mean_token_mean() -> None:
    # unclipped: d/dlogp_t of (1/G) sum_i -A_i s_i = -A_i s_i / (G |o_i|)
    logp = _t([[0.1, -0.1, 0.3], [0.2, 0.0, 0.0]], grad=True)
    adv = _t([[2.0] * 3, [-1.0] * 3])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, _ = gspo(logp, torch.zeros(2, 3, dtype=_F64), adv, mask, clip_low=1.0, clip_high=1.0)
    aggregate(loss, mask, "seq-mean-token-mean").backward()
    s0, s1 = math.exp(0.1), math.exp(0.1)
    expected = _t([[-2 * s0 / 6] * 3, [s1 / 4, s1 / 4, 0.0]])
    assert torch.allclose(logp.grad, expected)
    # clipped sequence: no gradient at all
    logp = _t([[0.1, -0.1, 0.3]], grad=True)
    loss, _ = gspo(logp, torch.zeros(1, 3, dtype=_F64), torch.ones(1, 3, dtype=_F64), torch.ones(1, 3))
    aggregate(loss, torch.ones(1, 3), "seq-mean-token-mean").backward()
    assert torch.equal(logp.grad, torch.zeros(1, 3, dtype=_F64))


def test_gspo_log_ratio_capped_at_10() -> None:
    loss, _ = gspo(torch.full((1, 2), 15.0, dtype=_F64), torch.zeros(1, 2, dtype=_F64),
                   -torch.ones(1, 2, dtype=_F64), torch.ones(1, 2))
    assert torch.allclose(loss, torch.full((1, 2), math.exp(10.0), dtype=_F64))


def test_gspo_token_value_and_per_token_gradient() -> None:
    # value of s_{i,t} = s_i = e^0.1; gradient of token t is -A_t s_i on that token only
    logp = _t([[0.1, -0.1, 0.3]], grad=True)
    adv = _t([[1.0, -1.0, 0.5]])
    loss, m = gspo_token(logp, torch.zeros(1, 3, dtype=_F64), adv, torch.ones(1, 3), clip_low=1.0, clip_high=1.0)
    s = math.exp(0.1)
    assert torch.allclose(loss, _t([[-s, s, -0.5 * s]]))
    loss.sum().backward()
    assert torch.allclose(logp.grad, _t([[-s, s, -0.5 * s]]))
    assert m["pg_clipfrac"].item() == 0.0
    # default clip: A > 0 tokens are clipped (s > 1.0004), the A < 0 token is not -> 2/3
    _, m = gspo_token(logp.detach(), torch.zeros(1, 3, dtype=_F64), adv, torch.ones(1, 3))
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 3)


def test_gspo_token_gradient_equals_gspo_for_constant_row_advantages() -> None:
    g = torch.Generator().manual_seed(7)
    n, r = 6, 5
    base = torch.randn(n, r, generator=g, dtype=_F64) - 1.0
    old = base - 4e-4 * torch.randn(n, r, generator=g, dtype=_F64)  # s_i near the 3e-4 / 4e-4 bounds
    adv = torch.randn(n, 1, generator=g, dtype=_F64).expand(n, r)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5, [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    grads, losses = [], []
    for fn in (gspo, gspo_token):
        logp = base.clone().requires_grad_(True)
        loss, _ = fn(logp, old, adv, mask)
        aggregate(loss, mask, "seq-mean-token-mean").backward()
        grads.append(logp.grad)
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-12)
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
    # the example exercises both branches: some sequences clipped (zero gradient), some not
    seq_has_grad = (grads[0].abs().sum(-1) > 0)
    assert seq_has_grad.any() and not seq_has_grad.all()


# ---------------------------------------------------------------------------------------------
# CISPO (arXiv 2506.13585)

cispo = POLICY_LOSSES.get("cispo")


def _cispo_single(ratio: float, adv: float, **kw: float) -> tuple[float, float, dict]:
    logp = torch.tensor([[math.log(ratio)]], dtype=_F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=_F64, requires_grad=True)
    loss, m = cispo(logp, old, torch.tensor([[adv]], dtype=_F64), torch.ones(1, 1), **kw)
    loss.sum().backward()
    assert old.grad is None or old.grad.item() == 0.0  # no gradient through the weight
    return loss.item(), logp.grad.item(), {k: v.item() for k, v in m.items()}


def test_cispo_keeps_gradient_where_ppo_clips() -> None:
    # r = 1.5, eps_high = 0.28, A = 2: weight 1.28 -> gradient -1.28 A = -2.56 (PPO: 0)
    value, grad, m = _cispo_single(1.5, 2.0, clip_high=0.28)
    assert grad == pytest.approx(-2.56)
    assert value == pytest.approx(-2.56 * math.log(1.5))  # -1.0379907
    assert m["pg_clipfrac"] == 1.0
    assert _single(1.5, 2.0, clip_low=0.2, clip_high=0.28)[1] == 0.0


def test_cispo_gradient_does_not_flow_through_weight() -> None:
    # r = 1.1 unclipped: gradient -r A = -1.1 A, not -A r (1 + logp) as without the stop-gradient
    value, grad, m = _cispo_single(1.1, -3.0, clip_high=0.28)
    assert grad == pytest.approx(3.3)
    assert value == pytest.approx(3.3 * math.log(1.1))
    assert m["pg_clipfrac"] == 0.0


def test_cispo_default_has_no_lower_clip() -> None:
    # default clip_low = 1.0 -> lower bound 0: r = 0.5 keeps its weight, gradient -0.5 A
    _, grad, m = _cispo_single(0.5, 1.0)
    assert grad == pytest.approx(-0.5) and m["pg_clipfrac"] == 0.0
    # explicit clip_low = 0.2: weight raised to 0.8
    _, grad, m = _cispo_single(0.5, 1.0, clip_low=0.2)
    assert grad == pytest.approx(-0.8) and m["pg_clipfrac"] == 1.0
    # default clip_high = 0.2
    assert _cispo_single(1.5, 1.0)[1] == pytest.approx(-1.2)


def test_cispo_clipfrac_counts_valid_tokens() -> None:
    ratio = _t([[1.5, 1.0, 0.5, 3.0]])
    _, m = cispo(ratio.log(), torch.zeros(1, 4, dtype=_F64), torch.ones(1, 4, dtype=_F64),
                 torch.tensor([[1, 1, 1, 0]]), clip_low=0.2, clip_high=0.28)
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# REINFORCE

reinforce = POLICY_LOSSES.get("reinforce")


def test_reinforce_values_and_gradient() -> None:
    logp = _t([[-0.5, -2.0, -1.0]], grad=True)
    adv = _t([[1.0, -2.0, 3.0]])
    old = _t([[-0.7, -2.0, 0.0]])
    loss, m = reinforce(logp, old, adv, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(loss, _t([[0.5, -4.0, 0.0]]))
    loss.sum().backward()
    assert torch.allclose(logp.grad, _t([[-1.0, 2.0, 0.0]]))
    assert m["ppo_kl"].item() == pytest.approx((-0.7 + 0.5) / 2)
    assert set(m) == {"ppo_kl"}


# ---------------------------------------------------------------------------------------------
# SAPO (arXiv 2511.20347)

sapo = POLICY_LOSSES.get("sapo")


def _sapo_single(ratio: float, adv: float, **kw: float) -> tuple[float, float]:
    logp = torch.tensor([[math.log(ratio)]], dtype=_F64, requires_grad=True)
    loss, _ = sapo(logp, torch.zeros(1, 1, dtype=_F64), torch.tensor([[adv]], dtype=_F64), torch.ones(1, 1), **kw)
    loss.sum().backward()
    return loss.item(), logp.grad.item()


def test_sapo_gate_at_ratio_one() -> None:
    # f(1) = 2 / tau, f'(1) = 1 -> on-policy gradient -A (d r / d logp = r = 1)
    value, grad = _sapo_single(1.0, 1.0)
    assert value == pytest.approx(-2.0) and grad == pytest.approx(-1.0)
    value, grad = _sapo_single(1.0, -1.0)
    assert value == pytest.approx(2 / 1.05) and grad == pytest.approx(1.0)
    value, grad = _sapo_single(1.0, 0.5, tau_pos=2.5)
    assert value == pytest.approx(-0.5 * 2 / 2.5) and grad == pytest.approx(-0.5)


def test_sapo_hand_values_off_policy() -> None:
    # r = 2, A = 1, tau 1: f = 4 sigmoid(1) = 2.9242343; grad = -f'(2) r = -8 s (1 - s) = -1.5728955
    value, grad = _sapo_single(2.0, 1.0)
    assert value == pytest.approx(-2.9242343, abs=1e-7)
    assert grad == pytest.approx(-1.5728955, abs=1e-7)
    # r = 0.5, A = -1, tau 1.05: f = sigmoid(-0.525) 4 / 1.05 = 1.4159383; grad = 4 s (1 - s) 0.5 = 0.4670699
    value, grad = _sapo_single(0.5, -1.0)
    assert value == pytest.approx(1.4159383, abs=1e-7)
    assert grad == pytest.approx(0.4670699, abs=1e-7)


def test_sapo_rejects_nonpositive_temperature() -> None:
    with pytest.raises(ValueError, match="tau"):
        sapo(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), tau_neg=0.0)

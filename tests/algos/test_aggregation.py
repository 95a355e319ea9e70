"""Loss aggregation: hand-computed normalisers and exact micro-batch invariance (DESIGN principle 4)."""

from __future__ import annotations

import pytest
import torch

from rlfold.algos import AGGREGATIONS, POLICY_LOSSES, Aggregation, aggregate
from rlfold.algos.aggregation import seq_mean_token_sum_norm
from rlfold.core.registry import UnknownPartError

# 3 sequences, padded length 3; row 2 has no valid token (it must not count as a sequence).
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
# valid sum = 1 + 2 + 3 + 4 = 10 over 4 tokens; per-sequence sums 6 and 4, means 2 and 4.
HAND = {
    "token-mean": (4.0, 10 / 4),
    "token-sum": (1.0, 10.0),
    "seq-mean-token-mean": (2.0, (2 + 4) / 2),
    "seq-mean-token-sum": (2.0, (6 + 4) / 2),
    "seq-mean-token-sum-norm": (3.0 * 2, 10 / (3 * 2)),  # L_max = 3, 2 valid sequences
    "seq-mean-token-sum-norm-verl": (3.0, 10 / 3),
}


def test_every_registered_mode_has_a_hand_case() -> None:
    assert sorted(HAND) == AGGREGATIONS.names()


@pytest.mark.parametrize("mode", sorted(HAND))
def test_hand_normalisers_and_values(mode: str) -> None:
    agg = AGGREGATIONS.get(mode)
    norm, value = HAND[mode]
    assert isinstance(agg, Aggregation)
    assert agg.normaliser(MASK) == pytest.approx(norm)
    assert agg.reduce(LOSS, MASK, agg.normaliser(MASK)).item() == pytest.approx(value)
    assert aggregate(LOSS, MASK, mode).item() == pytest.approx(value)
    assert aggregate(LOSS, MASK.bool(), mode).item() == pytest.approx(value)


def test_dr_grpo_constant_length_and_length_scaling() -> None:
    agg = seq_mean_token_sum_norm(max_len=10)
    assert agg.normaliser(MASK) == 20.0
    assert agg.reduce(LOSS, MASK, agg.normaliser(MASK)).item() == pytest.approx(0.5)
    # policy.md 1.2: for a constant per-token loss a sequence's loss grows linearly with its length
    ones = torch.ones(2, 4)
    short, long_ = torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 1, 1, 1]])
    assert aggregate(ones[:1], long_, "seq-mean-token-sum-norm") == 4 * aggregate(
        ones[:1], short, "seq-mean-token-sum-norm"
    )
    seq_mean = "seq-mean-token-mean"
    assert aggregate(ones[:1], long_, seq_mean) == aggregate(ones[:1], short, seq_mean)


def test_all_masked_batch_gives_zero_not_nan() -> None:
    for mode in AGGREGATIONS.names():
        out = aggregate(torch.randn(2, 3), torch.zeros(2, 3), mode)
        assert out.item() == 0.0, mode


def test_errors() -> None:
    with pytest.raises(UnknownPartError, match="token-mean"):
        aggregate(LOSS, MASK, "token_mean")
    with pytest.raises(ValueError, match="same shape"):
        aggregate(LOSS, MASK[:, :2], "token-mean")


def test_every_mode_cites_a_paper() -> None:
    for name in AGGREGATIONS.names():
        assert "arXiv" in AGGREGATIONS.get(name).doc, name


# ---- micro-batch invariance of the gradient --------------------------------------------------

N, R, D, V = 6, 5, 4, 7
LENGTHS = [3, 5, 0, 1, 4, 2]  # ragged, one empty row
SPLITS = {
    "singletons": [[i] for i in range(N)],
    "uneven": [[0, 1], [2], [3, 4, 5]],
    "shuffled": [[4, 0], [5, 2, 1], [3]],
}


class LinearPolicy(torch.nn.Module):
    """Token log-probs from a linear map of fixed per-token features: the smallest 'policy'."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(D, V, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(V, generator=g, dtype=torch.float64))

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(feats @ self.w + self.b, dim=-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = (torch.arange(R)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    feats = torch.randn(N, R, D, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (N, R), generator=g)
    with torch.no_grad():
        old = LinearPolicy()(feats, tokens) + 0.3 * torch.randn(N, R, generator=g, dtype=torch.float64)
    adv = torch.randn(N, 1, generator=g, dtype=torch.float64).expand(N, R) * mask
    return {"feats": feats, "tokens": tokens, "old": old, "adv": adv, "mask": mask}


def _grads(mode: str, split: list[list[int]] | None, trim: bool) -> list[torch.Tensor]:
    data, policy, agg = _data(), LinearPolicy(), AGGREGATIONS.get(mode)
    norm = agg.normaliser(data["mask"])  # once, on the whole optimiser mini-batch
    clipped_any = False
    for rows in split or [list(range(N))]:
        idx = torch.tensor(rows)
        width = max(1, max(LENGTHS[i] for i in rows)) if trim else R  # micro-batch drops padding
        mb = {k: v[idx][:, :width] for k, v in data.items()}
        logp = policy(mb["feats"], mb["tokens"])
        loss, metrics = POLICY_LOSSES.get("ppo_clip")(
            logp, mb["old"], mb["adv"], mb["mask"], clip_high=0.28, clip_c=3.0
        )
        clipped_any |= metrics["pg_clipfrac"].item() > 0
        agg.reduce(loss, mb["mask"], norm).backward()  # gradients accumulate across micro-batches
    if split is None:
        assert clipped_any  # the example exercises the clipped branch
    return [policy.w.grad.clone(), policy.b.grad.clone()]


@pytest.mark.parametrize("trim", [False, True])
@pytest.mark.parametrize("split_name", sorted(SPLITS))
@pytest.mark.parametrize("mode", sorted(HAND))
def test_microbatch_gradient_equals_full_batch(mode: str, split_name: str, trim: bool) -> None:
    full = _grads(mode, None, trim=False)
    parts = _grads(mode, SPLITS[split_name], trim=trim)
    assert full[0].abs().sum() > 0
    for g_full, g_parts in zip(full, parts):
        assert torch.allclose(g_full, g_parts, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(HAND))
def test_microbatch_loss_sum_equals_full_loss(mode: str) -> None:
    agg = AGGREGATIONS.get(mode)
    g = torch.Generator().manual_seed(2)
    loss = torch.randn(N, R, generator=g)
    mask = (torch.arange(R)[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    norm = agg.normaliser(mask)
    parts = sum(agg.reduce(loss[r], mask[r], norm) for r in ([0, 1], [2], [3, 4, 5]))
    assert torch.allclose(parts, aggregate(loss, mask, mode), atol=1e-6)

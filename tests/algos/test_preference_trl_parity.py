"""Parity with TRL 1.16: the same per-token log-probs give the same loss and the same gradient.

For each loss TRL also defines, the TRL trainer's own loss code runs on a trainer built without
``__init__`` (only the attributes its loss method reads) and a fake model returning fixed per-token
log-probs (or logits, for the CPO / ORPO trainers, which compute log-probs themselves). Our side
reduces the same tensor with ``reduce_logps`` into a ``PreferenceLogps`` and averages our per-example
loss. Both sides run in float64 and must agree to 1e-6 in value and in the gradient with respect to
the per-token log-probs (logits for CPO / ORPO). Two TRL terms run partly in float32 whatever the
input dtype: ORPO casts the sequence log-probs to float32 in its odds-ratio term, and ``exo_pair``
builds eps as a float32 tensor (so log eps, log(1 - eps) are float32). Their differences are float32
rounding (about 6e-8 measured), inside the same 1e-6; every other loss agrees to ~1e-15.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
from trl import DPOTrainer, KTOTrainer  # noqa: E402

from rlfold.algos.preference import PREFERENCE_LOSSES, PreferenceLogps  # noqa: E402
from rlfold.algos.preference.base import reduce_logps  # noqa: E402

D = torch.float64
TOL = 1e-6
B, T = 4, 7


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def gather_for_metrics(x):
        return x


def _seed(*parts) -> int:
    """A seed that is the same in every process (``hash`` of a string is not)."""
    return zlib.crc32(repr(parts).encode()) % 10_000


def _stub(cls, **attrs):
    tr = object.__new__(cls)
    base = dict(accelerator=_Accelerator(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                model=SimpleNamespace(training=True), _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False,
                precompute_ref_logps=True)
    for k, v in {**base, **attrs}.items():
        setattr(tr, k, v)
    return tr


def _completion_mask(n: int, g: torch.Generator, width: int = T) -> torch.Tensor:
    """[n, width] shifted completion masks: 0-2 prompt tokens, then 1.. completion tokens, then padding."""
    mask = torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        start = int(torch.randint(0, 3, (1,), generator=g))
        length = int(torch.randint(1, width - start + 1, (1,), generator=g))
        mask[i, start:start + length] = 1
    return mask


def _grad(leaf: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(value, leaf)
    return g


def _compare(trl_value, trl_grad, ours_value, ours_grad, tol=TOL):
    assert abs(trl_value.item() - ours_value.item()) <= tol, (trl_value.item(), ours_value.item())
    diff = (trl_grad - ours_grad).abs().max().item()
    assert diff <= tol, diff
    assert trl_grad.abs().max().item() > 0  # the comparison is not vacuous
    return max(abs(trl_value.item() - ours_value.item()), diff)


# ----------------------------------------------------------------------------------------- DPO trainer


def _dpo_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = _completion_mask(2 * B, g)
    per_token = (-torch.rand(2 * B, T, generator=g, dtype=D) * 2.0) * mask
    seq = (per_token * mask).sum(-1)
    ref = seq + torch.randn(2 * B, generator=g, dtype=D) * 1.5
    return per_token, mask, ref


def _trl_dpo(loss_types, weights, per_token, mask, ref, *, beta, eps=0.0, tau=0.05):
    tr = _stub(DPOTrainer, beta=beta, loss_types=list(loss_types), loss_weights=list(weights),
               f_divergence_type="reverse_kl", ld_alpha=None, use_weighting=False, label_smoothing=eps,
               args=SimpleNamespace(discopop_tau=tau, gradient_checkpointing_kwargs=None))
    leaf = per_token.clone().requires_grad_(True)
    n = leaf.shape[0]
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask], 1)
    inputs = {"input_ids": torch.zeros(n, T + 1, dtype=torch.long), "attention_mask": torch.ones(n, T + 1),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}

    def model(**kw):  # a fused LM head: zero log-prob where the label is ignored
        return SimpleNamespace(log_probs=leaf * mask, entropy=torch.zeros(n, T, dtype=D),
                               mean_logits=torch.zeros(n, T, dtype=D), is_top1=torch.zeros(n, T, dtype=torch.bool))

    value = tr._compute_loss(model, inputs, return_outputs=False)
    return value, _grad(leaf, value)


def _ours_pairs(name, per_token, mask, ref, reference=True, **kw):
    leaf = per_token.clone().requires_grad_(True)
    seq = reduce_logps(leaf, mask)
    lengths = mask.sum(-1).to(D)
    ref_pair = torch.stack([ref[:B], ref[B:]], -1) if reference else torch.zeros(B, 2, dtype=D)
    lp = PreferenceLogps(policy=torch.stack([seq[:B], seq[B:]], -1), reference=ref_pair,
                         lengths=torch.stack([lengths[:B], lengths[B:]], -1), scores=torch.tensor([[1.0, 0.0]] * B,
                                                                                                   dtype=D))
    value = PREFERENCE_LOSSES.get(name)(lp, **kw).mean()
    return value, _grad(leaf, value)


DPO_CASES = [
    # (TRL loss_types, loss_weights, TRL kwargs, our loss, our kwargs)
    (["sigmoid"], [1.0], {}, "dpo", {}),
    (["hinge"], [1.0], {}, "hinge_norm", {}),
    (["ipo"], [1.0], {}, "ipo", {"length_normalize": True}),
    (["exo_pair"], [1.0], {"eps": 1e-3}, "exo_pair", {"eps": 1e-3}),
    (["exo_pair"], [1.0], {"eps": 0.2}, "exo_pair", {"eps": 0.2}),
    (["nca_pair"], [1.0], {}, "nca_pair", {}),
    (["robust"], [1.0], {"eps": 0.1}, "rdpo", {"eps": 0.1}),
    (["robust"], [1.0], {"eps": 0.35}, "rdpo", {"eps": 0.35}),
    (["bco_pair"], [1.0], {}, "bco_pair", {}),
    (["sppo_hard"], [1.0], {}, "sppo_hard", {}),
    (["aot"], [1.0], {}, "aot", {}),
    (["aot"], [1.0], {"eps": 0.1}, "aot", {"eps": 0.1}),
    (["aot_unpaired"], [1.0], {}, "aot_unpaired", {}),
    (["aot_unpaired"], [1.0], {"eps": 0.2}, "aot_unpaired", {"eps": 0.2}),
    (["apo_zero"], [1.0], {}, "apo_zero", {}),
    (["apo_down"], [1.0], {}, "apo_down", {}),
    (["discopop"], [1.0], {"tau": 0.05}, "discopop", {"tau": 0.05}),
    (["discopop"], [1.0], {"tau": 0.3}, "discopop", {"tau": 0.3}),
    (["sigmoid_norm"], [1.0], {}, "sigmoid_norm", {}),
    (["sigmoid", "sft"], [1.0, 0.005], {}, "rpo", {"eta": 0.005, "sft_form": "token_mean"}),
    (["sigmoid", "sft"], [1.0, 0.7], {}, "rpo", {"eta": 0.7, "sft_form": "token_mean"}),
]


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize(("types", "weights", "trl_kw", "name", "kw"), DPO_CASES,
                         ids=[f"{'+'.join(c[0])}-{c[3]}-{i}" for i, c in enumerate(DPO_CASES)])
def test_dpo_trainer_parity(types, weights, trl_kw, name, kw, beta):
    per_token, mask, ref = _dpo_batch(seed=_seed(name, beta, str(kw)))
    trl_value, trl_grad = _trl_dpo(types, weights, per_token, mask, ref, beta=beta, **trl_kw)
    ours_value, ours_grad = _ours_pairs(name, per_token, mask, ref, beta=beta, **kw)
    _compare(trl_value, trl_grad, ours_value, ours_grad)


def test_rpo_cumulative_form_is_not_trl_sft():
    """Our default RPO form (eta * beta * summed NLL, the paper's code) differs from TRL's token-mean sft."""
    per_token, mask, ref = _dpo_batch(seed=3)
    trl_value, _ = _trl_dpo(["sigmoid", "sft"], [1.0, 0.2], per_token, mask, ref, beta=0.5)
    ours_value, _ = _ours_pairs("rpo", per_token, mask, ref, beta=0.5, eta=0.2, sft_form="cumulative")
    assert abs(trl_value.item() - ours_value.item()) > 1e-3


def test_ipo_default_sums_unlike_trl():
    per_token, mask, ref = _dpo_batch(seed=4)
    trl_value, _ = _trl_dpo(["ipo"], [1.0], per_token, mask, ref, beta=0.1)
    ours_value, _ = _ours_pairs("ipo", per_token, mask, ref, beta=0.1)
    assert abs(trl_value.item() - ours_value.item()) > 1e-3


# ----------------------------------------------------------------------------------------- KTO trainer


def _kto_case(seed: int, loss_type: str, beta: float, wd: float, wu: float):
    g = torch.Generator().manual_seed(seed)
    t_kl = T - 2
    mask = _completion_mask(B, g)
    kl_mask = _completion_mask(B, g, t_kl)
    per_token = (-torch.rand(B, T, generator=g, dtype=D) * 2.0) * mask
    kl_token = (-torch.rand(B, t_kl, generator=g, dtype=D) * 2.0) * kl_mask
    ref = (per_token * mask).sum(-1) + torch.randn(B, generator=g, dtype=D)
    # mismatched-pair log-ratios around +0.3, so the reference point z0 is positive and matters
    ref_kl = (kl_token * kl_mask).sum(-1) + torch.randn(B, generator=g, dtype=D) * 0.2 - 0.3
    labels = torch.tensor([True, False, True, False])
    calculate_kl = loss_type == "kto"

    # TRL
    tr = _stub(KTOTrainer, calculate_KL=calculate_kl, loss_type=loss_type, beta=beta, desirable_weight=wd,
               undesirable_weight=wu)
    leaf = per_token.clone().requires_grad_(True)
    inputs = {"input_ids": torch.zeros(B, T + 1, dtype=torch.long), "attention_mask": torch.ones(B, T + 1),
              "completion_mask": torch.cat([torch.zeros(B, 1, dtype=torch.long), mask], 1), "label": labels,
              "ref_logps": ref}
    if calculate_kl:
        inputs.update({"KL_input_ids": torch.zeros(B, t_kl + 1, dtype=torch.long),
                       "KL_attention_mask": torch.ones(B, t_kl + 1),
                       "KL_completion_mask": torch.cat([torch.zeros(B, 1, dtype=torch.long), kl_mask], 1),
                       "ref_KL_logps": ref_kl})

    def model(**kw):
        if kw["input_ids"].shape[1] == t_kl + 1:  # the mismatched (KL) completions
            return SimpleNamespace(log_probs=kl_token * kl_mask)
        return SimpleNamespace(log_probs=leaf * mask, entropy=torch.zeros(B, T, dtype=D),
                               mean_logits=torch.zeros(B, T, dtype=D))

    trl_value = tr._compute_loss(model, inputs, return_outputs=False)
    trl_grad = _grad(leaf, trl_value)

    # ours
    ours_leaf = per_token.clone().requires_grad_(True)
    lp = PreferenceLogps(policy=reduce_logps(ours_leaf, mask).unsqueeze(-1), reference=ref.unsqueeze(-1),
                         lengths=mask.sum(-1, keepdim=True).to(D), scores=labels.to(D).unsqueeze(-1))
    if loss_type == "kto":
        kl = reduce_logps(kl_token, kl_mask) - ref_kl
        assert kl.mean().item() > 0.05
        out = PREFERENCE_LOSSES.get("kto")(lp, beta=beta, desirable_weight=wd, undesirable_weight=wu, kl=kl)
    else:
        out = PREFERENCE_LOSSES.get(loss_type)(lp, beta=beta)
    ours_value = out.mean()
    return trl_value, trl_grad, ours_value, _grad(ours_leaf, ours_value)


@pytest.mark.parametrize(("loss_type", "beta", "wd", "wu", "seed"), [
    ("kto", 0.1, 1.0, 1.0, 0), ("kto", 0.5, 1.0, 1.33, 1), ("kto", 0.5, 2.0, 0.7, 5),
    ("apo_zero_unpaired", 0.1, 1.0, 1.0, 2), ("apo_zero_unpaired", 0.5, 1.0, 1.0, 3),
])
def test_kto_trainer_parity(loss_type, beta, wd, wu, seed):
    _compare(*_kto_case(seed, loss_type, beta, wd, wu))


# ----------------------------------------------------------------------------------------- CPO / ORPO trainers

V = 5


def _lm_batch(seed: int, prompt_len: int = 1, length: int = T):
    """Token batch for the CPO / ORPO trainers: [B, length] ids, attention and labels per side, plus logits."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(1, V, (B, length), generator=g)
        attention = torch.zeros(B, length, dtype=torch.long)
        labels = torch.full((B, length), -100)
        for i in range(B):
            n = int(torch.randint(1, length - prompt_len + 1, (1,), generator=g))
            attention[i, :prompt_len + n] = 1
            labels[i, prompt_len:prompt_len + n] = ids[i, prompt_len:prompt_len + n]
        ids = torch.where(attention.bool(), ids, torch.zeros_like(ids))
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": attention, f"{side}_labels": labels})
    logits = torch.randn(2 * B, length, V, generator=g, dtype=D) * 1.5
    return batch, logits


def _trl_lm(trainer, batch, logits):
    leaf = logits.clone().requires_grad_(True)

    def model(input_ids, attention_mask=None, use_cache=False, **kw):
        return SimpleNamespace(logits=leaf)

    value, _metrics = trainer.get_batch_loss_metrics(model, batch)
    return value, _grad(leaf, value)


def _ours_lm(name, batch, logits, **kw):
    leaf = logits.clone().requires_grad_(True)
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]], 0)[:, 1:]
    mask = labels != -100
    per_token = torch.log_softmax(leaf[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    seq = reduce_logps(per_token, mask)
    lengths = mask.sum(-1).to(D)
    lp = PreferenceLogps(policy=torch.stack([seq[:B], seq[B:]], -1), reference=torch.zeros(B, 2, dtype=D),
                         lengths=torch.stack([lengths[:B], lengths[B:]], -1),
                         scores=torch.tensor([[1.0, 0.0]] * B, dtype=D))
    value = PREFERENCE_LOSSES.get(name)(lp, **kw).mean()
    return value, _grad(leaf, value)


CPO_CASES = [
    # (TRL CPO attributes, our loss, our kwargs)
    ({"loss_type": "sigmoid", "cpo_alpha": 1.0, "label_smoothing": 0.0}, "cpo", {"cpo_alpha": 1.0}),
    ({"loss_type": "sigmoid", "cpo_alpha": 0.3, "label_smoothing": 0.1}, "cpo", {"cpo_alpha": 0.3, "eps": 0.1}),
    ({"loss_type": "sigmoid", "cpo_alpha": 0.0, "label_smoothing": 0.0}, "cpo", {"cpo_alpha": 0.0}),
    ({"loss_type": "hinge", "cpo_alpha": 0.0}, "rso_hinge", {}),
    ({"loss_type": "ipo", "cpo_alpha": 0.0}, "ipo", {"length_normalize": True}),
    ({"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.5}, "simpo", {"gamma": 0.5}),
    ({"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 1.375, "label_smoothing": 0.1}, "simpo",
     {"gamma": 1.375, "eps": 0.1}),
    ({"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.5, "alpha": 0.25}, "alphapo",
     {"gamma": 0.5, "alpha": 0.25}),
    ({"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 1.0, "alpha": -0.5}, "alphapo",
     {"gamma": 1.0, "alpha": -0.5}),
]


@pytest.mark.parametrize("beta", [0.1, 2.5])
@pytest.mark.parametrize(("attrs", "name", "kw"), CPO_CASES,
                         ids=[f"{c[0]['loss_type']}-{c[1]}-{i}" for i, c in enumerate(CPO_CASES)])
def test_cpo_trainer_parity(attrs, name, kw, beta):
    from trl.experimental.cpo import CPOTrainer

    attrs = {"label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, **attrs}
    trainer = _stub(CPOTrainer, is_encoder_decoder=False, pad_token_id=0, beta=beta, **attrs)
    batch, logits = _lm_batch(seed=_seed(name, beta, str(kw)), prompt_len=2)
    trl_value, trl_grad = _trl_lm(trainer, batch, logits)
    ours_value, ours_grad = _ours_lm(name, batch, logits, beta=beta, **kw)
    _compare(trl_value, trl_grad, ours_value, ours_grad)


@pytest.mark.parametrize(("beta", "seed"), [(0.1, 0), (0.25, 1), (1.0, 2)])
def test_orpo_trainer_parity(beta, seed):
    """One-token prompts: TRL's ORPO NLL also counts prompt tokens, and with one there is none to count."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = _stub(ORPOTrainer, is_encoder_decoder=False, padding_value=0, beta=beta)
    batch, logits = _lm_batch(seed=seed, prompt_len=1)
    trl_value, trl_grad = _trl_lm(trainer, batch, logits)
    ours_value, ours_grad = _ours_lm("orpo", batch, logits, beta=beta)
    _compare(trl_value, trl_grad, ours_value, ours_grad)


def test_orpo_nll_differs_from_trl_with_longer_prompts():
    from trl.experimental.orpo import ORPOTrainer

    trainer = _stub(ORPOTrainer, is_encoder_decoder=False, padding_value=0, beta=0.1)
    batch, logits = _lm_batch(seed=7, prompt_len=3)
    trl_value, _ = _trl_lm(trainer, batch, logits)
    ours_value, _ = _ours_lm("orpo", batch, logits, beta=0.1)
    assert abs(trl_value.item() - ours_value.item()) > 1e-3

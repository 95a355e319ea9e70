"""Token-level objectives over full-vocabulary logits (pure functions; not registered as preference losses).

These need logits rather than sequence log-probs, so they do not take a ``PreferenceLogps``; the
trainer that wires them supplies the tensors. Shapes: logits [N, T, V], labels and masks [N, T]
(a mask is True / 1 on the positions that count).

- ``aligndistil_loss``: AlignDistil (Zhang et al. 2025, arXiv 2503.02832), token-adaptive distillation
  toward extrapolated DPO / reverse-DPO logits; returns [N], the length-normalised sum over tokens.
- ``ce_u_loss``: CE-U cross-entropy unlearning (Yang 2025, arXiv 2503.01224); returns a scalar, the
  mean over valid tokens.
- ``coipo_contrast`` / ``coipo_scale``: CoIPO's KL contrast between clean- and noisy-prompt output
  distributions of two examples (vegetable-yx/CoIPO, ICLR 2026) and its rescaling against the generation loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor


def _check_logits(name: str, logits: Tensor, mask: Tensor, *others: tuple[str, Tensor]) -> None:
    if logits.dim() < 2:
        raise ValueError(f"{name}: logits must be [..., V], got shape {tuple(logits.shape)}")
    if tuple(mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{name}: mask must be logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(mask.shape)}")
    for what, t in others:
        if tuple(t.shape) != tuple(logits.shape):
            raise ValueError(f"{name}: {what} must have the shape of the student logits {tuple(logits.shape)}, "
                             f"got {tuple(t.shape)}")


def aligndistil_teacher(dpo_logits: Tensor, rdpo_logits: Tensor, *, beta2: float = 10.0) -> tuple[Tensor, Tensor]:
    """(z* [.., V], w [..]) of AlignDistil: w = beta2 * sum_v |p_d - p_r| + 1e-3, z* = z_d + w (z_d - z_r).

    The sum is the L1 distance (twice the total variation), as the AlignDistil code; no gradient.
    """
    with torch.no_grad():
        z_d, z_r = dpo_logits.detach(), rdpo_logits.detach()
        tvd = (torch.softmax(z_d, dim=-1) - torch.softmax(z_r, dim=-1)).abs().sum(-1)
        w = beta2 * tvd + 1e-3
        return z_d + w.unsqueeze(-1) * (z_d - z_r), w


def aligndistil_loss(student_logits: Tensor, dpo_logits: Tensor, rdpo_logits: Tensor, mask: Tensor, *,
                     beta: float = 0.1, beta2: float = 10.0, temperature: float = 1.0) -> Tensor:
    """AlignDistil (Zhang et al. 2025, arXiv 2503.02832): (beta / w_t) KL(pi_theta || softmax(z*_t / T)) per token.

    z_d / z_r: logits of the DPO model and of the reverse-DPO model (trained on swapped pairs);
    w_t = beta2 * ||p_d - p_r||_1 + 1e-3; z*_t = z_d + w_t (z_d - z_r). The student's distribution is
    softmax(student_logits) (the temperature applies to the teacher only). Returns [N]: the sum of the
    token losses over ``mask`` divided by the number of valid tokens (the code's ``reward_len_norm``);
    the teacher is constant. Defaults: beta 0.1, beta2 10 (off-policy scripts), T 1.
    """
    _check_logits("aligndistil_loss", student_logits, mask, ("dpo_logits", dpo_logits), ("rdpo_logits", rdpo_logits))
    if not (beta > 0 and beta2 >= 0 and temperature > 0):
        raise ValueError(f"aligndistil_loss: need beta > 0, beta2 >= 0, temperature > 0; got {beta}, {beta2}, "
                         f"{temperature}")
    z_star, w = aligndistil_teacher(dpo_logits, rdpo_logits, beta2=beta2)
    log_teacher = torch.log_softmax(z_star / temperature, dim=-1)
    log_student = torch.log_softmax(student_logits, dim=-1)
    kl = (log_student.exp() * (log_student - log_teacher)).sum(-1)             # KL(student || teacher)
    token = (beta / w) * kl
    m = mask.to(token.dtype)
    return (token * m).sum(-1) / m.sum(-1).clamp(min=1)


def ce_u_loss(logits: Tensor, labels: Tensor, mask: Tensor, ignore_first_n: int = 0, *,
              form: Literal["ce", "kl"] = "ce") -> Tensor:
    """CE-U (Yang 2025, arXiv 2503.01224): CE(p~, softmax(z)), p~ = softmax(sg(z) with z_y := -inf); scalar mean.

    Per valid token: -sum_{v != y} p~_v log p_v, whose logit gradient is p - p~ (bounded: +p_y on the true
    token). ``form="kl"`` returns KL(p~ || p) = -log(1 - p_y) instead (same gradient; the value differs by
    H(p~)). ``ignore_first_n`` drops the first n valid tokens of each row (the open-unlearning
    implementation ignores the first answer token). The mean runs over the remaining valid tokens (0 if none).
    """
    _check_logits("ce_u_loss", logits, mask)
    if tuple(labels.shape) != tuple(mask.shape):
        raise ValueError(f"ce_u_loss: labels must have the shape of mask {tuple(mask.shape)}, "
                         f"got {tuple(labels.shape)}")
    if ignore_first_n < 0:
        raise ValueError(f"ce_u_loss: ignore_first_n must be >= 0, got {ignore_first_n}")
    if logits.shape[-1] < 2:
        raise ValueError("ce_u_loss: needs a vocabulary of at least 2 tokens")
    keep = mask.bool()
    if ignore_first_n:
        keep = keep & (keep.long().cumsum(-1) > ignore_first_n)
    idx = torch.where(keep, labels, torch.zeros_like(labels)).long().unsqueeze(-1)
    log_p = torch.log_softmax(logits, dim=-1)
    with torch.no_grad():
        masked = logits.detach().scatter(-1, idx, -math.inf)
        target = torch.softmax(masked, dim=-1)
    ce = -(target * log_p).sum(-1)
    if form == "kl":
        log_target = torch.log_softmax(masked, dim=-1)
        neg_entropy = torch.where(target > 0, target * log_target, torch.zeros_like(target)).sum(-1)
        ce = ce + neg_entropy
    elif form != "ce":
        raise ValueError(f"ce_u_loss: form must be 'ce' or 'kl', got {form!r}")
    k = keep.to(ce.dtype)
    return (ce * k).sum() / k.sum().clamp(min=1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """[.., T] KL(p || q) per position from log-probs over the last dimension."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def coipo_contrast(clean_logits: Tensor, noisy_logits: Tensor, mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    """CoIPO contrast (vegetable-yx/CoIPO, ICLR 2026): exp(min(c, 0)), c = k00 - k10 + k11 - k01, per pair of examples.

    k_ab = KL(clean_a || noisy_b), the mean over output positions of the KL between the output-token
    distributions (softmax(logits / T)) of example a's clean prompt and example b's noisy prompt. Inputs
    are [N, T, V] with N even: rows 2p and 2p+1 form pair p. ``mask`` [N, T] marks each example's output
    positions, left-aligned (a prefix; clean and noisy share the target, hence the mask). As the
    reference code (which pads the shorter example's logits with a constant), a position past one
    example's length takes the uniform distribution, and k_ab averages over the longer of the two
    lengths. Returns [N/2]; the code takes their mean. The code's 1e-10 inside log q is dropped. Quirk
    kept on purpose: when c >= 0 the value is 1 with zero gradient; only c < 0 is pushed further down.
    """
    _check_logits("coipo_contrast", clean_logits, mask, ("noisy_logits", noisy_logits))
    n = clean_logits.shape[0]
    if clean_logits.dim() != 3 or n % 2:
        raise ValueError(f"coipo_contrast: logits must be [N, T, V] with N even, got {tuple(clean_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"coipo_contrast: temperature must be > 0, got {temperature}")
    valid = mask.bool().unsqueeze(-1)
    uniform = torch.full_like(clean_logits, -math.log(clean_logits.shape[-1]))
    log_c = torch.where(valid, torch.log_softmax(clean_logits / temperature, dim=-1), uniform)
    log_n = torch.where(valid, torch.log_softmax(noisy_logits / temperature, dim=-1), uniform)
    log_c, log_n, m = log_c.view(n // 2, 2, *log_c.shape[1:]), log_n.view(n // 2, 2, *log_n.shape[1:]), \
        mask.bool().view(n // 2, 2, -1)

    def k(a: int, b: int) -> Tensor:
        either = (m[:, a] | m[:, b]).to(log_c.dtype)
        return (_kl_rows(log_c[:, a], log_n[:, b]) * either).sum(-1) / either.sum(-1).clamp(min=1)

    c = k(0, 0) - k(1, 0) + k(1, 1) - k(0, 1)
    return torch.exp(torch.clamp(c, max=0.0))


def coipo_scale(contrastive: Tensor, generation: Tensor, ratio: float = 1000.0) -> Tensor:
    """CoIPO's weighting: c = ratio * contrastive, then c * min(ratio, sg(generation / c)) where c > generation.

    ``generation`` is CE(clean) + CE(noisy); the rescale keeps the contrastive term from exceeding it.
    """
    c = ratio * contrastive
    factor = torch.clamp(generation.detach() / c.detach().clamp(min=torch.finfo(c.dtype).tiny), max=ratio)
    return torch.where(c > generation.detach(), c * factor, c)


__all__ = ["aligndistil_loss", "aligndistil_teacher", "ce_u_loss", "coipo_contrast", "coipo_scale"]

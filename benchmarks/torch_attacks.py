"""I-FGSM and PGD-CW on an N-member surrogate, written the peers' way in PyTorch (issue 26).

The reference side of ``benchmarks/attack_bench.py``. Same attacks as ``tf_divtrain.attacks``:

* objective = the §4.1 ensemble loss: per example the mean over members of CE (I-FGSM) or of the
  CW hinge ``min(max_{j != y} Z_j - Z_y, kappa)`` (PGD-CW, kappa = 50); its input gradient from
  ``torch.autograd.grad`` of the batch *sum* (per-example gradients; the sign step ignores scale);
* I-FGSM (CleverHans ``projected_gradient_descent``, ``rand_init=False``): ``nb_iter`` steps of
  ``eps / nb_iter``: ``x' = clip(x_t + a * sign(g), 0, 1)``, then
  ``x_{t+1} = clip(x + clip(x' - x, -eps, eps), 0, 1)``;
* PGD-CW: start ``clip(x + U(-eps, eps), 0, 1)`` (a given start for the equality test), then the
  same steps with ``a = 2.5 * eps / nb_iter``.

The members run in inference mode (``eval()``), parameters frozen (``requires_grad_(False)``), so
autograd builds only the input-gradient graph -- what an attacker writing it in PyTorch would do.
``tests/test_torch_attacks.py`` copies Keras weights in and checks the adversarial examples equal
``tf_divtrain.attacks``' within float32 tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CW_CONFIDENCE = 50.0


def freeze(members):
    for m in members:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return members


def member_logits(members, x):
    return torch.stack([m(x) for m in members], dim=1)  # [B, N, C]


def ensemble_ce(logits, y):
    b, n, c = logits.shape
    return F.cross_entropy(logits.reshape(b * n, c), y.repeat_interleave(n),
                           reduction="none").view(b, n).mean(dim=1)


def cw_margin(logits, y, confidence: float = CW_CONFIDENCE):
    onehot = F.one_hot(y, logits.shape[-1]).bool()[:, None, :].expand_as(logits)
    z_y = torch.where(onehot, logits, torch.zeros_like(logits)).sum(-1)
    z_other = torch.where(onehot, torch.full_like(logits, torch.finfo(logits.dtype).min), logits).amax(-1)
    return torch.clamp(z_other - z_y, max=confidence).mean(dim=1)


def _step(members, loss_fn, adv, x, y, step, eps):
    adv = adv.detach().requires_grad_(True)
    loss = loss_fn(member_logits(members, adv), y).sum()
    (g,) = torch.autograd.grad(loss, adv)
    adv = torch.clamp(adv.detach() + step * torch.sign(g), 0.0, 1.0)
    return torch.clamp(x + torch.clamp(adv - x, -eps, eps), 0.0, 1.0)


def ifgsm(members, x, y, eps: float, nb_iter: int = 10):
    adv = x
    for _ in range(nb_iter):
        adv = _step(members, ensemble_ce, adv, x, y, eps / nb_iter, eps)
    return adv


def pgd_cw(members, x, y, eps: float, nb_iter: int = 30, confidence: float = CW_CONFIDENCE,
           start=None, generator=None):
    if start is None:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * (2 * eps) - eps
        start = torch.clamp(x + noise, 0.0, 1.0)
    adv = start
    step = min(2.5 * eps / nb_iter, eps)
    for _ in range(nb_iter):
        adv = _step(members, lambda lg, yy: cw_margin(lg, yy, confidence), adv, x, y, step, eps)
    return adv


ATTACKS = {"ifgsm": ifgsm, "pgd_cw": pgd_cw}

"""FGSM, paper Eq 2 (Goodfellow et al. 2015), through CleverHans ``fast_gradient_method``."""

from __future__ import annotations

from tf_divtrain.attacks.core import as_logits_fn, check_eps, fgm_step, loss_fn_for, prep


def fgsm(logits_fn, x, y, eps, loss: str = "ce"):
    """FGSM, Eq 2: ``clip(x + eps * sign(grad_x mean_i CE_i), 0, 1)`` (CleverHans FGM).

    ``loss``: the objective (:data:`~tf_divtrain.attacks.core.LOSSES`; default the §4.1 mean
    member CE).
    """
    eps = check_eps(eps)
    loss_fn = loss_fn_for(loss)
    x, y = prep(x, y)
    return fgm_step(as_logits_fn(logits_fn), x, y, eps, loss_fn)

"""L-inf PGD (Madry et al. 2017) and I-FGSM (paper Eqs 3-4), through CleverHans' PGD pieces."""

from __future__ import annotations

import numpy as np
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tf_divtrain.attacks.core import (
    CLIP_MAX, CLIP_MIN, CW_CONFIDENCE, NB_ITER, as_logits_fn, check_eps, check_nb_iter, fgm_step,
    loss_fn_for, prep, project, random_start)


def pgd(logits_fn, x, y, eps, eps_iter, nb_iter, rand_init: bool = True, seed=0, loss: str = "ce",
        confidence: float = CW_CONFIDENCE):
    """L-inf PGD (Madry et al. 2017) maximising ``loss`` ('ce' = ``ensemble_ce``,
    'prediction_ce' = ``prediction_ce``, 'cw' = ``cw_margin_loss`` with ``confidence``).

    ``x_0 = x`` (``rand_init=False``: exactly CleverHans ``projected_gradient_descent``, i.e.
    I-FGSM, Eqs 3-4) or ``random_start(x, eps, seed)``; then ``nb_iter`` times
    ``x_{t+1} = project(clip(x_t + eps_iter * sign(grad), 0, 1))`` with CleverHans FGM steps.
    """
    eps = check_eps(eps)
    eps_iter = float(eps_iter)
    if not 0.0 <= eps_iter <= eps:
        raise ValueError(f"eps_iter={eps_iter} must be in [0, eps={eps}].")
    nb_iter = check_nb_iter(nb_iter)
    loss_fn = loss_fn_for(loss, confidence)
    x, y = prep(x, y)
    fn = as_logits_fn(logits_fn)
    if not rand_init:
        return projected_gradient_descent(fn, x, eps, eps_iter, nb_iter, np.inf, loss_fn=loss_fn,
                                          clip_min=CLIP_MIN, clip_max=CLIP_MAX, y=y, targeted=False,
                                          rand_init=False, sanity_checks=False)
    adv = random_start(x, eps, seed)
    for _ in range(nb_iter):  # CleverHans' PGD loop, with our seeded start
        adv = project(fgm_step(fn, adv, y, eps_iter, loss_fn), x, eps)
    return adv


def ifgsm(logits_fn, x, y, eps, nb_iter: int = NB_ITER, loss: str = "ce"):
    """I-FGSM, Eqs 3-4: k = nb_iter steps of eps/k from x, each projected (§4.1: k = 10).

    ``loss``: the objective (``LOSSES``; default the §4.1 mean member CE).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    return pgd(logits_fn, x, y, eps, eps / nb_iter, nb_iter, rand_init=False, loss=loss)

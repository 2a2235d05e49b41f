"""PGD-CW (paper §2.3, §4.1): PGD on the Carlini-Wagner hinge."""

from __future__ import annotations

from typing import Optional

from tf_divtrain.attacks.core import (
    CW_CONFIDENCE, PGD_CW_ITER, PGD_CW_STEP_FACTOR, check_eps, check_nb_iter)
from tf_divtrain.attacks.pgd import pgd


def pgd_cw(logits_fn, x, y, eps, nb_iter: int = PGD_CW_ITER, confidence: float = CW_CONFIDENCE,
           eps_iter: Optional[float] = None, rand_init: bool = True, seed=0):
    """PGD-CW (§2.3, §4.1): PGD on the CW hinge with kappa = 50, 30 iterations.

    Paper-silent choices: step ``eps_iter = 2.5 * eps / nb_iter`` (Madry et al.'s rule: the walk
    can cross the ball 2.5 times) and a random start uniform in the eps-ball (Madry et al.).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    if eps_iter is None:
        eps_iter = min(PGD_CW_STEP_FACTOR * eps / nb_iter, eps)
    return pgd(logits_fn, x, y, eps, eps_iter, nb_iter, rand_init=rand_init, seed=seed, loss="cw",
               confidence=confidence)

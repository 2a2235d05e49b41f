"""R-FGSM: a random step, then FGSM (paper §4.1; Tramèr et al. 2017). No CleverHans version."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tf_divtrain.attacks.core import (
    CLIP_MAX, CLIP_MIN, as_logits_fn, check_eps, fgm_step, loss_fn_for, prep, project, seed_pair)


def rfgsm(logits_fn, x, y, eps, seed=0, variant: str = "paper", alpha: Optional[float] = None,
          rand_eps: Optional[float] = None, loss: str = "ce"):
    """R-FGSM: one random step, then an FGSM step; output projected to the eps-ball and [0, 1].

    * ``variant="paper"`` (default, §4.1: "applies FGSM after taking a single random step sampled
      from U(-eps, +eps)"): ``x1 = clip(x + U(-r, r), 0, 1)`` with ``r = rand_eps`` (default eps),
      ``x2 = x1 + eps * sign(grad J(x1))``, then projection onto the eps-ball of the clean ``x``.
    * ``variant="tramer"`` (Tramèr et al. 2017): ``x1 = clip(x + alpha * sign(N(0, I)), 0, 1)``,
      ``x2 = x1 + (eps - alpha) * sign(grad J(x1))`` (alpha default eps/2; already in the ball).

    ``rand_eps=0`` / ``alpha=0`` reduce it to FGSM. ``loss``: the objective (``LOSSES``).
    """
    eps = check_eps(eps)
    loss_fn = loss_fn_for(loss)
    x, y = prep(x, y)
    fn = as_logits_fn(logits_fn)
    s = seed_pair(seed)
    if variant == "paper":
        r = eps if rand_eps is None else float(rand_eps)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"rand_eps={rand_eps} must be in [0, 1].")
        x1 = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), s, -r, r, dtype=x.dtype),
                              CLIP_MIN, CLIP_MAX)
        step = eps
    elif variant == "tramer":
        a = eps / 2.0 if alpha is None else float(alpha)
        if not 0.0 <= a <= eps:
            raise ValueError(f"alpha={alpha} must be in [0, eps={eps}] for the Tramèr variant.")
        x1 = tf.clip_by_value(x + a * tf.sign(tf.random.stateless_normal(tf.shape(x), s, dtype=x.dtype)),
                              CLIP_MIN, CLIP_MAX)
        step = eps - a
    else:
        raise ValueError(f"Unknown R-FGSM variant {variant!r}; valid: 'paper', 'tramer'.")
    return project(fgm_step(fn, x1, y, step, loss_fn), x, eps)

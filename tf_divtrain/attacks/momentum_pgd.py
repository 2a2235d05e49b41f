"""Momentum PGD with random restarts: the DVERGE / TRS transfer attack (issue 23).

``g_{t+1} = mu g_t + grad_t / ||grad_t||_1`` (Dong et al. 2018, Eq 6; L1 per example, g_0 = 0),
``x_{t+1} = clip_[0,1](x + clip_eta(x_t + eps_iter sign(g_{t+1}) - x))`` from a random start
uniform in the eps-ball (Madry et al. 2017). ``decay = 0`` is plain PGD (sign(grad / c) = sign(grad)),
which is TRS's ``utils/Empirical/surrogate.py`` PGD-50. The sign step and the L-inf clip are
CleverHans' ``optimize_linear`` and ``clip_eta``.

Settings that the peers' repositories do not state (issue 23), taken from the papers and all
options: momentum ``decay = 1.0`` (Dong et al. 2018; Xie et al. 2019), step ``eps_iter = eps / 10``
(TRS's published PGD step; DVERGE's is not in its repository), ``nb_iter = 100`` (DVERGE's
``scripts/evaluation.sh``).

Restarts. ``restarts = R`` runs R independent starts (restart r draws its start from
``fold_in(seed, first_restart + r)``) and returns, per image, ONE example: the first restart whose
example the surrogate's own prediction (argmax of the averaged softmax) misclassifies, else the
restart with the highest attack loss on the surrogate (first on ties). That is the white-box
"worst over restarts". The DVERGE rule -- an image is robust on a *target* only if it survives every
restart -- needs every restart's set: the field protocol crafts restart r as its own set
(``restarts=1, first_restart=r``) and ANDs the per-example correctness
(:func:`tf_divtrain.field.robust_to_all`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
from cleverhans.tf2.utils import clip_eta, optimize_linear

from tf_divtrain.attacks.core import (
    CLIP_MAX, CLIP_MIN, CW_CONFIDENCE, as_logits_fn, check_eps, check_nb_iter, input_gradient,
    loss_fn_for, prep, random_start, seed_pair)

FIELD_NB_ITER = 100  # DVERGE scripts/evaluation.sh
FIELD_STEP_FACTOR = 0.1  # eps_iter = eps / 10 (TRS); DVERGE's step is not in its repository
MOMENTUM = 1.0  # mu (Dong et al. 2018; Xie et al. 2019)


def default_eps_iter(eps: float, eps_iter: Optional[float]) -> float:
    """``eps_iter`` or ``FIELD_STEP_FACTOR * eps``; must lie in [0, eps]."""
    step = FIELD_STEP_FACTOR * eps if eps_iter is None else float(eps_iter)
    if not 0.0 <= step <= eps:
        raise ValueError(f"eps_iter={eps_iter} must be in [0, eps={eps}].")
    return step


def check_decay(decay) -> float:
    value = float(decay)
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"decay={decay!r} (momentum) must be a finite number >= 0.")
    return value


def check_restarts(restarts) -> int:
    """A restart count: an integer >= 1."""
    try:
        value = int(restarts)
    except (TypeError, ValueError):
        raise ValueError(f"restarts={restarts!r} is not an integer; it must be >= 1.") from None
    if value != restarts or value < 1:
        raise ValueError(f"restarts={restarts!r} must be an integer >= 1.")
    return value


def momentum_iterate(grad_fn, x, start, eps, eps_iter, nb_iter, decay):
    """The shared loop of M-PGD, M-DI²-FGSM and SGM: ``nb_iter`` momentum sign steps from
    ``start``, each projected onto the eps-ball of ``x`` and [0, 1]. ``grad_fn(adv, t)`` is the
    objective's input gradient at ``adv`` in step ``t`` (an int32 scalar tensor). A
    ``tf.while_loop``, so 100 steps trace once."""
    axes = list(range(1, x.shape.rank))

    def body(t, adv, g):
        grad = grad_fn(adv, t)
        l1 = tf.reduce_sum(tf.abs(grad), axis=axes, keepdims=True)
        g = decay * g + grad / tf.maximum(l1, 1e-12)
        adv = adv + optimize_linear(g, eps_iter, np.inf)
        adv = tf.clip_by_value(x + clip_eta(adv - x, np.inf, eps), CLIP_MIN, CLIP_MAX)
        return t + 1, adv, g

    _, adv, _ = tf.while_loop(lambda t, a, g: t < nb_iter, body,
                              (tf.constant(0, tf.int32), start, tf.zeros_like(x)))
    return adv


def restart_seed(seed, restart: int):
    """The [2] seed of restart ``restart``: ``stateless_fold_in(seed_pair(seed), restart)``."""
    return tf.random.experimental.stateless_fold_in(seed_pair(seed), restart)


def worst_restart(candidates, fooled, losses):
    """Per image, the first candidate in ``fooled`` ([R, B] bool), else the highest ``losses``
    ([R, B]; first on ties): ``candidates`` [R, B, ...] -> [B, ...]."""
    r = tf.shape(losses)[0]
    index = tf.range(r)[:, None]
    first_fooled = tf.reduce_min(tf.where(fooled, index, r), axis=0)
    best = tf.reduce_max(losses, axis=0, keepdims=True)
    first_best = tf.reduce_min(tf.where(losses >= best, index, r), axis=0)
    pick = tf.where(first_fooled < r, first_fooled, first_best)
    return tf.gather(tf.transpose(candidates, [1, 0] + list(range(2, candidates.shape.rank))),
                     pick[:, None], batch_dims=1)[:, 0]


def surrogate_fooled_and_loss(fn, loss_fn, x_adv, y):
    """(surrogate prediction != y, attack loss) per example, for :func:`worst_restart`."""
    logits = fn(x_adv)
    pred = tf.argmax(tf.reduce_mean(tf.nn.softmax(logits, axis=-1), axis=1), axis=-1)
    return tf.not_equal(pred, y), loss_fn(labels=y, logits=logits)


def momentum_pgd(logits_fn, x, y, eps, nb_iter: int = FIELD_NB_ITER,
                 eps_iter: Optional[float] = None, decay: float = MOMENTUM, rand_init: bool = True,
                 restarts: int = 1, first_restart: int = 0, seed=0, loss: str = "ce",
                 confidence: float = CW_CONFIDENCE):
    """Momentum PGD on ``loss`` (``ce``, ``prediction_ce`` or ``cw`` with ``confidence``; TRS uses
    0.1) with ``restarts`` random starts combined per image (module docstring)."""
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    eps_iter = default_eps_iter(eps, eps_iter)
    decay = check_decay(decay)
    restarts = check_restarts(restarts)
    if int(first_restart) != first_restart or first_restart < 0:
        raise ValueError(f"first_restart={first_restart!r} must be an integer >= 0.")
    if restarts > 1 and not rand_init:
        raise ValueError("restarts > 1 needs rand_init=True (without a random start every restart "
                         "is the same).")
    loss_fn = loss_fn_for(loss, confidence)
    x, y = prep(x, y)
    fn = as_logits_fn(logits_fn)

    def grad_fn(adv, t):
        return input_gradient(fn, loss_fn, adv, y)

    outs = []
    for r in range(int(first_restart), int(first_restart) + restarts):
        start = random_start(x, eps, restart_seed(seed, r)) if rand_init else x
        outs.append(momentum_iterate(grad_fn, x, start, eps, eps_iter, nb_iter, decay))
    if restarts == 1:
        return outs[0]
    fooled, losses = zip(*(surrogate_fooled_and_loss(fn, loss_fn, o, y) for o in outs))
    return worst_restart(tf.stack(outs), tf.stack(fooled), tf.stack(losses))

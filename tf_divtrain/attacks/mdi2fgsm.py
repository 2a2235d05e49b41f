"""M-DI²-FGSM (Xie et al. 2019, "Improving Transferability of Adversarial Examples with Input
Diversity", Alg. 1 with momentum): MI-FGSM whose gradient is taken at ``T(x_t; p)``.

``g_{t+1} = mu g_t + grad_x L(T(x_t; p), y) / ||.||_1``, ``x_{t+1} = project(x_t + eps_iter
sign(g_{t+1}))`` from ``x_0 = x`` (no random start, as in the paper). ``T`` is
:func:`~tf_divtrain.attacks.input_diversity.input_diversity` (p = 0.5, resize 32 -> [32, 36) then
pad). ``prob = 0`` gives MI-FGSM; ``prob = 0, decay = 0`` gives I-FGSM. Step ``eps_iter`` default
eps/10 and 100 steps (DVERGE's step count; its step size is not in its repository; Xie et al. use
1/255 at eps = 15/255, i.e. eps/15).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tf_divtrain.attacks.core import (
    CW_CONFIDENCE, as_logits_fn, check_eps, check_nb_iter, loss_fn_for, prep, seed_pair)
from tf_divtrain.attacks.input_diversity import (
    DIVERSITY_PROB, RESIZE_RATIO, check_prob, input_diversity, padded_size)
from tf_divtrain.attacks.momentum_pgd import (
    FIELD_NB_ITER, MOMENTUM, check_decay, default_eps_iter, momentum_iterate)


def step_seed(seed, t):
    """Seed of step ``t``'s transform: ``fold_in(seed_pair(seed), t)``."""
    return tf.random.experimental.stateless_fold_in(seed_pair(seed), tf.cast(t, tf.int64))


def mdi2fgsm(logits_fn, x, y, eps, nb_iter: int = FIELD_NB_ITER, eps_iter: Optional[float] = None,
             decay: float = MOMENTUM, prob: float = DIVERSITY_PROB,
             resize_ratio: float = RESIZE_RATIO, seed=0, loss: str = "ce",
             confidence: float = CW_CONFIDENCE):
    """M-DI²-FGSM on ``loss`` (``ce``, ``prediction_ce``, ``cw`` with ``confidence``)."""
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    eps_iter = default_eps_iter(eps, eps_iter)
    decay = check_decay(decay)
    prob = check_prob(prob)
    loss_fn = loss_fn_for(loss, confidence)
    x, y = prep(x, y)
    padded_size(int(x.shape[1]), resize_ratio)  # validates resize_ratio
    fn = as_logits_fn(logits_fn)

    def grad_fn(adv, t):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            z = fn(input_diversity(adv, step_seed(seed, t), prob, resize_ratio))
            value = loss_fn(labels=y, logits=z)
        return tape.gradient(value, adv)

    return momentum_iterate(grad_fn, x, x, eps, eps_iter, nb_iter, decay)

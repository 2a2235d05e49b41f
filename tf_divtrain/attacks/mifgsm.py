"""MI-FGSM (Dong et al. 2018), paper Eq 5, on the ensemble objective."""

from __future__ import annotations

import tensorflow as tf

from tf_divtrain.attacks.core import (
    MI_DECAY, NB_ITER, as_logits_fn, check_eps, check_nb_iter, input_gradient, loss_fn_for, prep,
    project)


def mifgsm(logits_fn, x, y, eps, nb_iter: int = NB_ITER, decay: float = MI_DECAY,
           loss: str = "ce"):
    """MI-FGSM (Dong et al. 2018), Eq 5 + Eq 4, on the ensemble-CE objective.

    ``g_{t+1} = mu * g_t + grad_t / ||grad_t||_1`` (L1 over each example's pixels; g_0 = 0),
    ``x_{t+1} = project(x_t + (eps/k) * sign(g_{t+1}))``, mu = ``decay`` = 1.0, k = ``nb_iter`` = 10.
    Same iterates as CleverHans' ``momentum_iterative_method`` (which divides by the *mean* |grad|,
    a per-example constant factor that sign() ignores), but with the ensemble loss (``loss``, one
    of ``LOSSES``).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    loss_fn = loss_fn_for(loss)
    x, y = prep(x, y)
    fn = as_logits_fn(logits_fn)
    step = eps / nb_iter
    axes = list(range(1, x.shape.rank))
    momentum = tf.zeros_like(x)
    adv = x
    for _ in range(nb_iter):
        grad = input_gradient(fn, loss_fn, adv, y)
        l1 = tf.reduce_sum(tf.abs(grad), axis=axes, keepdims=True)
        momentum = decay * momentum + grad / tf.maximum(l1, 1e-12)
        adv = project(adv + step * tf.sign(momentum), x, eps)
    return adv

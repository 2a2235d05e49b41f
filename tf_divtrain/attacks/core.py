"""Shared pieces of the attacks: logits functions, objectives, seeds, projections, checks.

Interface: a *logits function* ``logits_fn(x) -> member logits [B, N, C]`` -- an
:class:`~tf_divtrain.models.Ensemble`, an export :class:`~tf_divtrain.export.LoadedEnsemble`, a
single Keras model (wrapped to N = 1 by :func:`as_logits_fn`) or any callable.

Objective (§4.1): "Since S is an ensemble of 5 models, we consider the average CE loss of all the
models in S as the objective function to be maximized" -> :func:`ensemble_ce`, per example. Every
attack takes ``loss=`` (see :data:`LOSSES`): ``"ce"`` (that objective, the default),
``"prediction_ce"`` (:func:`prediction_ce`, the CE of the ensemble's averaged-softmax prediction --
the rule targets are scored by) or ``"cw"`` (:func:`cw_margin_loss`, with ``confidence``).

Randomness is stateless (``tf.random.stateless_*``) and a function of an explicit seed: an int or
an int [2] tensor, so results are deterministic given the seed on CPU and GPU alike.

This was ``tf_divtrain/attacks.py`` before issue 23 split the attacks one per file (as CleverHans
does); :mod:`tf_divtrain.attacks` re-exports every public name.
"""


from __future__ import annotations

import functools
import weakref
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

from tf_divtrain import gal

NB_ITER = 10  # k for I-FGSM / MI-FGSM (§4.1)
MI_DECAY = 1.0  # mu for MI-FGSM (§4.1)
CW_CONFIDENCE = 50.0  # kappa for PGD-CW (§4.1)
PGD_CW_ITER = 30  # iterations for PGD-CW (§4.1)
PGD_CW_STEP_FACTOR = 2.5  # step = 2.5 * eps / nb_iter (Madry et al. 2017's rule; paper silent)
CLIP_MIN, CLIP_MAX = 0.0, 1.0


# ----------------------------------------------------------------------------------------------
# Logits functions and losses.

class MemberLogitsFn:
    """Stable callable ``x -> [B, N, C]`` around an ensemble, a Keras model or a function.

    One object per model (see :func:`as_logits_fn`), so CleverHans' ``compute_gradient``
    (a ``tf.function`` keyed on its Python arguments) sees the same callable every time.
    A rank-2 output [B, C] (single model) becomes [B, 1, C].
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        m = self.model
        if hasattr(m, "member_logits"):
            out = m.member_logits(x)
        elif isinstance(m, keras.layers.Layer):
            out = m(x, training=False)
        else:
            out = m(x)
        if out.shape.rank == 2:
            out = out[:, None, :]
        if out.shape.rank != 3:
            raise ValueError(f"logits_fn must return [B, N, C] or [B, C] logits, got shape {out.shape}.")
        return out


_WRAPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_logits_fn(model) -> MemberLogitsFn:
    """Returns the (cached, per-model) :class:`MemberLogitsFn` for ``model``."""
    if isinstance(model, MemberLogitsFn):
        return model
    try:
        fn = _WRAPPERS.get(model)
        if fn is None:
            fn = _WRAPPERS[model] = MemberLogitsFn(model)
        return fn
    except TypeError:  # not weak-referenceable / not hashable: a fresh wrapper
        return MemberLogitsFn(model)


def _members(logits):
    logits = tf.convert_to_tensor(logits)
    return logits[:, None, :] if logits.shape.rank == 2 else logits


def ensemble_ce(labels, logits):
    """§4.1 objective: per-example mean over members of CE, ``[B], [B, N, C] -> [B]``.

    Keyword signature ``(labels=, logits=)`` is what CleverHans 4 calls; [B, C] logits count as N=1.
    """
    return tf.reduce_mean(gal.member_cross_entropy(_members(logits), labels), axis=1)


def prediction_ce(labels, logits):
    """CE of the ensemble's prediction, per example: ``-log((1/N) sum_i softmax(Z_i)[y])``.

    ``[B], [B, N, C] -> [B]`` (N = 1: plain CE), computed as ``log N - logsumexp_i log_softmax(Z_i)[y]``
    (stable when every member is confident). Its input gradient is ``sum_i w_i grad CE_i`` with
    ``w_i = p_i(y) / sum_j p_j(y)``: members already fooled (small p_i(y)) stop steering the attack,
    whereas :func:`ensemble_ce` keeps weighting each member's unbounded CE equally.
    """
    logits = tf.cast(_members(logits), tf.float32)
    num_classes = tf.shape(logits)[-1]
    logp = tf.nn.log_softmax(logits, axis=-1)
    onehot = tf.one_hot(tf.cast(labels, tf.int64), num_classes, dtype=logp.dtype)[:, None, :]
    logp_y = tf.reduce_sum(logp * onehot, axis=-1)  # [B, N]
    n = tf.cast(tf.shape(logits)[1], logp.dtype)
    return tf.math.log(n) - tf.reduce_logsumexp(logp_y, axis=1)


def cw_margin_loss(labels, logits, confidence: float = CW_CONFIDENCE):
    """Untargeted CW hinge (Carlini & Wagner 2017, f6), per example: ``[B], [B, N, C] -> [B]``.

    Per member i: ``h_i = min(max_{j != y} Z_ij - Z_iy, kappa)``; returned: ``mean_i h_i``.
    Sign convention: the attack MAXIMISES it (it is minus CW's f6 = max(Z_y - max_{j!=y} Z_j,
    -kappa)); it is positive once a member misclassifies and saturates at margin kappa.

    Why the mean of member hinges (not the hinge of the mean logits): it is the same construction
    §4.1 uses for CE ("average loss of all the models in S"), and the per-member cap means a member
    already fooled by margin kappa stops contributing gradient while the others keep being pushed,
    rather than one member with large logits dominating an averaged-logit margin.
    """
    logits = _members(logits)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int64), num_classes, on_value=True, off_value=False,
                        dtype=tf.bool)[:, None, :]
    onehot = tf.broadcast_to(onehot, tf.shape(logits))
    z_y = tf.reduce_sum(tf.where(onehot, logits, tf.zeros_like(logits)), axis=-1)
    z_other = tf.reduce_max(tf.where(onehot, tf.fill(tf.shape(logits), logits.dtype.min), logits),
                            axis=-1)
    hinge = tf.minimum(z_other - z_y, tf.cast(confidence, logits.dtype))
    return tf.reduce_mean(hinge, axis=1)


@functools.lru_cache(maxsize=None)
def cw_loss_fn(confidence: float = CW_CONFIDENCE) -> Callable:
    """One stable ``loss_fn(labels=, logits=)`` object per confidence (no CleverHans retracing)."""
    def loss_fn(labels, logits):
        return cw_margin_loss(labels, logits, confidence)
    loss_fn.__name__ = f"cw_margin_loss_k{confidence:g}"
    return loss_fn


LOSSES = ("ce", "prediction_ce", "cw")  # ensemble_ce (§4.1), prediction_ce, cw_margin_loss


def loss_fn_for(loss: str, confidence: float = CW_CONFIDENCE) -> Callable:
    if loss == "ce":
        return ensemble_ce
    if loss == "prediction_ce":
        return prediction_ce
    if loss == "cw":
        return cw_loss_fn(check_confidence(confidence))
    raise ValueError(f"Unknown loss {loss!r}; valid: {', '.join(repr(v) for v in LOSSES)}.")


def check_confidence(confidence) -> float:
    """CW confidence kappa: a finite number >= 0 (§4.1 uses 50, TRS's CW attack 0.1)."""
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        raise ValueError(f"confidence={confidence!r} is not a number; it must be >= 0.") from None
    if not np.isfinite(value) or value < 0.0:
        raise ValueError(f"confidence={confidence!r} must be a finite number >= 0.")
    return value


def input_gradient(logits_fn, loss_fn, x, y):
    """grad_x of sum_b loss_fn(y, logits_fn(x))_b (= per-example gradients; members in inference)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(labels=y, logits=logits_fn(x))
    return tape.gradient(loss, x)


# ----------------------------------------------------------------------------------------------
# Helpers.

def check_eps(eps) -> float:
    """eps must be a number in [0, 1] (the pixel scale of every input)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps={eps!r} is not a number; it must be in [0, 1] (pixel scale).") from None
    if not np.isfinite(value) or value < 0.0 or value > 1.0:
        raise ValueError(f"eps={eps!r} is outside [0, 1]; images are on the [0, 1] pixel scale "
                         f"(the paper uses 0.1/0.3 for MNIST, 0.03/0.09 for CIFAR-10).")
    return value


def seed_pair(seed):
    """int or [2] int tensor -> [2] int64 seed for the ``tf.random.stateless_*`` ops."""
    s = tf.convert_to_tensor(seed)
    if s.dtype != tf.int64:
        s = tf.cast(s, tf.int64)
    if s.shape.rank == 0:
        s = tf.stack([s, tf.constant(0, tf.int64)])
    return s


def project(x_adv, x, eps):
    """Back onto the L-inf eps-ball of the clean ``x`` and into [0, 1]."""
    return tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), CLIP_MIN, CLIP_MAX)


def random_start(x, eps, seed):
    """PGD start: ``clip(x + U(-eps, eps), 0, 1)`` with a stateless seed."""
    x = tf.convert_to_tensor(x, tf.float32)
    noise = tf.random.stateless_uniform(tf.shape(x), seed_pair(seed), -eps, eps, dtype=x.dtype)
    return tf.clip_by_value(x + noise, CLIP_MIN, CLIP_MAX)


def prep(x, y):
    """float32 images, int64 labels."""
    return tf.convert_to_tensor(x, tf.float32), tf.cast(tf.convert_to_tensor(y), tf.int64)


def check_nb_iter(nb_iter) -> int:
    """An iteration count: an integer >= 1."""
    try:
        value = int(nb_iter)
    except (TypeError, ValueError):
        raise ValueError(f"nb_iter={nb_iter!r} is not an integer; it must be >= 1.") from None
    if value != nb_iter or value < 1:
        raise ValueError(f"nb_iter={nb_iter!r} must be an integer >= 1.")
    return value


def fgm_step(fn, x, y, step, loss_fn):
    """One CleverHans L-inf FGM step: clip(x + step * sign(grad), 0, 1)."""
    return fast_gradient_method(fn, x, step, np.inf, loss_fn=loss_fn, clip_min=CLIP_MIN,
                                clip_max=CLIP_MAX, y=y, targeted=False, sanity_checks=False)

"""Gradient Alignment Loss maths (paper §3.2-3.3, Eqs 6-9), as pure TensorFlow functions.

Shapes: B = batch, N = ensemble members, D = flattened input size.
Per-member input gradients are ``[B, N, D]``; member logits ``[B, N, C]``; per-member CE ``[B, N]``.
Everything here is per example; callers reduce over the batch (so distribution strategies can
scale by the global batch).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf


def member_cross_entropy(member_logits, labels):
    """Per-example, per-member cross-entropy J(theta_i, x, y): [B, N, C], [B] -> [B, N]."""
    n = tf.shape(member_logits)[1]
    labels = tf.tile(tf.cast(labels, tf.int64)[:, None], [1, n])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=member_logits)


def member_input_gradients(members: Sequence, x, labels, training: bool = False,
                           loss_fn: Optional[Callable] = None, loss_scale=None):
    """grad_x J_i(theta_i, x, y) for every member i, in ONE backward pass.

    Each member is fed its own ``tf.identity`` copy of ``x``; the gradient of the summed losses
    with respect to copy i is exactly member i's input gradient (the other members' losses do not
    depend on copy i). Per-example gradients are exact too: example b's loss depends only on row b.

    ``loss_fn(labels, member_logits [B, N, C]) -> [B, N]`` is J (default: per-member
    cross-entropy, the paper's choice); like CleverHans' ``loss_fn`` it lets a caller take input
    gradients of another per-member objective. Member logits are float32 (``models.member_logits``).
    ``loss_scale`` (mixed_float16): the summed loss is multiplied by it before the backward pass
    and the gradients divided by it in float32 after, so small input gradients do not underflow.

    Returns ``(grads [B, N, D] float32, member_logits [B, N, C], loss [B, N])``. The logits/loss
    come from the same forward pass, so a training step reuses them for the CE term (no second
    forward). Call it under an outer ``GradientTape`` to differentiate GAL w.r.t. the parameters
    (double backprop).
    """
    from tf_divtrain.models import member_logits  # local: models imports nothing from gal

    loss_fn = loss_fn or (lambda y, lg: member_cross_entropy(lg, y))
    copies = [tf.identity(x) for _ in members]
    with tf.GradientTape() as tape:
        tape.watch(copies)
        logits = tf.concat([member_logits([m], c, training=training) for m, c in zip(members, copies)],
                           axis=1)
        loss = loss_fn(labels, logits)
        total = tf.reduce_sum(loss)
        if loss_scale is not None:
            total = total * tf.cast(loss_scale, total.dtype)
    grads = tape.gradient(total, copies)
    batch = tf.shape(x)[0]
    grads = tf.stack([tf.reshape(tf.cast(g, tf.float32), [batch, -1]) for g in grads], axis=1)
    if loss_scale is not None:
        grads = grads / tf.cast(loss_scale, tf.float32)
    return grads, logits, loss


def pairwise_cosine(grads, eps: float = 1e-12):
    """Eq 6 for every pair: [B, N, D] -> [B, N, N] cosine similarities.

    Zero vectors are safe: ``l2_normalize`` divides by sqrt(max(|g|^2, eps)), so a zero gradient
    gives cosine 0 with a finite derivative (no NaN/Inf, also under double backprop).
    """
    unit = tf.math.l2_normalize(grads, axis=-1, epsilon=eps)
    return tf.linalg.matmul(unit, unit, transpose_b=True)


def pair_cosines(grads):
    """CS_ab (Eq 6) for the unique pairs a < b: [B, N, D] -> [B, N(N-1)/2] (row-major pair order)."""
    return _pairs(pairwise_cosine(grads))


def _pairs(cos):
    """Upper-triangle entries a < b of [B, N, N] -> [B, N(N-1)/2]."""
    n = cos.shape[-1]
    if n is None or n < 2:
        raise ValueError(f"GAL/coherence need at least 2 ensemble members, got {n}.")
    a, b = np.triu_indices(n, k=1)
    flat = tf.reshape(cos, [-1, n * n])
    return tf.gather(flat, a * n + b, axis=1)


def coherence(grads):
    """Eq 7: max over pairs a != b of CS(g_a, g_b), per example: [B, N, D] -> [B].

    Built on the training loss' ``pairwise_cosine`` (eps floor: gradients with |g| < 1e-6 are read
    as near-orthogonal). Measurements use :func:`scale_free_coherence`."""
    return coherence_from_pairs(pair_cosines(grads))


def coherence_from_pairs(pairs):
    """Eq 7 from precomputed pair cosines [B, P] -> [B]."""
    return tf.reduce_max(pairs, axis=-1)


def gal_from_pairs(pairs):
    """Eq 8 from precomputed pair cosines [B, P] -> [B] (stable logsumexp)."""
    return tf.reduce_logsumexp(pairs, axis=-1)


def gradient_alignment_loss(grads):
    """Eq 8: GAL = log sum_{a<b} exp(CS_ab), per example ([B, N, D] -> [B]).

    Computed with ``reduce_logsumexp`` (stable). The DivTrain loss averages it over the batch.
    For N = 2 it equals the single cosine similarity.
    """
    return gal_from_pairs(pair_cosines(grads))


def mean_pairwise_cosine(grads):
    """Mean of CS_ab over pairs a < b, per example: [B, N, D] -> [B]."""
    return tf.reduce_mean(pair_cosines(grads), axis=-1)


# ----------------------------------------------------------------------------------------------
# Scale-free cosines for the analyses and reported metrics (issue 27). The training loss keeps
# ``pairwise_cosine`` above: its eps floor on |g| (1e-6) shrinks a tiny gradient's cosines toward 0,
# harmless as a loss (the peers' GAL code has the same floor) but wrong as a measurement: a very
# confident member's CE gradient is far below 1e-6, and Eq 7 then reads it as "diverse".

def direction_defined(grads):
    """[B, N, D] -> [B, N] bool: the gradient has a direction (all entries finite, not all zero).

    An exactly-zero (CE saturated in float32) or non-finite gradient has no direction, so no
    cosine (Eq 6) with it is defined."""
    finite = tf.reduce_all(tf.math.is_finite(grads), axis=-1)
    return tf.logical_and(finite, tf.reduce_any(tf.not_equal(grads, 0), axis=-1))


def scale_free_unit(grads):
    """g / |g| at ANY scale: [B, N, D] -> (unit [B, N, D], defined [B, N]).

    Each gradient is divided by its max-abs first, so its largest entry is +-1 and its norm lies
    in [1, sqrt(D)]: |g|^2 can neither underflow (1e-30 gradients) nor overflow, and no eps floor
    ever binds. Undefined gradients (:func:`direction_defined`) give the zero vector."""
    defined = direction_defined(grads)
    g = tf.where(defined[..., None], grads, tf.zeros_like(grads))
    m = tf.reduce_max(tf.abs(g), axis=-1, keepdims=True)
    g = g / tf.where(m > 0, m, tf.ones_like(m))
    return tf.math.l2_normalize(g, axis=-1), defined


def scale_free_norm(grads):
    """|g| without under/overflow (max-abs times the norm of the rescaled vector): [B, N, D] -> [B, N]."""
    m = tf.reduce_max(tf.abs(grads), axis=-1)
    g = grads / tf.where(m > 0, m, tf.ones_like(m))[..., None]
    return m * tf.norm(g, axis=-1)


def scale_free_pair_cosines(grads):
    """Eq 6 for the unique pairs a < b, scale-free: [B, N, D] -> (cos [B, P], defined [B, P] bool).

    ``cos`` is the true cosine wherever both gradients have a direction; undefined pairs hold 0
    and are marked False in ``defined`` (callers must not read them as cosines)."""
    unit, d = scale_free_unit(grads)
    cos = _pairs(tf.linalg.matmul(unit, unit, transpose_b=True))
    d = tf.cast(d, tf.float32)
    both = _pairs(d[:, :, None] * d[:, None, :]) > 0
    return cos, both


def max_over_defined(pairs, defined):
    """Eq 7 over the defined pairs only: [B, P], [B, P] bool -> [B]; NaN where no pair is defined."""
    masked = tf.where(defined, pairs, tf.fill(tf.shape(pairs), tf.constant(-np.inf, pairs.dtype)))
    out = tf.reduce_max(masked, axis=-1)
    return tf.where(tf.reduce_any(defined, axis=-1), out, tf.fill(tf.shape(out), tf.constant(np.nan, out.dtype)))


def mean_over_defined(pairs, defined):
    """Mean of CS_ab over the defined pairs: [B, P], [B, P] bool -> [B]; NaN where none is defined."""
    w = tf.cast(defined, pairs.dtype)
    n = tf.reduce_sum(w, axis=-1)
    s = tf.reduce_sum(tf.where(defined, pairs, tf.zeros_like(pairs)), axis=-1)
    return tf.where(n > 0, s / tf.maximum(n, 1.0), tf.fill(tf.shape(n), tf.constant(np.nan, pairs.dtype)))


def scale_free_coherence(grads):
    """Eq 7 measured scale-free: max over the DEFINED pairs a < b of CS(g_a, g_b): [B, N, D] -> [B].

    NaN for an example with no defined pair (fewer than two members have a direction); such
    "vanishing" examples are to be counted and reported, never scored (issue 27)."""
    return max_over_defined(*scale_free_pair_cosines(grads))


def measured_cross_entropy(labels, member_logits):
    """Per-member CE [B], [B, N, C] -> [B, N] whose input gradient keeps its direction at any
    confidence in float32 -- for measurements (Eq 7 on a confident member), not for training.

    d CE / d z = p - onehot(y). Computed as usual, the label's entry p_y - 1 rounds to exactly 0
    once p_y > 1 - 6e-8, which leaves only the other classes' terms: a wrong direction long before
    the gradient vanishes. Here it is -sum_{j != y} p_j, exact until every p_j underflows. Same
    value as :func:`member_cross_entropy`; no second derivative (do not train with it)."""
    c = tf.shape(member_logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int64), c, dtype=member_logits.dtype)[:, None, :]
    return _ce_direction_safe(member_logits, tf.broadcast_to(onehot, tf.shape(member_logits)))


@tf.custom_gradient
def _ce_direction_safe(logits, onehot):
    logp = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)

    def grad(dy):
        off = tf.exp(logp) * (1.0 - onehot)
        g = off - onehot * tf.reduce_sum(off, axis=-1, keepdims=True)
        return dy[..., None] * g, tf.zeros_like(onehot)

    return -tf.reduce_sum(onehot * logp, axis=-1), grad


def logit_margin_loss(labels, member_logits):
    """Negative logit margin max_{j != y} z_j - z_y per member: [B], [B, N, C] -> [B, N].

    A ``loss_fn`` for :func:`member_input_gradients`: unlike CE its input gradient does not
    vanish when a member is confident (it is the CE gradient's direction for 2 classes, and its
    high-confidence limit for C classes), so the coherence of these gradients is a robustness
    check of Eq 7 / Fig 4. Its sign (increasing with the error, like CE) does not change cosines."""
    c = tf.shape(member_logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int64), c, on_value=True, off_value=False)[:, None, :]
    onehot = tf.broadcast_to(onehot, tf.shape(member_logits))
    z_y = tf.reduce_sum(tf.where(onehot, member_logits, tf.zeros_like(member_logits)), axis=-1)
    neg = tf.fill(tf.shape(member_logits), tf.constant(-np.inf, member_logits.dtype))
    z_other = tf.reduce_max(tf.where(onehot, neg, member_logits), axis=-1)
    return z_other - z_y


def div_loss_per_example(ce, gal, gal_lambda: float):
    """Eq 9 per example: (1/N) sum_i CE_i + lambda * GAL; ce [B, N], gal [B] -> [B].

    The paper's loss is this averaged over the batch (done by the caller).
    """
    return tf.reduce_mean(ce, axis=-1) + gal_lambda * gal

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
    """Eq 7: max over pairs a != b of CS(g_a, g_b), per example: [B, N, D] -> [B]."""
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


def div_loss_per_example(ce, gal, gal_lambda: float):
    """Eq 9 per example: (1/N) sum_i CE_i + lambda * GAL; ce [B, N], gal [B] -> [B].

    The paper's loss is this averaged over the batch (done by the caller).
    """
    return tf.reduce_mean(ce, axis=-1) + gal_lambda * gal

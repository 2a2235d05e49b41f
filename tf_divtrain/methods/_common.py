"""Helpers shared by the peer methods: dtype policy, member forward passes, the member count.
(The argument checks are in :mod:`.configs`.)"""

from __future__ import annotations

from typing import Callable, List, Sequence

import tensorflow as tf

_LOW_PRECISION = (tf.float16, tf.bfloat16)


def at_least_float32(t):
    """Casts half-precision tensors (mixed_bfloat16 / mixed_float16 outputs) and integer tensors to
    float32; float32 and float64 are kept. Every loss term of this package is computed on the result,
    so a mixed-precision policy never reaches the loss maths (float64 is kept so tests can compare
    against float64 NumPy / finite differences)."""
    t = tf.convert_to_tensor(t)
    if t.dtype in (tf.float32, tf.float64):
        return t
    return tf.cast(t, tf.float32)


def float32_members(members: Sequence) -> List[Callable]:
    """Wraps each member as ``f(x, training) -> logits`` in (at least) float32, for the tf_divtrain.gal
    helpers that call ``m(x, training=...)`` themselves."""
    def wrap(m):
        return lambda x, training=False: at_least_float32(m(x, training=training))
    return [wrap(m) for m in members]


def member_logits(members: Sequence, x, training: bool):
    """[B, N, C] logits of every member on the same input, in (at least) float32."""
    return tf.stack([at_least_float32(m(x, training=training)) for m in members], axis=1)


def check_members(members: Sequence, method: str, minimum: int = 2) -> int:
    n = len(members)
    if n < minimum:
        raise ValueError(f"{method} needs an ensemble of at least {minimum} members, got {n}.")
    return n


"""Helpers shared by the peer methods: dtype policy, member forward passes, argument checks."""

from __future__ import annotations

import math
import numbers
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


def _range_text(low, high, low_open, high_open) -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"


def check_number(owner: str, name: str, value, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False) -> None:
    """Raises ValueError naming ``owner.name`` and the valid range unless ``value`` is a finite real
    (or integer) number inside it. Tensors/Variables pass unchecked (values that change at run time,
    e.g. a schedule fed to a compiled step, cannot be checked when tracing)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return
    kind = "an integer" if integer else "a real number"
    valid = _range_text(low, high, low_open, high_open)
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ValueError(f"{owner}: {name} must be {kind} in {valid}, got {value!r}.")
    v = float(value)
    if (not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low)))
            or (high is not None and (v > high or (high_open and v == high)))):
        raise ValueError(f"{owner}: {name}={value!r} is outside the valid range {valid}.")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}.")

"""Coherence (Eq 7) of the members' input gradients, per example (paper §3.2, Fig 4).

Measured scale-free (issue 27): every cosine is the true cosine of the two gradients at any scale
(:func:`tf_divtrain.gal.scale_free_pair_cosines`), and a member gradient that is exactly zero or
non-finite has no direction. Coherence is the max over the *defined* pairs; an example with no
defined pair is "vanishing": NaN in the per-example values, counted in the summary, never scored.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_divtrain import batching
from tf_divtrain import gal

from tf_divtrain.analysis.common import (AnalysisError, _compiled, num_members, summarize)


OBJECTIVES = ("ce", "margin")
SMALL_NORM = 1e-6  # the floor of the training loss' l2_normalize (sqrt of eps 1e-12)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # below it float32 loses mantissa bits (subnormal)
COHERENCE_DEFINITION = (
    "Coherence (Eq 7) = max over member pairs a < b of the cosine of their input gradients "
    "grad_x CE_a(x, y), grad_x CE_b(x, y). Cosines are scale-free (each gradient divided by its "
    "max-abs before normalising) and the CE derivative of the label's logit is taken as "
    "-sum_{j != y} p_j (p_y - 1 rounds to 0 in float32 at high confidence), so a tiny gradient "
    "keeps its true direction. A member gradient that is exactly zero or non-finite has no "
    "direction, a pair involving one is undefined, the max runs over the defined pairs, and an "
    "example with no defined pair is counted as vanishing (not scored).")
MARGIN_DEFINITION = (
    "Margin coherence: the same, with each member's gradient taken of its logit margin "
    "z_y - max_{j != y} z_j instead of its CE. That gradient does not vanish when a member is "
    "confident (for a confident member the CE gradient tends to its direction), so it is a "
    "robustness check of the CE coherence.")


def _stats_fn(grads_fn):
    def fn(xb, yb):
        grads = grads_fn(xb, yb)
        cos, defined = gal.scale_free_pair_cosines(grads)
        norm = gal.scale_free_norm(grads)
        finite = tf.reduce_all(tf.math.is_finite(grads), axis=-1)
        zero = tf.logical_and(finite, tf.logical_not(gal.direction_defined(grads)))
        has_dir = gal.direction_defined(grads)
        subnormal = tf.logical_and(has_dir, tf.reduce_max(tf.abs(grads), -1) < FLOAT32_TINY)
        return (gal.max_over_defined(cos, defined), gal.mean_over_defined(cos, defined),
                tf.reduce_sum(tf.cast(defined, tf.int32), -1), zero, tf.logical_not(finite),
                tf.logical_and(finite, norm < SMALL_NORM), subnormal)
    return fn


def coherence_stats(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 100,
                    objective: str = "ce") -> dict:
    """Per-example scale-free coherence and its vanishing bookkeeping, as NumPy arrays.

    ``objective``: ``"ce"`` (Eq 7, the paper's) or ``"margin"`` (gradients of the logit margin,
    :func:`tf_divtrain.gal.logit_margin_loss`). Returns ``values`` [B] (NaN where vanishing),
    ``mean_cosine`` [B] (over defined pairs), ``defined_pairs`` [B], and per member ``zero`` /
    ``non_finite`` / ``small`` / ``subnormal`` [B, N] (small: finite with 0 <= |g| < 1e-6, where
    the training formula's floor shrinks cosines toward 0; subnormal: nonzero with max-abs below
    float32's smallest normal number, whose direction float32 holds only approximately).
    """
    if objective not in OBJECTIVES:
        raise AnalysisError(f"Unknown coherence objective {objective!r}; valid: {', '.join(OBJECTIVES)}.")
    if num_members(ensemble) < 2:
        raise AnalysisError("Coherence needs an ensemble of at least 2 members.")
    c = _compiled(ensemble)
    grads_fn = c.member_grads if objective == "ce" else c.member_margin_grads
    keys = ("values", "mean_cosine", "defined_pairs", "zero", "non_finite", "small", "subnormal")
    out = batching.map_batches(_stats_fn(grads_fn), x, y, batch_size=batch_size)
    return dict(zip(keys, out))


def coherence_values(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 100,
                     objective: str = "ce") -> np.ndarray:
    """Eq 7 per example, scale-free: max over the defined member pairs of the cosine of their
    input gradients, ``[B]``; NaN for a vanishing example (no defined pair)."""
    return coherence_stats(ensemble, x, y, batch_size, objective)["values"]


def summarize_coherence(stats: dict) -> dict:
    """analysis.json's coherence entry: :func:`summarize` of the defined examples (``n`` = their
    number) plus the vanishing counts, from :func:`coherence_stats` output."""
    v = np.asarray(stats["values"], np.float64)
    zero, bad = np.asarray(stats["zero"], bool), np.asarray(stats["non_finite"], bool)
    small = np.asarray(stats["small"], bool)
    defined = np.isfinite(v)
    mc = np.asarray(stats["mean_cosine"], np.float64)
    out = summarize(v[defined])
    out.update({
        "num_examples": int(v.size), "vanishing": int(v.size - defined.sum()),
        "mean_cosine": float(mc[defined].mean()) if defined.any() else None,
        "member_gradients": {"total": int(zero.size), "exactly_zero": int(zero.sum()),
                             "non_finite": int(bad.sum()), "norm_below_1e-6": int(small.sum()),
                             "subnormal": int(np.asarray(stats.get("subnormal", 0)).sum()),
                             "examples_with_a_zero_member": int(np.any(zero | bad, -1).sum())}})
    return out


def vanishing_text(summary: dict) -> str:
    """'vanishing: k of n examples; member gradients exactly zero: z of t' (+ non-finite if any)."""
    mg = summary.get("member_gradients", {})
    text = (f"vanishing: {summary.get('vanishing', 0)} of {summary.get('num_examples', summary.get('n', 0))} "
            f"examples; member gradients exactly zero: {mg.get('exactly_zero', 0)} of {mg.get('total', 0)}")
    if mg.get("non_finite"):
        text += f", non-finite: {mg['non_finite']}"
    return text

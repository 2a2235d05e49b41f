"""GAAS (Tramer et al. 2017 §3; paper §4.4, Fig 5): k orthogonal directions in the gradient's
blocks built from a regular Hadamard matrix, and the probability that they fool the ensemble."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from tf_divtrain import hadamard
from tf_divtrain import models as models_lib

from tf_divtrain.analysis.common import (
    AnalysisError, BLOCK_MODES, DEFAULT_GAAS_K, GAAS_DEFINITION, _compiled, check_eps)


# ----------------------------------------------------------------------------------------------
# Regular Hadamard matrices (tf_divtrain.hadamard, NumPy only), with this package's error type.

def check_gaas_k(k) -> int:
    """``k`` as an int when a regular Hadamard matrix of order k is constructed, else AnalysisError."""
    try:
        return hadamard.check_order(k)
    except hadamard.HadamardError as e:
        raise AnalysisError(str(e)) from None


def regular_hadamard(k: int) -> np.ndarray:
    check_gaas_k(k)
    return hadamard.regular_hadamard(k)


supported_hadamard_orders = hadamard.supported_orders


# ----------------------------------------------------------------------------------------------
# GAAS.


def block_assignment(g, k: int, mode: str = "balanced"):
    """Block index of every input dim, ``[B, D]`` int32 in ``0..k-1``, or -1 (never perturbed).

    Every block gets exactly ``q = D // k`` dims (equal sizes keep the expanded Hadamard rows
    orthogonal); ``D mod k`` dims are left out.

    * ``contiguous``: dim d (row-major flattened H, W, C order) -> block ``d // q``; the last
      ``D mod k`` dims are left out. Same for every example.
    * ``balanced`` (default): dims sorted by ``|g_d|`` descending (ties by index) are dealt to
      the blocks in snake order (0..k-1, k-1..0, ...); the ``D mod k`` dims with the smallest
      ``|g|`` are left out. Block L1 masses ``A_j`` are then nearly equal, so
      ``<g, r_i> = eps * sum_j H_ij A_j ~ eps * ||g||_1 / sqrt(k) > 0`` -- with contiguous blocks
      a row's negative entries can sit on the high-gradient blocks and make ``<g, r_i>`` negative.
    """
    if mode not in BLOCK_MODES:
        raise AnalysisError(f"Unknown GAAS block mode {mode!r}; valid: {', '.join(BLOCK_MODES)}.")
    g = tf.convert_to_tensor(g)
    b, d = tf.shape(g)[0], int(g.shape[-1])
    q = d // k
    if q < 1:
        raise AnalysisError(f"GAAS k={k} exceeds the input dimension D={d}.")
    if mode == "contiguous":
        idx = tf.range(d)
        blk = tf.where(idx < q * k, idx // q, -1)
        return tf.tile(blk[None], [b, 1])
    order = tf.argsort(tf.abs(g), axis=-1, direction="DESCENDING", stable=True)  # rank -> dim
    rank = tf.argsort(order, axis=-1, stable=True)  # dim -> rank
    rnd, pos = rank // k, rank % k
    blk = tf.where(rnd % 2 == 0, pos, k - 1 - pos)
    return tf.where(rank < q * k, blk, -1)


def gaas_directions(g, k: int, eps: float, blocks: str = "balanced"):
    """The k GAAS directions of Tramèr et al. 2017 for a batch of gradients: ``[B, k, D]``.

    ``g``: [B, D] (or [B, ...], flattened). Row i of the regular Hadamard matrix H (order k) is
    expanded to D dims by repeating entry H[i, j] over block j (:func:`block_assignment`; 0 on
    left-out dims), multiplied component-wise by ``sign(g)`` (sign(0) := +1 so entries stay +-1)
    and scaled by ``eps``: L-inf norm eps, pairwise orthogonal (equal block sizes), and
    ``<r_i, sign(g)> = eps * (D // k) * sqrt(k) > 0`` for every i because H's rows sum to sqrt(k).
    """
    k = check_gaas_k(k)
    eps = check_eps(eps)
    g = tf.convert_to_tensor(g, tf.float32)
    g = tf.reshape(g, [tf.shape(g)[0], -1])
    s = tf.where(g >= 0, 1.0, -1.0)
    blk = block_assignment(g, k, blocks)  # [B, D]
    ht = tf.constant(np.concatenate([regular_hadamard(k).T, np.zeros((1, k))], 0), tf.float32)
    expanded = tf.gather(ht, tf.where(blk < 0, k, blk))  # [B, D, k]; left-out dims -> zero row
    return eps * tf.transpose(expanded, [0, 2, 1]) * s[:, None, :]


def gaas_analysis(ensemble, x: np.ndarray, y: np.ndarray, ks: Sequence[int] = DEFAULT_GAAS_K,
                  eps_list: Sequence[float] = (0.1, 0.2, 0.3), batch_size: int = 100,
                  blocks: str = "balanced", forward_images: int = 0) -> dict:
    """GAAS over the examples the ensemble classifies correctly (definition: ``GAAS_DEFINITION``).

    Returns ``{"definition", "blocks", "num_examples", "num_correct", "zero_gradient_examples",
    "results": {str(eps): {str(k): {"p_all", "p_any", "mean_num_adversarial",
    "mean_fraction_adversarial", "count_histogram" (k+1 ints), "inner_product_positive_fraction",
    "min_inner_product_ratio"}}}}``, where the inner-product ratio is ``<g, r_i> / (eps ||g||_1 /
    sqrt(k))`` (1 for perfectly balanced blocks). The k perturbed copies of a batch are evaluated
    in one batched forward pass per chunk of at most ``max(batch_size, forward_images)``
    perturbed images (``forward_images`` = 0: ``batch_size``, one example per pass at k = 64 with
    the default 100; a larger value makes fewer, larger passes over the same images).
    """
    ks = [check_gaas_k(k) for k in ks]
    eps_list = [check_eps(e, "GAAS eps") for e in eps_list]
    c = _compiled(ensemble)
    pred, _ = c.predict(x, batch_size)
    keep = pred == y
    xc, yc = x[keep], y[keep]
    d = int(np.prod(x.shape[1:]))
    counts = {(e, k): [] for e in eps_list for k in ks}
    ip_pos = {(e, k): [] for e in eps_list for k in ks}
    ip_ratio = {(e, k): [] for e in eps_list for k in ks}
    zero_grad = 0

    @tf.function(reduce_retracing=True, autograph=False)
    def count_adv(xb, yb, dirs):
        # xb [b, ...], dirs [b, k, D] -> number of adversarial directions per example [b]
        bsz, kk = tf.shape(dirs)[0], tf.shape(dirs)[1]
        xp = tf.reshape(xb, [bsz, 1, -1]) + dirs
        xp = tf.clip_by_value(tf.reshape(xp, tf.concat([[bsz * kk], tf.shape(xb)[1:]], 0)), 0., 1.)
        probs = models_lib.ensemble_probabilities(c.logits_fn(xp))
        wrong = tf.reshape(tf.argmax(probs, -1) != tf.repeat(yb, kk), [bsz, kk])
        return tf.reduce_sum(tf.cast(wrong, tf.int32), -1)

    for i in range(0, len(xc), batch_size):
        xb, yb = tf.constant(xc[i:i + batch_size]), tf.constant(yc[i:i + batch_size])
        g_all, _ = c.mean_ce_grad(xb, yb)  # one gradient per example, shared by every k and eps
        g_all = tf.reshape(g_all, [tf.shape(g_all)[0], -1])
        zero_grad += int(tf.reduce_sum(tf.cast(tf.reduce_all(g_all == 0, -1), tf.int32)))
        for k in ks:
            chunk = max(1, max(batch_size, forward_images) // k)  # chunk * k images per pass
            for j in range(0, int(g_all.shape[0]), chunk):
                g, xs, ys = g_all[j:j + chunk], xb[j:j + chunk], yb[j:j + chunk]
                l1 = tf.reduce_sum(tf.abs(g), -1)
                for e in eps_list:
                    dirs = gaas_directions(g, k, e, blocks)
                    ip = tf.reduce_sum(dirs * g[:, None, :], -1)  # [b, k]
                    ip_pos[(e, k)].append((ip > 0).numpy())
                    ratio = ip / tf.maximum(e * l1[:, None] / math.sqrt(k), 1e-30)
                    ip_ratio[(e, k)].append(tf.boolean_mask(ratio, l1 > 0).numpy().reshape(-1))
                    counts[(e, k)].append(count_adv(xs, ys, dirs).numpy())
    results = {}
    for e in eps_list:
        per_k = {}
        for k in ks:
            n_adv = np.concatenate(counts[(e, k)]) if counts[(e, k)] else np.zeros(0, int)
            pos = np.concatenate(ip_pos[(e, k)]) if ip_pos[(e, k)] else np.zeros((0, k), bool)
            ratio = np.concatenate(ip_ratio[(e, k)]) if ip_ratio[(e, k)] else np.zeros(0)
            m = max(len(n_adv), 1)
            per_k[str(k)] = {
                "p_all": float(np.sum(n_adv == k) / m) if len(n_adv) else float("nan"),
                "p_any": float(np.sum(n_adv >= 1) / m) if len(n_adv) else float("nan"),
                "mean_num_adversarial": float(n_adv.mean()) if len(n_adv) else float("nan"),
                "mean_fraction_adversarial": float(n_adv.mean() / k) if len(n_adv) else float("nan"),
                "count_histogram": np.bincount(n_adv, minlength=k + 1).astype(int).tolist(),
                "inner_product_positive_fraction": float(pos.mean()) if pos.size else float("nan"),
                "min_inner_product_ratio": float(ratio.min()) if ratio.size else float("nan"),
                "dims_per_block": d // k, "unperturbed_dims": d % k,
            }
        results[f"{e:g}"] = per_k
    return {"definition": GAAS_DEFINITION, "blocks": blocks, "num_examples": int(len(x)),
            "num_correct": int(keep.sum()), "zero_gradient_examples": int(zero_grad),
            "results": results}

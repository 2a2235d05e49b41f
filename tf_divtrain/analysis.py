"""Analyses of trained ensembles (paper §3.2, §4.3, §4.4; issue 5).

Every function takes plain arguments (an ensemble object, numpy arrays, numbers); the absl CLI
lives in :mod:`tf_divtrain.analyze`. An *ensemble* here is anything with
``member_logits(x) -> [B, N, C]``: a :class:`tf_divtrain.models.Ensemble` (keras members) or an
export :class:`tf_divtrain.export.LoadedEnsemble`. Its prediction is the argmax of the average
member softmax (``models.ensemble_probabilities``), as everywhere else in the project.

Analyses
--------
* **Coherence** (Eq 7) of the members' input gradients ``grad_x CE_i(x, y)``, per example, with
  :func:`tf_divtrain.gal.coherence` (the training maths, one place). Keras ensembles use
  :func:`tf_divtrain.gal.member_input_gradients` itself; exports (stacked logits only) use
  :func:`member_input_gradients` below, which gives the same per-member gradients in one backward
  pass over N tiled copies of the batch (copy i feeds only member i's CE).
* **GAAS** (Tramèr et al. 2017, §3; paper §4.4) -- see :func:`gaas_directions` and
  :func:`gaas_analysis` for the exact construction and the reported probabilities.
* **Transferability matrix** inside an ensemble -- :func:`transfer_matrix`.
* **White-box check** (gradient-masking alarm) -- :func:`whitebox_check`.

Attacks are :func:`tf_divtrain.attacks.pgd` (L-inf PGD on the average member CE, outputs inside
the eps-ball and [0, 1]), compiled once per (ensemble, eps) with ``tf.function`` (the member
to attack is a tensor argument).
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_divtrain import gal, io_utils
from tf_divtrain import models as models_lib

ANALYSES = ("coherence", "gaas", "transfer", "whitebox")
DEFAULT_GAAS_K = (4, 16, 36, 64)
# GAAS epsilons: the paper's Fig 5 values for CIFAR-10; MNIST-like data gets 0.1/0.2/0.3
# (0.1 and 0.3 are the paper's Table 2 MNIST epsilons).
DEFAULT_GAAS_EPS = {"mnist": (0.1, 0.2, 0.3), "fashion_mnist": (0.1, 0.2, 0.3),
                    "cifar10": (0.03, 0.06, 0.09)}
# Transfer / white-box epsilons: the paper's Table 2 values (small / large).
DEFAULT_ATTACK_EPS = {"mnist": (0.1, 0.3), "fashion_mnist": (0.1, 0.3), "cifar10": (0.03, 0.09)}
PGD_STEP_FACTOR = 2.5  # eps_iter = 2.5 * eps / nb_iter (Madry et al. 2017)
MASKING_RATIO = 0.9  # worst-case white-box accuracy >= 0.9 * clean accuracy at any eps -> suspect
GAAS_DEFINITION = (
    "For each correctly classified example x (label y) and each k, g = grad_x of the ensemble's "
    "average member CE; s = sign(g) with sign(0) := +1; H = a regular Hadamard matrix of order k "
    "(+-1 entries, H H^T = k I, every row sums to +sqrt(k)). The D input dims are split into k "
    "blocks of exactly floor(D/k) dims (the D mod k leftover dims are never perturbed); direction "
    "i is r_i[d] = eps * s[d] * H[i, block(d)] (0 on leftover dims), so the k directions are "
    "pairwise orthogonal, have L-inf norm eps and <r_i, sign(g)> = eps*floor(D/k)*sqrt(k) > 0. "
    "Direction i is adversarial if argmax of the ensemble's average softmax at clip(x + r_i, 0, 1) "
    "!= y. p_all[k] = fraction of examples for which ALL k directions are adversarial (the "
    "probability of finding k orthogonal adversarial directions, Fig 5); also reported: mean "
    "number / fraction of adversarial directions and p_any (at least one).")
BLOCK_MODES = ("balanced", "contiguous")


class AnalysisError(ValueError):
    """Bad analysis input (unknown ensemble dir, invalid k or eps, dataset mismatch, ...)."""


# ----------------------------------------------------------------------------------------------
# Regular Hadamard matrices.

def _latin_square_hadamard(n: int) -> np.ndarray:
    """Regular Hadamard matrix of order n^2 from the Latin-square graph L_3(n), n = 6.

    Vertices: the n^2 cells (r, c) of the cyclic Latin square L[r, c] = (r + c) mod n; two cells
    are adjacent iff they share a row, a column or a symbol. This is a strongly regular graph
    SRG(n^2, 3(n-1), n-2+2, 6); for n = 6 it is SRG(36, 15, 6, 6), and since lambda = mu its
    adjacency A satisfies A^2 = 9 I + 6 J, hence H = J - 2A has H H^T = H^2 = 36 I and constant row
    sum 36 - 2*15 = 6 = sqrt(36).
    """
    cells = [(r, c, (r + c) % n) for r in range(n) for c in range(n)]
    v = len(cells)
    a = np.zeros((v, v), np.int64)
    for i, (r1, c1, s1) in enumerate(cells):
        for j, (r2, c2, s2) in enumerate(cells):
            if i != j and (r1 == r2 or c1 == c2 or s1 == s2):
                a[i, j] = 1
    return np.ones((v, v), np.int64) - 2 * a


_H4 = np.ones((4, 4), np.int64) - 2 * np.eye(4, dtype=np.int64)  # J - 2I, row sums 2


def _regular_hadamard_or_none(k: int):
    if k == 1:
        return np.ones((1, 1), np.int64)
    if k == 4:
        return _H4
    if k == 36:
        return _latin_square_hadamard(6)
    for base in (36, 4):  # Kronecker products of regular Hadamard matrices are regular Hadamard
        if k % base == 0 and k > base:
            rest = _regular_hadamard_or_none(k // base)
            if rest is not None:
                return np.kron(_regular_hadamard_or_none(base), rest)
    return None


def supported_hadamard_orders(limit: int = 1296) -> list:
    """Orders k <= limit for which :func:`regular_hadamard` has a construction (4^a * 36^b)."""
    return [k for k in range(2, limit + 1) if _regular_hadamard_or_none(k) is not None]


def check_gaas_k(k) -> int:
    try:
        k_int = int(str(k).strip()) if isinstance(k, str) else int(k)
        if not isinstance(k, str) and k_int != k:
            raise ValueError
    except (TypeError, ValueError):
        raise AnalysisError(f"GAAS k={k!r} is not an integer; valid orders: "
                            f"{', '.join(map(str, supported_hadamard_orders(1024)))}.") from None
    if _regular_hadamard_or_none(k_int) is None or k_int < 2:
        root = math.isqrt(k_int) if k_int > 0 else 0
        why = ("regular Hadamard matrices exist only for orders 4u^2"
               if not (k_int > 0 and k_int % 4 == 0 and root * root == k_int)
               else "no construction for this order 4u^2 is implemented")
        raise AnalysisError(
            f"GAAS k={k_int}: {why}; valid orders here: "
            f"{', '.join(map(str, supported_hadamard_orders(1024)))} (products of 4 and 36). "
            f"The paper's k=25 is not a regular Hadamard order; use e.g. --gaas_k=4,16,36,64.")
    return k_int


def regular_hadamard(k: int) -> np.ndarray:
    """A regular Hadamard matrix of order ``k`` (int64 +-1 entries, H H^T = k I, row sums +sqrt(k)).

    Constructions: order 4 = J - 2I; order 36 = J - 2A of the Latin-square graph L_3(6) (see
    :func:`_latin_square_hadamard`); other orders = Kronecker products of these (16 = 4x4,
    64 = 4x16, 144 = 4x36, ...). Any other k raises :class:`AnalysisError` naming valid orders.
    """
    k = check_gaas_k(k)
    h = _regular_hadamard_or_none(k)
    if h[0].sum() < 0:  # all constructions give +sqrt(k); keep the invariant explicit
        h = -h
    return h


# ----------------------------------------------------------------------------------------------
# Ensemble plumbing.

def num_members(ensemble) -> int:
    if hasattr(ensemble, "members"):
        return len(ensemble.members)
    return int(ensemble.size)


def _logits_fn(ensemble) -> Callable:
    return ensemble.member_logits if hasattr(ensemble, "member_logits") else ensemble


def member_input_gradients(logits_fn: Callable, x, labels, num_members: int):
    """Per-member input gradients for ANY ``logits_fn(x) -> [B, N, C]``: ``[B, N, D]``.

    The batch is tiled N times (copy i = rows i*B..(i+1)*B) and only member i's CE is taken from
    copy i, so the gradient of the summed loss w.r.t. copy i is exactly grad_x CE_i(x, y) (one
    forward + one backward pass on an N*B batch). Equal to
    :func:`tf_divtrain.gal.member_input_gradients` for keras members (tested).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int64)
    n = int(num_members)
    b = tf.shape(x)[0]
    tiled = tf.tile(x, tf.concat([[n], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
    with tf.GradientTape() as tape:
        tape.watch(tiled)
        logits = logits_fn(tiled)  # [N*B, N, C]
        logits = tf.reshape(logits, tf.concat([[n, b], tf.shape(logits)[1:]], 0))  # [N, B, N, C]
        own = tf.stack([logits[i, :, i] for i in range(n)], axis=0)  # [N, B, C]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.tile(labels[None], [n, 1]), logits=own)
        total = tf.reduce_sum(ce)
    g = tape.gradient(total, tiled, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return tf.transpose(tf.reshape(g, [n, b, -1]), [1, 0, 2])


class _Compiled:
    """tf.functions of one ensemble (probabilities, member gradients, average-CE gradient)."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self.n = num_members(ensemble)
        self.logits_fn = _logits_fn(ensemble)
        keras_members = getattr(ensemble, "members", None)

        @tf.function(reduce_retracing=True, autograph=False)
        def logits(x):
            return self.logits_fn(x)

        @tf.function(reduce_retracing=True, autograph=False)
        def member_grads(x, y):
            if keras_members is not None:  # the training module's function itself
                grads, _, _ = gal.member_input_gradients(keras_members, x, y, training=False)
                return grads
            return member_input_gradients(self.logits_fn, x, y, self.n)

        @tf.function(reduce_retracing=True, autograph=False)
        def mean_ce_grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                lg = self.logits_fn(x)
                loss = tf.reduce_sum(tf.reduce_mean(gal.member_cross_entropy(lg, y), axis=1))
            return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO), lg

        self.logits, self.member_grads, self.mean_ce_grad = logits, member_grads, mean_ce_grad

    def predict(self, x, batch_size: int):
        """(ensemble predictions [B], member predictions [B, N]) as numpy."""
        ens, mem = [], []
        for i in range(0, len(x), batch_size):
            lg = self.logits(tf.constant(x[i:i + batch_size]))
            ens.append(tf.argmax(models_lib.ensemble_probabilities(lg), -1).numpy())
            mem.append(tf.argmax(lg, -1).numpy())
        return np.concatenate(ens), np.concatenate(mem)


_COMPILED: Dict[int, _Compiled] = {}


def _compiled(ensemble) -> _Compiled:
    c = _COMPILED.get(id(ensemble))
    if c is None or c.ensemble is not ensemble:
        c = _COMPILED[id(ensemble)] = _Compiled(ensemble)
    return c


# ----------------------------------------------------------------------------------------------
# Coherence.

def coherence_values(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Eq 7 per example: max over member pairs of the cosine of their input gradients, ``[B]``."""
    if num_members(ensemble) < 2:
        raise AnalysisError("Coherence needs an ensemble of at least 2 members.")
    c = _compiled(ensemble)
    out = []
    for i in range(0, len(x), batch_size):
        g = c.member_grads(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]))
        out.append(gal.coherence(g).numpy())
    return np.concatenate(out, 0)


def summarize(values) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(med),
            "q25": float(q25), "q75": float(q75), "min": float(v.min()), "max": float(v.max())}


# ----------------------------------------------------------------------------------------------
# GAAS.

def check_eps(eps, what: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise AnalysisError(f"{what}={eps!r} is not a number; epsilons are on the [0, 1] pixel "
                            f"scale.") from None
    if not np.isfinite(e) or e <= 0.0 or e > 1.0:
        raise AnalysisError(f"{what}={eps!r} is outside (0, 1]; images are on the [0, 1] pixel "
                            f"scale (e.g. 0.1,0.2,0.3 for MNIST, 0.03,0.06,0.09 for CIFAR-10).")
    return e


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
                  blocks: str = "balanced") -> dict:
    """GAAS over the examples the ensemble classifies correctly (definition: ``GAAS_DEFINITION``).

    Returns ``{"definition", "blocks", "num_examples", "num_correct", "zero_gradient_examples",
    "results": {str(eps): {str(k): {"p_all", "p_any", "mean_num_adversarial",
    "mean_fraction_adversarial", "count_histogram" (k+1 ints), "inner_product_positive_fraction",
    "min_inner_product_ratio"}}}}``, where the inner-product ratio is ``<g, r_i> / (eps ||g||_1 /
    sqrt(k))`` (1 for perfectly balanced blocks). The k perturbed copies of a batch are evaluated
    in one batched forward pass per chunk.
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
            chunk = max(1, batch_size // k)  # chunk * k perturbed images per forward pass
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


# ----------------------------------------------------------------------------------------------
# Attacks: transferability inside an ensemble, white-box check.

def ensemble_log_prediction(member_logits):
    """log of the ensemble's prediction, log mean_i softmax(Z_i): [B, N, C] -> [B, C] (stable)."""
    n = tf.cast(tf.shape(member_logits)[1], member_logits.dtype)
    return tf.reduce_logsumexp(tf.nn.log_softmax(member_logits, -1), axis=1) - tf.math.log(n)


def _pgd_fn(logits_fn, eps: float, nb_iter: int, image_shape):
    """Compiled ``(x, y, seed[2], member) -> x_adv``: attacks.pgd with random start and step
    ``2.5 eps / nb_iter``. ``member >= 0`` attacks only that member's CE (logits
    ``[:, member:member+1]``); ``-1`` the whole ensemble's average member CE (the paper's attack
    objective); ``-2`` the CE of the ensemble's *prediction*, -log mean_i softmax_i(x)_y. One trace.
    """
    from tf_divtrain import attacks

    eps_iter = min(PGD_STEP_FACTOR * eps / nb_iter, eps)
    sig = [tf.TensorSpec((None,) + tuple(image_shape), tf.float32),
           tf.TensorSpec((None,), tf.int64), tf.TensorSpec((2,), tf.int64),
           tf.TensorSpec((), tf.int32)]

    def connected(z, logits):
        # + 0 * z keeps x on the gradient path, so a defence whose logits do not depend
        # differentiably on x (stop_gradient, rounding) yields a ZERO gradient instead of None
        # (which would crash the attack); the white-box check then reports the masking.
        return logits + 0.0 * tf.reduce_sum(z, axis=list(range(1, z.shape.rank)))[:, None, None]

    @tf.function(input_signature=sig, autograph=False)
    def run(x, y, seed, member):
        def ensemble_fn(z):
            return connected(z, logits_fn(z))

        def member_fn(z):
            return connected(z, tf.gather(logits_fn(z), tf.reshape(member, [1]), axis=1))

        def prediction_fn(z):
            # log of the averaged softmax, as the logits of one "member": its CE is -log p_bar_y.
            return connected(z, ensemble_log_prediction(logits_fn(z))[:, None, :])

        def attack(fn):
            return attacks.pgd(fn, x, y, eps, eps_iter, nb_iter, rand_init=True, seed=seed,
                               loss="ce")
        return tf.cond(member >= 0, lambda: attack(member_fn),
                       lambda: tf.cond(member == -1, lambda: attack(ensemble_fn),
                                       lambda: attack(prediction_fn)))
    return run


def _attack_all(fn, x, y, batch_size: int, seed: int, member: int = -1) -> np.ndarray:
    out = []
    for b, i in enumerate(range(0, len(x), batch_size)):
        out.append(fn(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                      tf.constant([seed, b], tf.int64), tf.constant(member, tf.int32)).numpy())
    return np.concatenate(out, 0)


def transfer_matrix(ensemble, x: np.ndarray, y: np.ndarray, eps: float, nb_iter: int = 20,
                    batch_size: int = 100, seed: int = 0) -> dict:
    """Transferability of PGD examples between the members of one ensemble.

    ``matrix[i][j]`` = success rate on member j of adversarial examples crafted on member i alone
    (PGD with random start on member i's CE, ``nb_iter`` steps of ``2.5 eps / nb_iter``), i.e. the
    fraction misclassified by member j, measured over the examples that BOTH member i and member j
    classify correctly when clean (``counts[i][j]`` of them). The diagonal is each member's
    white-box success rate. ``mean_off_diagonal`` averages the off-diagonal entries.
    """
    eps = check_eps(eps, "transfer eps")
    c = _compiled(ensemble)
    n = c.n
    _, clean = c.predict(x, batch_size)  # [B, N]
    ok = clean == y[:, None]
    matrix = np.full((n, n), np.nan)
    counts = np.zeros((n, n), int)
    fn = _pgd_fn(c.logits_fn, eps, nb_iter, x.shape[1:])
    for i in range(n):
        adv = _attack_all(fn, x, y, batch_size, seed + 1000 * i, member=i)
        _, pred = c.predict(adv, batch_size)
        for j in range(n):
            both = ok[:, i] & ok[:, j]
            counts[i, j] = int(both.sum())
            if counts[i, j]:
                matrix[i, j] = float(np.mean(pred[both, j] != y[both]))
    off = matrix[~np.eye(n, dtype=bool)]
    off = off[np.isfinite(off)]
    return {"eps": eps, "nb_iter": int(nb_iter), "eps_iter": min(PGD_STEP_FACTOR * eps / nb_iter, eps),
            "matrix": _nan_to_none(matrix), "counts": counts.tolist(),
            "mean_off_diagonal": float(off.mean()) if off.size else None,
            "definition": "matrix[i][j] = fraction of examples misclassified by member j after PGD "
                          "on member i's CE, over examples both i and j classify correctly clean"}


WHITEBOX_OBJECTIVES = {"member_mean_ce": -1, "prediction_ce": -2}


def whitebox_check(ensemble, x: np.ndarray, y: np.ndarray, eps_list: Sequence[float],
                   nb_iter: int = 40, batch_size: int = 100, seed: int = 0,
                   masking_ratio: float = MASKING_RATIO) -> dict:
    """Accuracy of the ensemble under white-box PGD on itself, with two objectives.

    PGD: random start, ``nb_iter`` steps of ``2.5 eps / nb_iter``, on (a) the average member CE
    (``adversarial_accuracy``; the paper's attack objective) and (b) the CE of the ensemble's
    prediction, -log mean_i softmax_i (``adversarial_accuracy_prediction_ce``). Misaligned member
    gradients can cancel in (a), so (b) is the stronger check for diverse ensembles;
    ``worst_case_accuracy`` is the lower of the two per eps. Diversity training claims black-box
    robustness only: a worst-case white-box accuracy >= ``masking_ratio`` * clean accuracy at ANY
    eps flags ``gradient_masking_suspected`` (plus a ``warning``); a gap of more than 0.2 between
    the objectives adds an ``objective_warning`` (the average-CE attack is being masked).
    """
    eps_list = sorted(check_eps(e, "white-box eps") for e in eps_list)
    c = _compiled(ensemble)
    pred, _ = c.predict(x, batch_size)
    clean = float(np.mean(pred == y))
    acc = {name: {} for name in WHITEBOX_OBJECTIVES}
    for e in eps_list:
        fn = _pgd_fn(c.logits_fn, e, nb_iter, x.shape[1:])
        for name, code in WHITEBOX_OBJECTIVES.items():
            adv = _attack_all(fn, x, y, batch_size, seed, member=code)
            p, _ = c.predict(adv, batch_size)
            acc[name][f"{e:g}"] = float(np.mean(p == y))
    worst = {k: min(acc[n][k] for n in acc) for k in acc["member_mean_ce"]}
    flagged = [k for k, v in worst.items() if clean > 0 and v >= masking_ratio * clean]
    gaps = {k: acc["member_mean_ce"][k] - acc["prediction_ce"][k] for k in worst}
    out = {"clean_accuracy": clean, "adversarial_accuracy": acc["member_mean_ce"],
           "adversarial_accuracy_prediction_ce": acc["prediction_ce"],
           "worst_case_accuracy": worst, "objective_gap": gaps, "nb_iter": int(nb_iter),
           "step_factor": PGD_STEP_FACTOR, "masking_ratio": masking_ratio,
           "gradient_masking_suspected": bool(flagged), "masking_eps": flagged}
    if flagged:
        out["warning"] = (f"WARNING: white-box PGD (worst of both objectives) at eps={', '.join(flagged)} "
                          f"leaves accuracy {', '.join(f'{worst[k]:.3f}' for k in flagged)} >= "
                          f"{masking_ratio:g} x clean accuracy {clean:.3f}; diversity training only "
                          f"claims black-box robustness, so gradient masking is suspected.")
    big = [k for k, g in gaps.items() if g > 0.2]
    if big:
        weak = ", ".join(f"{acc['member_mean_ce'][k]:.3f}" for k in big)
        strong = ", ".join(f"{acc['prediction_ce'][k]:.3f}" for k in big)
        out["objective_warning"] = (
            f"PGD on the average member CE is much weaker than PGD on the ensemble prediction's CE "
            f"at eps={', '.join(big)} (accuracy {weak} vs {strong}): the members' misaligned "
            f"gradients cancel in the averaged loss, masking that objective.")
    return out


def _nan_to_none(a) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


# ----------------------------------------------------------------------------------------------
# Plots (Agg backend, PNG).

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_coherence_hist(values: Mapping[str, np.ndarray], path: str, title: str = "") -> str:
    """Overlaid coherence histograms (Fig 4), one per ensemble label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-1.0, 1.0, 41)
    for label, v in values.items():
        ax.hist(np.asarray(v), bins=bins, alpha=0.5, label=f"{label} (median {np.median(v):.2f})")
    ax.set_xlabel("Coherence (max pairwise cosine of member input gradients, Eq 7)")
    ax.set_ylabel("Number of test examples")
    ax.set_title(title or "Distribution of coherence values")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_gaas(gaas: Mapping[str, dict], path: str, title: str = "") -> str:
    """Fig 5: P(all k orthogonal directions adversarial) vs k, one panel per eps, one line per
    ensemble. ``gaas`` maps label -> :func:`gaas_analysis` output."""
    plt = _plt()
    eps_keys = []
    for res in gaas.values():
        for e in res["results"]:
            if e not in eps_keys:
                eps_keys.append(e)
    n = max(len(eps_keys), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4 * n, 7), 3.8), squeeze=False)
    for ax, e in zip(axes[0], eps_keys):
        for label, res in gaas.items():
            per_k = res["results"].get(e, {})
            ks = sorted(int(k) for k in per_k)
            ax.plot(ks, [per_k[str(k)]["p_all"] for k in ks], marker="o", label=label)
            ax.set_xticks(ks)
        ax.set_xlabel("k (orthogonal directions)")
        ax.set_ylabel("P(all k directions adversarial)")
        ax.set_title(f"eps = {e}")
        ax.set_ylim(-0.03, 1.03)
        ax.legend()
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title or "Gradient aligned adversarial subspace (GAAS)",
                                         width=int(16 * max(4 * n, 7)))))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_transfer(matrix, label: str, path: str, eps: Optional[float] = None) -> str:
    """Heat map of a member-to-member transferability matrix."""
    plt = _plt()
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], float)
    n = m.shape[0]
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 + 0.9 * n), max(3.8, 1.4 + 0.9 * n)))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(n):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if m[i, j] < 0.5 else "black", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("Evaluated on member j")
    ax.set_ylabel("Crafted on member i")
    ax.set_title(f"{label}: member-to-member transfer\nsuccess rate" +
                 (f" (PGD, eps={eps:g})" if eps is not None else ""), fontsize=10)
    fig.colorbar(im, ax=ax, label="success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label)


# ----------------------------------------------------------------------------------------------
# Validation and the whole run.

def parse_ensembles(spec) -> Dict[str, str]:
    """``"T_Base=runs/base,T_Div=runs/div"`` (or a list / dict) -> ordered {label: dir}."""
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        items = []
        for p in parts:
            p = p.strip()
            if not p:
                continue
            if "=" not in p:
                raise AnalysisError(f"--ensembles entry {p!r} is not LABEL=DIR (e.g. "
                                    f"--ensembles=T_Base=runs/base,T_Div=runs/div).")
            label, path = p.split("=", 1)
            items.append((label.strip(), path.strip()))
    if not items:
        raise AnalysisError("No ensembles given: pass --ensembles=LABEL=DIR[,LABEL=DIR...].")
    out = {}
    for label, path in items:
        if not label:
            raise AnalysisError(f"Empty label for ensemble dir {path!r}; use LABEL=DIR.")
        if label in out:
            raise AnalysisError(f"Duplicate ensemble label {label!r}; labels must be unique.")
        out[label] = path
    return out


def check_analyses(analyses) -> list:
    if isinstance(analyses, str):
        analyses = [a.strip() for a in analyses.split(",") if a.strip()]
    bad = [a for a in analyses if a not in ANALYSES]
    if bad or not analyses:
        raise AnalysisError(f"Unknown analysis {bad}; valid: {', '.join(ANALYSES)}.")
    return list(dict.fromkeys(analyses))


def _to_list(v, cast):
    if v is None:
        return None
    if isinstance(v, str):
        return [cast(s.strip()) for s in v.split(",") if s.strip()]
    if isinstance(v, (int, float)):
        return [cast(v)]
    return [cast(s) for s in v]


def load_targets(ensembles: Mapping[str, object], dataset: str,
                 precision: str = "float32") -> Dict[str, object]:
    """Resolves {label: dir or ensemble object}; every dir is checked before any is loaded.

    ``precision``: what the loaded exports compute in (default float32: the cosines behind
    coherence and GAAS sit near 0, where bfloat16's 8-bit mantissa would change what is measured).
    """
    from tf_divtrain import data as data_lib
    from tf_divtrain import export as export_lib

    shape, classes, _ = data_lib.DATASETS[dataset]
    for label, t in ensembles.items():
        if isinstance(t, str):
            try:
                export_lib.find_export(t)
            except FileNotFoundError as e:
                raise AnalysisError(f"Ensemble {label!r}: {e}") from None
    out = {}
    for label, t in ensembles.items():
        if isinstance(t, str):
            ens = export_lib.load_ensemble(t, precision=precision)
            meta = ens.metadata
            if meta.get("dataset") != dataset:
                raise AnalysisError(
                    f"Ensemble {label!r} ({t}) was trained on {meta.get('dataset')!r} but "
                    f"--dataset={dataset}; pass --dataset={meta.get('dataset')} or an ensemble "
                    f"trained on {dataset}.")
            if tuple(meta.get("input_shape", ())) != tuple(shape) or int(meta.get("num_classes", -1)) != classes:
                raise AnalysisError(
                    f"Ensemble {label!r} ({t}) expects input_shape {meta.get('input_shape')} / "
                    f"{meta.get('num_classes')} classes, but {dataset} has {list(shape)} / {classes}.")
            out[label] = ens
        else:
            out[label] = t
    return out


def run_analysis(ensembles: Mapping[str, object], dataset: str, out_dir: str,
                 data_dir: Optional[str] = None, num_examples: int = 500,
                 analyses: Iterable[str] = ANALYSES, gaas_k: Optional[Sequence[int]] = None,
                 gaas_eps: Optional[Sequence[float]] = None, transfer_eps: Optional[float] = None,
                 transfer_iters: int = 20, whitebox_eps: Optional[Sequence[float]] = None,
                 whitebox_iters: int = 40, batch_size: int = 100, seed: int = 0,
                 gaas_blocks: str = "balanced", gaas_num_examples: int = 0,
                 transfer_num_examples: int = 0, whitebox_num_examples: int = 0,
                 x: Optional[np.ndarray] = None,
                 y: Optional[np.ndarray] = None, log: Callable[[str], None] = print,
                 precision: str = "float32") -> dict:
    """Runs the chosen analyses on every ensemble and writes ``out_dir``/analysis.json + PNGs.

    ``ensembles``: {label: training out_dir / saved_model dir / ensemble object}. Test data: the
    first ``num_examples`` test images of ``dataset`` (or ``x``, ``y`` if given); GAAS, the
    transfer matrix and the white-box check use only the first ``gaas_num_examples`` /
    ``transfer_num_examples`` / ``whitebox_num_examples`` of them (0 = all; the white-box subset
    defaults to the transfer one). All inputs are validated before any heavy work. Returns the
    dict written to analysis.json.
    """
    from tf_divtrain import data as data_lib

    try:
        data_lib.check_dataset_name(dataset)
    except ValueError as e:
        raise AnalysisError(str(e)) from None
    analyses = check_analyses(analyses)
    if isinstance(ensembles, str) or not isinstance(ensembles, Mapping):
        ensembles = parse_ensembles(ensembles)
    gaas_k = _to_list(gaas_k, int) or list(DEFAULT_GAAS_K)
    gaas_k = [check_gaas_k(k) for k in gaas_k]
    gaas_eps = [check_eps(e, "GAAS eps") for e in (_to_list(gaas_eps, float) or DEFAULT_GAAS_EPS[dataset])]
    whitebox_eps = [check_eps(e, "white-box eps")
                    for e in (_to_list(whitebox_eps, float) or DEFAULT_ATTACK_EPS[dataset])]
    transfer_eps = check_eps(transfer_eps if transfer_eps is not None else DEFAULT_ATTACK_EPS[dataset][-1],
                             "transfer eps")
    if gaas_blocks not in BLOCK_MODES:
        raise AnalysisError(f"Unknown GAAS block mode {gaas_blocks!r}; valid: {', '.join(BLOCK_MODES)}.")
    if num_examples < 1 or batch_size < 1 or transfer_iters < 1 or whitebox_iters < 1:
        raise AnalysisError("num_examples, batch_size, transfer_iters and whitebox_iters must be >= 1.")
    if min(gaas_num_examples, transfer_num_examples, whitebox_num_examples) < 0:
        raise AnalysisError("gaas/transfer/whitebox_num_examples must be >= 0 (0 = num_examples).")
    whitebox_num_examples = whitebox_num_examples or transfer_num_examples
    n_sub = {"gaas": gaas_num_examples or num_examples,
             "transfer": transfer_num_examples or num_examples,
             "whitebox": whitebox_num_examples or num_examples}
    d = int(np.prod(data_lib.DATASETS[dataset][0]))
    if max(gaas_k) > d:
        raise AnalysisError(f"GAAS k={max(gaas_k)} exceeds the input dimension {d} of {dataset}.")
    targets = load_targets(ensembles, dataset, precision)
    if "coherence" in analyses:
        small = [lbl for lbl, t in targets.items() if num_members(t) < 2]
        if small:
            raise AnalysisError(f"Coherence needs >= 2 members; {small} have fewer. Drop "
                                f"'coherence' from --analyses or use larger ensembles.")
    if x is None:
        ds = data_lib.load_dataset(dataset, data_dir, test_size=num_examples)
        x, y = ds.x_test, ds.y_test
    else:
        x, y = np.asarray(x, np.float32)[:num_examples], np.asarray(y, np.int64)[:num_examples]
    os.makedirs(out_dir, exist_ok=True)

    n_sub = {a: min(n, len(x)) for a, n in n_sub.items()}
    report = {"dataset": dataset, "num_examples": int(len(x)), "seed": int(seed), "precision": precision,
              "analyses": analyses,
              "subset_sizes": {"coherence": int(len(x)), **{a: int(n) for a, n in n_sub.items()}},
              "settings": {"gaas_k": gaas_k, "gaas_eps": gaas_eps, "gaas_blocks": gaas_blocks,
                           "transfer_eps": transfer_eps, "transfer_iters": int(transfer_iters),
                           "whitebox_eps": whitebox_eps, "whitebox_iters": int(whitebox_iters),
                           "pgd_step": f"{PGD_STEP_FACTOR:g} * eps / iters, random start",
                           "batch_size": int(batch_size)},
              "ensembles": {}, "files": {}, "warnings": []}
    coh_values, gaas_res = {}, {}
    for label, ens in targets.items():
        c = _compiled(ens)
        pred, mem = c.predict(x, batch_size)
        entry = {"source": ensembles[label] if isinstance(ensembles[label], str) else type(ens).__name__,
                 "num_members": c.n, "clean_accuracy": float(np.mean(pred == y)),
                 "member_clean_accuracy": [float(v) for v in np.mean(mem == y[:, None], 0)]}
        if "coherence" in analyses:
            v = coherence_values(ens, x, y, batch_size)
            coh_values[label] = v
            entry["coherence"] = summarize(v)
            log(f"[{label}] coherence: mean {v.mean():.3f}, median {np.median(v):.3f}")
        if "gaas" in analyses:
            m = n_sub["gaas"]
            gaas_res[label] = gaas_analysis(ens, x[:m], y[:m], gaas_k, gaas_eps, batch_size,
                                            gaas_blocks)
            entry["gaas"] = gaas_res[label]
            for e, per_k in gaas_res[label]["results"].items():
                log(f"[{label}] GAAS eps={e}: " + ", ".join(
                    f"k={k}: p_all={r['p_all']:.3f}" for k, r in per_k.items()))
        if "transfer" in analyses:
            m = n_sub["transfer"]
            tm = transfer_matrix(ens, x[:m], y[:m], transfer_eps, transfer_iters, batch_size, seed)
            entry["transfer"] = tm
            path = os.path.join(out_dir, f"transfer_{safe_label(label)}.png")
            plot_transfer(tm["matrix"], label, path, transfer_eps)
            report["files"][f"transfer_{label}"] = path
            log(f"[{label}] transfer eps={transfer_eps:g}: mean off-diagonal success "
                f"{tm['mean_off_diagonal']}")
        if "whitebox" in analyses:
            m = n_sub["whitebox"]
            wb = whitebox_check(ens, x[:m], y[:m], whitebox_eps, whitebox_iters, batch_size, seed)
            entry["whitebox"] = wb
            log(f"[{label}] white-box PGD-{whitebox_iters}: clean {wb['clean_accuracy']:.3f}, " +
                ", ".join(f"eps={e}: {a:.3f} (prediction CE: "
                          f"{wb['adversarial_accuracy_prediction_ce'][e]:.3f})"
                          for e, a in wb["adversarial_accuracy"].items()))
            for key in ("warning", "objective_warning"):
                if key in wb:
                    report["warnings"].append(f"[{label}] {wb[key]}")
                    log(f"[{label}] {wb[key]}")
        report["ensembles"][label] = entry
    if coh_values:
        path = plot_coherence_hist(coh_values, os.path.join(out_dir, "coherence_hist.png"),
                                   f"Coherence of member input gradients ({dataset})")
        report["files"]["coherence_hist"] = path
    if gaas_res:
        path = plot_gaas(gaas_res, os.path.join(out_dir, "gaas.png"),
                         f"GAAS ({dataset}): probability of k orthogonal adversarial directions")
        report["files"]["gaas"] = path
        report["gaas_definition"] = GAAS_DEFINITION
    report["gradient_masking_suspected"] = any(
        e.get("whitebox", {}).get("gradient_masking_suspected", False)
        for e in report["ensembles"].values())
    path = os.path.join(out_dir, "analysis.json")
    report["files"]["analysis_json"] = path
    report = _json_safe(report)
    io_utils.atomic_write_json(path, report, indent=2, allow_nan=False)
    return report


def _json_safe(o):
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively."""
    if isinstance(o, Mapping):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return _json_safe(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o

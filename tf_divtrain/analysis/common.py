"""Shared pieces of the analyses: defaults (the paper's epsilons), the error type, ensemble
plumbing (per-member input gradients of any EnsembleLike, compiled once per ensemble), summaries,
and the L-inf PGD used by the transfer matrix and the white-box check."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tf_divtrain import batching
from tf_divtrain import gal
from tf_divtrain import inference
from tf_divtrain import paper


ANALYSES = ("coherence", "gaas", "transfer", "whitebox")
DEFAULT_GAAS_K = (4, 16, 36, 64)
DEFAULT_GAAS_EPS = paper.GAAS_EPS  # Fig 5 (CIFAR-10); 0.1/0.2/0.3 for MNIST-like data
DEFAULT_ATTACK_EPS = paper.TABLE2_EPS  # transfer / white-box: Table 2's small / large eps
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
# Ensemble plumbing.

def num_members(ensemble) -> int:
    if hasattr(ensemble, "members"):
        return len(ensemble.members)
    return int(ensemble.size)


def _logits_fn(ensemble) -> Callable:
    return ensemble.member_logits if hasattr(ensemble, "member_logits") else ensemble


def member_input_gradients(logits_fn: Callable, x, labels, num_members: int,
                           loss_fn: Optional[Callable] = None):
    """Per-member input gradients for ANY ``logits_fn(x) -> [B, N, C]``: ``[B, N, D]``.

    The batch is tiled N times (copy i = rows i*B..(i+1)*B) and only member i's CE is taken from
    copy i, so the gradient of the summed loss w.r.t. copy i is exactly grad_x CE_i(x, y) (one
    forward + one backward pass on an N*B batch). Equal to
    :func:`tf_divtrain.gal.member_input_gradients` for keras members (tested). ``loss_fn(labels,
    member_logits [B, N, C]) -> [B, N]`` replaces CE (e.g. :func:`tf_divtrain.gal.logit_margin_loss`).
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
        if loss_fn is None:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.tile(labels[None], [n, 1]), logits=own)
        else:
            ce = loss_fn(labels, tf.transpose(own, [1, 0, 2]))  # [B, N]
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
            """grad_x CE_i with gal.measured_cross_entropy (direction exact at any confidence)."""
            if keras_members is not None:  # the training module's function itself
                grads, _, _ = gal.member_input_gradients(keras_members, x, y, training=False,
                                                         loss_fn=gal.measured_cross_entropy)
                return grads
            return member_input_gradients(self.logits_fn, x, y, self.n, gal.measured_cross_entropy)

        @tf.function(reduce_retracing=True, autograph=False)
        def mean_ce_grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                lg = self.logits_fn(x)
                loss = tf.reduce_sum(tf.reduce_mean(gal.member_cross_entropy(lg, y), axis=1))
            return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO), lg

        @tf.function(reduce_retracing=True, autograph=False)
        def member_margin_grads(x, y):
            """Input gradients of each member's negative logit margin (gal.logit_margin_loss)."""
            if keras_members is not None:
                grads, _, _ = gal.member_input_gradients(keras_members, x, y, training=False,
                                                         loss_fn=gal.logit_margin_loss)
                return grads
            return member_input_gradients(self.logits_fn, x, y, self.n, gal.logit_margin_loss)

        self.logits, self.member_grads, self.mean_ce_grad = logits, member_grads, mean_ce_grad
        self.member_margin_grads = member_margin_grads

    def predict(self, x, batch_size: int):
        """(ensemble predictions [B], member predictions [B, N]) as numpy (``inference.predict``
        with this ensemble's compiled logits)."""
        return inference.predict(self.ensemble, x, batch_size, fn=self.logits)


_COMPILED: Dict[int, _Compiled] = {}


def _compiled(ensemble) -> _Compiled:
    c = _COMPILED.get(id(ensemble))
    if c is None or c.ensemble is not ensemble:
        c = _COMPILED[id(ensemble)] = _Compiled(ensemble)
    return c


def predictions(ensemble, x, batch_size: int = 500):
    """(ensemble predictions [B], member predictions [B, N]) as numpy (``inference.predict``),
    compiled once per ensemble."""
    return _compiled(ensemble).predict(x, batch_size)


def summarize(values) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(med),
            "q25": float(q25), "q75": float(q75), "min": float(v.min()), "max": float(v.max())}


def check_eps(eps, what: str = "eps") -> float:
    """The package's one ε check (``attacks.check_eps``: a number in [0, 1], the pixel scale), with
    the analysis' error type and the flag's name."""
    from tf_divtrain.attacks.core import check_eps as attack_check_eps

    try:
        return attack_check_eps(eps)
    except ValueError as e:
        raise AnalysisError(f"{what}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Attacks: transferability inside an ensemble, white-box check.

def ensemble_log_prediction(member_logits):
    """log of the ensemble's prediction, log mean_i softmax(Z_i): [B, N, C] -> [B, C] (stable)."""
    n = tf.cast(tf.shape(member_logits)[1], member_logits.dtype)
    return tf.reduce_logsumexp(tf.nn.log_softmax(member_logits, -1), axis=1) - tf.math.log(n)


def _pgd_fn(logits_fn, eps: float, nb_iter: int, image_shape, members_only: bool = False):
    """Compiled ``(x, y, seed[2], member) -> x_adv``: attacks.pgd with random start and step
    ``2.5 eps / nb_iter``. ``member >= 0`` attacks only that member's CE (logits
    ``[:, member:member+1]``); ``-1`` the whole ensemble's average member CE (the paper's attack
    objective); ``-2`` the CE of the ensemble's *prediction*, -log mean_i softmax_i(x)_y
    (:func:`~tf_divtrain.attacks.prediction_ce`). One trace; ``members_only`` traces only the
    member branch (a third of the tracing) for callers that never pass a negative ``member``.
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

        def attack(fn, loss="ce"):
            return attacks.pgd(fn, x, y, eps, eps_iter, nb_iter, rand_init=True, seed=seed,
                               loss=loss)
        if members_only:
            return attack(member_fn)
        return tf.cond(member >= 0, lambda: attack(member_fn),
                       lambda: tf.cond(member == -1, lambda: attack(ensemble_fn),
                                       lambda: attack(ensemble_fn, "prediction_ce")))
    return run


def _attack_all(fn, x, y, batch_size: int, seed: int, member: int = -1) -> np.ndarray:
    return batching.map_batches(
        lambda xb, yb, b: fn(xb, yb, tf.constant([seed, b], tf.int64), tf.constant(member, tf.int32)),
        x, y, batch_size=batch_size, with_index=True)


def _nan_to_none(a) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]

"""ADP: Adaptive Diversity Promoting regulariser (Pang et al., ICML 2019, arXiv:1901.08846).

Paper, §3 ("Adaptive diversity promoting"), for K members with softmax predictions F^k(x):

* ensemble prediction  F = (1/K) sum_k F^k, ensemble entropy  H(F) = -sum_c F_c log F_c;
* non-maximal predictions: F^k_{\\y} is F^k with the true label's entry removed; M~_{\\y} is the
  (C-1) x K matrix of the L2-normalised F^k_{\\y};
* ensemble diversity  ED = det(M~_{\\y}^T M~_{\\y})  (volume spanned by the non-maximal predictions);
* regulariser  L_ADP = -alpha * H(F) - beta * log(ED + delta), trained jointly with the ensemble
  cross-entropy  L_ECE = sum_k CE(F^k, y):   loss = L_ECE + L_ADP.

(Equation numbers: the paper text was not available offline; the formulas above are transcribed from
the authors' code, ``utils.py`` of P2333/Adaptive-Diversity-Promoting: ``Entropy``,
``Ensemble_Entropy``, ``log_det`` and ``Loss_withEE_DPP``, and match the paper's §3 definitions.)

Defaults (``ADPConfig``): alpha = 2, beta = 0.5 -- the paper's ADP_{2,0.5} setting, the values in the
authors' README commands (``--lamda=2.0 --log_det_lamda=0.5``; note: in their code ``lamda`` is alpha
and ``log_det_lamda`` is beta, the flag defaults are 1.0 / 0.5) and the defaults of the PyTorch ports
in DVERGE (arguments.py) and TRS (script_train.py). ``log_offset = 1e-20`` is added inside the
entropy's log and ``det_offset = delta = 1e-6`` is added to the diagonal of the Gram matrix before the
log-det, both as in the authors' code (``log_offset``, ``det_offset``).

Deviations from the authors' code (same value in exact arithmetic):

* CE is computed from logits (``sparse_softmax_cross_entropy_with_logits``) instead of Keras'
  categorical cross-entropy on clipped probabilities.
* The normalised non-maximal vectors are computed from the logits: p_{\\y}/||p_{\\y}|| equals
  softmax(z_{\\y})/||softmax(z_{\\y})|| (the softmax normaliser and the true-label term cancel), which
  never underflows. The probability form in their code divides 0/0 -> NaN once a member's true-label
  logit leads the others by more than ~100 in float32. ``log_det_nonmax(probs, ...)`` keeps their form.
* log det uses ``slogdet`` (LU) instead of a Cholesky-based ``logdet``: the Gram matrix + delta*I is
  positive definite mathematically, but in float32 a near-singular one can fail Cholesky.
* Everything is per example ([B]); their code averages over the batch inside the loss. The caller's
  sum / global-batch reduction gives the same batch mean.
* Their ``--plus-adv`` (PGD adversarial training next to ADP, DVERGE port only) is not part of this
  objective; the trainer can add adversarial examples to the batch.
"""

from __future__ import annotations


import tensorflow as tf

from tf_divtrain import gal as gal_lib
from tf_divtrain.methods import _common

from tf_divtrain.methods.configs import DET_OFFSET, LOG_OFFSET, ADPConfig  # noqa: F401


def ensemble_entropy(probs, log_offset: float = LOG_OFFSET):
    """H(F) of the mean prediction: probs [B, N, C] -> [B] (authors' ``Ensemble_Entropy``)."""
    mean = tf.reduce_mean(probs, axis=1)
    return -tf.reduce_sum(mean * tf.math.log(mean + log_offset), axis=-1)


def _nonmax_indices(labels, num_classes: int):
    """[B, C-1] class indices without the true label (ascending)."""
    labels = tf.cast(labels, tf.int32)[:, None]
    k = tf.range(num_classes - 1, dtype=tf.int32)[None, :]
    return k + tf.cast(k >= labels, tf.int32)


def nonmax_predictions(values, labels):
    """Drops the true label's entry: [B, N, C] (probabilities or logits), labels [B] -> [B, N, C-1]."""
    c = values.shape[-1]
    if c is None or c < 3:
        raise ValueError(f"ADP needs a static number of classes >= 3 (C-1 >= 2 non-maximal entries), got {c}.")
    return tf.gather(values, _nonmax_indices(labels, c), axis=2, batch_dims=1)


def _log_det_gram(unit, det_offset: float):
    """log det(U U^T + delta I) for unit rows U [B, N, K] -> [B]."""
    gram = tf.linalg.matmul(unit, unit, transpose_b=True)
    n = gram.shape[-1] or tf.shape(gram)[-1]
    gram = gram + det_offset * tf.eye(n, dtype=gram.dtype)[None]
    return tf.linalg.slogdet(gram)[1]


def log_det_nonmax(probs, labels, det_offset: float = DET_OFFSET):
    """log(ED + delta) from probabilities, exactly the authors' ``log_det``: the true label's entry is
    removed, each member's remaining vector is L2-normalised (no epsilon, as theirs: NaN if all
    non-maximal probabilities underflow to 0), and log det(M~^T M~ + delta I) is returned per example.
    probs [B, N, C], labels [B] -> [B]."""
    rest = nonmax_predictions(probs, labels)
    unit = rest / tf.norm(rest, axis=-1, keepdims=True)
    return _log_det_gram(unit, det_offset)


def log_det_nonmax_from_logits(logits, labels, det_offset: float = DET_OFFSET):
    """Same value as ``log_det_nonmax(softmax(logits), ...)``, computed without underflow:
    p_{\\y} / ||p_{\\y}|| = softmax(z_{\\y}) / ||softmax(z_{\\y})|| (whose norm is >= 1/sqrt(C-1)).
    logits [B, N, C], labels [B] -> [B]."""
    rest = tf.nn.softmax(nonmax_predictions(logits, labels), axis=-1)
    unit = rest / tf.norm(rest, axis=-1, keepdims=True)
    return _log_det_gram(unit, det_offset)


def objective(members, x, y, training: bool = True, alpha: float = 2.0, beta: float = 0.5,
              log_offset: float = LOG_OFFSET, det_offset: float = DET_OFFSET) -> dict:
    """ADP per example: loss = sum_k CE_k - alpha * H(F) - beta * log(ED + delta).

    Returns ``loss`` [B], ``ce`` [B, N], ``logits`` [B, N, C] (float32 or float64), ``adp_entropy`` [B]
    (H(F)) and ``adp_logdet`` [B] (log(ED + delta)). CE is summed over members, as in the authors' code
    (alpha/beta are calibrated against that sum), not averaged as in the GAL objective.
    """
    ADPConfig(alpha, beta, log_offset, det_offset).validate()
    _common.check_members(members, "ADP")
    logits = _common.member_logits(members, x, training)
    ce = gal_lib.member_cross_entropy(logits, y)
    entropy = ensemble_entropy(tf.nn.softmax(logits, axis=-1), log_offset)
    logdet = log_det_nonmax_from_logits(logits, y, det_offset)
    loss = tf.reduce_sum(ce, axis=-1) - alpha * entropy - beta * logdet
    return {"loss": loss, "ce": ce, "logits": logits, "adp_entropy": entropy, "adp_logdet": logdet}

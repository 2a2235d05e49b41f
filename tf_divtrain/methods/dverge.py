"""DVERGE: Diversifying Vulnerabilities for Enhanced Robust Generation of Ensembles
(Yang et al., NeurIPS 2020, arXiv:2009.14720).

Paper, §3: member j's non-robust features at layer l are *distilled* into an image that looks like the
source x_s but has the layer-l features of another image x:
  x'_{f_j^l}(x, x_s) = argmin_z ||f_j^l(z) - f_j^l(x)||_2^2   s.t.  ||z - x_s||_inf <= eps,
and member i is trained to classify every other member's distilled images with the SOURCE label:
  min_{f_i}  E  sum_{j != i} CE(f_i(x'_{f_j^l}(x, x_s)), y_s)   (+ their optional ``--plus-adv`` term).
(The paper text was not available offline, so no equation numbers; everything below is transcribed
from the authors' code, zjysteven/DVERGE: distillation.py ``Linf_distillation``,
train/train_dverge.py ``DVERGE_Trainer.train``, arguments.py ``dverge_train_args``.)

Defaults (``DVERGEConfig``, their arguments.py, CIFAR-10 / ResNet-20): eps = 0.07, step size 0.007,
10 steps, no random start, momentum on (each step's feature gradient is L1-normalised per example and
accumulated with mu = 1, then a sign step: their default since ``--distill-no-momentum`` is the
off-switch), the distillation layer drawn uniformly at random at the start of every epoch
(``--distill-fixed-layer`` off), the target batch x is a second, independently shuffled training batch
(their ``DistillationLoader``), "vanilla" DVERGE: no ``--plus-adv`` term. The TRS authors' re-run on
MNIST (their script_train.py) used eps = 0.35, step 0.035, 10 steps. DVERGE also starts from a
pre-trained baseline ensemble by default (``--start-from baseline``) and uses one SGD optimiser per
member; both are trainer choices. Member i's loss only depends on member i's weights (distilled
images carry no gradient), so one optimiser over the summed loss equals per-member optimisers.

Deviations from their code:

* Layers. Their ResNet ``get_features(x, layer)`` counts 1..depth over "pre-ReLU" features (first
  conv+BN, each block's conv1+BN, each block's residual sum, the final fc). Here a layer is a 1-based
  index into the Keras model's ``layers`` without its InputLayer (``feature_layers``), and
  ``distill_layer_choices`` lists the analogue of their candidates: every layer whose output feeds an
  activation layer (pre-activation features), every layer with a fused non-linear activation (its
  post-activation output: Keras cannot tap inside a layer), and the model output. For this project's
  ResNet-20 that gives exactly 20 candidates in their order; for Conv-3 it gives the 3 convolutions and
  2 dense layers.
* Features use the members in inference mode (their members were in ``train()`` mode during
  distillation: BatchNorm used batch statistics and updated its moving averages at every PGD step);
  here distillation has no side effects and each example's distillation is independent of the batch.
* Distance: per-example SUM of squared differences instead of ``MSELoss`` (mean over the batch and
  all elements); the sign step and the per-example L1 normalisation make the two identical.
* ``include_clean`` adds CE(f_i(x_clean), y) to member i's loss as ``coeff * cross + clean``, the form
  of their ``--plus-adv`` (where x_clean is PGD adversarial examples of member i: pass a list of N
  tensors for per-member inputs). ``coeff`` also scales the cross term without ``include_clean``
  (their code ignores it then; identical at the default 1.0).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tf_divtrain import gal as gal_lib
from tf_divtrain.methods import _common
from tf_divtrain.methods.configs import DVERGEConfig, check_number  # noqa: F401
from tf_divtrain.methods.features import (  # noqa: F401  (the layer API, also importable from here)
    distill_layer_choices, feature_layers, feature_model)


def feature_distance(features, target_features):
    """Per-example squared L2 distance of flattened features: [B, ...] x2 -> [B]."""
    diff = features - target_features
    return tf.reduce_sum(tf.reshape(tf.square(diff), [tf.shape(diff)[0], -1]), axis=-1)


# ----------------------------------------------------------------------------------------------
# Feature distillation (their Linf_distillation).

def distill(feature_fn, x, x_target, eps: float, steps: int, step_size: float, seed=None,
            rand_start: bool = False, momentum: bool = True, mu: float = 1.0):
    """PGD (L_inf) from x minimising ||f(x') - f(x_target)||^2 within the eps-ball of x and [0, 1].

    Each step: g = grad_x' of the feature distance; with ``momentum`` g is divided by its per-example
    L1 norm (min 1e-12) and accumulated, acc = mu * acc + g; x' <- x' - step_size * sign(acc), then
    projected onto the eps-ball of x and clipped to [0, 1]. ``rand_start`` starts from
    clip(x + U(-eps, eps), 0, 1) drawn from ``seed`` ([2] ints). Returns x' without gradient.
    """
    owner = "dverge.distill"
    check_number(owner, "eps", eps, low=0.0, high=1.0)
    check_number(owner, "steps", steps, low=1, integer=True)
    check_number(owner, "step_size", step_size, low=0.0, high=1.0, low_open=True)
    check_number(owner, "mu", mu, low=0.0)
    x = tf.stop_gradient(tf.convert_to_tensor(x))
    target = tf.stop_gradient(feature_fn(tf.convert_to_tensor(x_target, x.dtype)))
    if rand_start:
        if seed is None:
            raise ValueError(f"{owner}: rand_start=True needs seed (shape [2] int).")
        x_adv = x + tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps, dtype=x.dtype)
    else:
        x_adv = x
    x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    lo, hi = x - eps, x + eps
    reduce_axes = list(range(1, len(x.shape)))

    def step(i, x_adv, acc):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            dist = tf.reduce_sum(feature_distance(feature_fn(x_adv), target))
        grad = tape.gradient(dist, x_adv)
        if momentum:
            l1 = tf.reduce_sum(tf.abs(grad), axis=reduce_axes, keepdims=True)
            acc = mu * acc + grad / tf.maximum(l1, 1e-12)
            grad = acc
        x_adv = tf.clip_by_value(tf.clip_by_value(x_adv - step_size * tf.sign(grad), lo, hi), 0.0, 1.0)
        return i + 1, x_adv, acc

    _, x_adv, _ = tf.while_loop(lambda i, *_: i < steps, step, (tf.constant(0), x_adv, tf.zeros_like(x)))
    return tf.stop_gradient(x_adv)


def distill_members(members: Sequence, x, x_target, layer: int, eps: float, steps: int,
                    step_size: float, seed=None, rand_start: bool = False, momentum: bool = True,
                    mu: float = 1.0) -> list:
    """x'_j = distill(f_j^layer, x, x_target) for every member j (same layer index for all, as in
    their code). With ``rand_start`` member j's start is drawn from seed + [0, j]."""
    out = []
    for j, m in enumerate(members):
        seed_j = None if seed is None else tf.cast(seed, tf.int64) + tf.constant([0, j], tf.int64)
        out.append(distill(feature_model(m, layer), x, x_target, eps, steps, step_size, seed_j,
                           rand_start, momentum, mu))
    return out


# ----------------------------------------------------------------------------------------------
# Cross-training objective (their DVERGE_Trainer.train).

def objective(members, x_distilled: Sequence, y, training: bool = True, include_clean: bool = False,
              x_clean=None, coeff: float = 1.0) -> dict:
    """DVERGE per example: loss = sum_i [coeff * sum_{j != i} CE(f_i(x'_j), y)  (+ CE(f_i(x_clean_i), y))].

    ``x_distilled``: N tensors [B, ...], x'_j distilled on member j from the source batch x (labels y).
    ``x_clean``: one tensor for all members or a list of N (per-member inputs, e.g. their plus-adv PGD
    examples); required with ``include_clean``. Without ``include_clean`` it only feeds the reported
    logits (an inference-mode forward outside the loss).

    Returns ``loss`` [B]; ``ce`` [B, N]: member i's cross-training CE sum_{j != i} CE(f_i(x'_j), y);
    ``logits`` [B, N, C]: member logits on x_clean if given, else member i's logits averaged over the
    x'_j (j != i) it was trained on; ``dverge_cross_ce`` [B]: mean CE over the N(N-1) pairs; and with
    x_clean ``clean_ce`` [B, N].
    """
    DVERGEConfig(include_clean=include_clean, coeff=coeff).validate()
    n = _common.check_members(members, "DVERGE")
    if len(x_distilled) != n:
        raise ValueError(f"dverge: x_distilled must hold one batch per member ({n}), got {len(x_distilled)}.")
    if include_clean and x_clean is None:
        raise ValueError("dverge: include_clean=True needs x_clean.")
    cross_ce, cross_logits = [], []
    for i, m in enumerate(members):
        logits_i = [_common.at_least_float32(m(x_distilled[j], training=training))
                    for j in range(n) if j != i]
        cross_logits.append(tf.add_n(logits_i) / float(n - 1))
        cross_ce.append(gal_lib.member_cross_entropy(tf.stack(logits_i, axis=1), y))  # [B, N-1]
    cross_ce = tf.stack(cross_ce, axis=1)  # [B, N, N-1]
    ce = tf.reduce_sum(cross_ce, axis=-1)
    loss = coeff * tf.reduce_sum(ce, axis=-1)
    out = {"ce": ce, "dverge_cross_ce": tf.reduce_mean(cross_ce, axis=[1, 2])}
    if x_clean is not None:
        inputs = list(x_clean) if isinstance(x_clean, (list, tuple)) else [x_clean] * n
        if len(inputs) != n:
            raise ValueError(f"dverge: x_clean as a list must hold one batch per member ({n}), got {len(inputs)}.")
        mode = training if include_clean else False
        logits = tf.stack([_common.at_least_float32(m(xi, training=mode)) for m, xi in zip(members, inputs)], 1)
        clean_ce = gal_lib.member_cross_entropy(logits, y)
        if include_clean:
            loss = loss + tf.reduce_sum(clean_ce, axis=-1)
        out["clean_ce"] = clean_ce
    else:
        logits = tf.stack(cross_logits, axis=1)
    out.update(loss=loss, logits=logits)
    return out

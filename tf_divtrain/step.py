"""The one implementation of a Diversity Training step (Eq 9, nested GradientTapes).

Both the CLI's ``training.Trainer`` and ``diversity.DiversityEnsemble.train_step`` call
:func:`apply_step`, so the two paths cannot drift apart.

**Objective** (``protocols.Objective``) -- the injection point for training objectives. An
objective is a callable

    objective(members, x, y, training, loss_scale=None) -> dict of per-example tensors

returning at least ``"loss"`` [B] (what is minimised, averaged over the global batch),
``"ce"`` [B, N] (per-member cross-entropy) and ``"logits"`` [B, N, C] (float32 member logits of
the same forward pass); optionally ``"gal"`` and ``"coherence"`` [B]. ``loss_scale`` is passed
only under a mixed_float16 ``LossScaleOptimizer`` (objectives with an inner input-gradient tape
scale that inner loss by it, see ``gal.member_input_gradients``). New training methods (ADP,
TRS, DVERGE, ...) are new objectives; nothing needs monkeypatching.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_divtrain import gal as gal_lib
from tf_divtrain import models as models_lib
from tf_divtrain.protocols import Objective


@keras.saving.register_keras_serializable(package="tf_divtrain")
class CrossEntropyObjective:
    """Mean member cross-entropy: Eq 9 with lambda = 0 (baseline and ens_adv modes).

    One plain forward pass, no input gradients."""

    def __call__(self, members, x, y, training: bool = True, loss_scale=None):
        del loss_scale  # no inner tape
        logits = models_lib.member_logits(members, x, training=training)
        ce = gal_lib.member_cross_entropy(logits, y)
        return {"loss": tf.reduce_mean(ce, axis=-1), "ce": ce, "logits": logits}

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_divtrain")
class DiversityObjective:
    """Eq 9 per example: mean member CE + ``gal_lambda`` * GAL (Eq 8).

    One forward pass inside the inner tape serves both the CE term and the input gradients
    (``gal.member_input_gradients``). Coherence (Eq 7, a metric only) is measured scale-free on
    the same gradients (``gal.scale_free_coherence``): 0 where no member pair has a direction,
    flagged by ``coherence_vanishing`` (1.0), so means over the batch divide by the defined count.
    Differentiating the returned loss with an outer tape is the paper's double backprop.
    """

    def __init__(self, gal_lambda: float = 0.5):
        self.gal_lambda = float(gal_lambda)

    def __call__(self, members, x, y, training: bool = True, loss_scale=None):
        grads, logits, ce = gal_lib.member_input_gradients(members, x, y, training=training,
                                                           loss_scale=loss_scale)
        pairs = gal_lib.pair_cosines(grads)
        gal = gal_lib.gal_from_pairs(pairs)
        coh = gal_lib.scale_free_coherence(tf.stop_gradient(grads))  # a metric: scale-free Eq 7
        vanishing = tf.math.is_nan(coh)
        return {"loss": gal_lib.div_loss_per_example(ce, gal, self.gal_lambda), "ce": ce,
                "gal": gal, "coherence": tf.where(vanishing, tf.zeros_like(coh), coh),
                "coherence_vanishing": tf.cast(vanishing, tf.float32), "logits": logits}

    def get_config(self) -> dict:
        return {"gal_lambda": self.gal_lambda}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def default_objective(gal_lambda: float) -> Objective:
    """Eq 9 with GAL when ``gal_lambda > 0``, else plain mean CE (no double backprop)."""
    return DiversityObjective(gal_lambda) if gal_lambda > 0 else CrossEntropyObjective()


def call_objective(objective: Objective, members, x, y, training: bool = True,
                   loss_scale=None) -> dict:
    """Calls ``objective``; ``loss_scale`` only when there is one (custom objectives may omit it)."""
    if loss_scale is None:
        out = objective(members, x, y, training=training)
    else:
        out = objective(members, x, y, training=training, loss_scale=loss_scale)
    missing = {"loss", "ce", "logits"} - set(out)
    if missing:
        raise ValueError(f"objective {objective!r} returned keys {sorted(out)}; it must return at "
                         f"least 'loss' [B], 'ce' [B, N] and 'logits' [B, N, C] (missing "
                         f"{sorted(missing)}).")
    return out


def apply_step(members, variables, optimizer, objective: Objective, x, y, global_batch_size,
               check_finite: bool = False) -> dict:
    """One optimisation step of ``objective`` on this replica's rows; returns its per-example dict.

    The outer tape differentiates ``sum(loss) / global_batch_size`` (so replicas of a
    ``tf.distribute`` strategy, whose gradients are summed, compute one big batch's gradient).
    A Keras ``LossScaleOptimizer`` scales the outer loss and hands its dynamic scale to the inner
    tape; it unscales (and skips non-finite steps) itself. ``check_finite`` adds an in-graph
    assertion that stops before the update when the loss is NaN/Inf (Keras ``fit``; the CLI loop
    has its own guard).
    """
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    scale = optimizer.dynamic_scale if scaled else None
    with tf.GradientTape() as tape:
        out = call_objective(objective, members, x, y, training=True, loss_scale=scale)
        loss = tf.reduce_sum(out["loss"]) / tf.cast(global_batch_size, out["loss"].dtype)
        if check_finite:
            loss = tf.debugging.check_numerics(
                loss, "Diversity Training: non-finite loss (Eq 9); the weights were not updated. "
                "Lower the learning rate or gal_lambda, or check the inputs for NaN/Inf")
        if scaled:
            loss = optimizer.scale_loss(loss)
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))  # LossScaleOptimizer unscales
    return out


def correct_predictions(logits, y):
    """1.0 where the ensemble (argmax of the average softmax) is right: [B, N, C], [B] -> [B]."""
    pred = tf.argmax(models_lib.ensemble_probabilities(logits), -1)
    return tf.cast(tf.equal(pred, tf.cast(y, tf.int64)), tf.float32)


def metric_sums(out: dict, y) -> dict:
    """Per-replica sums of the step's metrics (the CLI reduces them across replicas).

    Besides loss, ce, member_ce and train_acc, every other floating-point entry of rank 1 ([B]) of
    the objective's dict is summed as a metric under its own name (``gal``, ``coherence``, and the
    methods' ``adp_entropy``, ``trs_cos``, ``dverge_cross_ce``...); other ranks are skipped."""
    sums = {"loss": tf.reduce_sum(out["loss"]), "ce": tf.reduce_sum(tf.reduce_mean(out["ce"], -1)),
            "member_ce": tf.reduce_sum(out["ce"], axis=0),
            "train_acc": tf.reduce_sum(correct_predictions(out["logits"], y)),
            "count": tf.cast(tf.shape(y)[0], tf.float32)}
    for k, v in out.items():
        if k in sums or k == "logits" or not isinstance(v, (tf.Tensor, tf.Variable)):
            continue
        if v.shape.rank == 1 and v.dtype.is_floating:
            sums[k] = tf.reduce_sum(tf.cast(v, tf.float32))
    return sums


def global_batch_size(x) -> tf.Tensor:
    """This replica's rows times the number of replicas (Keras ``fit`` under a strategy)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.shape(x)[0] * replicas


__all__ = ["Objective", "CrossEntropyObjective", "DiversityObjective", "default_objective",
           "call_objective", "apply_step", "metric_sums", "correct_predictions", "global_batch_size"]

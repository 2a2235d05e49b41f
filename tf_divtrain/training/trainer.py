"""The ``Trainer``: ensemble, optimizer, ``tf.distribute`` strategy and the compiled training step
(the step's maths: :mod:`tf_divtrain.step`), and the inference-mode helpers of a run's metrics."""

from __future__ import annotations

from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_divtrain import batching
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import ens_adv as ens_adv_lib
from tf_divtrain import gal as gal_lib
from tf_divtrain import models as models_lib
from tf_divtrain import modes as modes_lib
from tf_divtrain import step as step_lib

from tf_divtrain.training.config import (
    ADV_MODES, MODES, TrainConfig, TrainingError, batch_parts)
# ----------------------------------------------------------------------------------------------
# The maths of one step (pure functions of tensors; no Python state).

def per_example_objective(members, x, y, mode: str, gal_lambda: float, training: bool = True,
                          loss_scale=None):
    """Forward (+ inner input-gradient tape for GAL modes) -> dict of per-example tensors.

    ``loss`` [B] is Eq 9 (GAL modes) or the mean member CE (other modes); ``ce`` [B, N];
    ``gal`` / ``coherence`` [B] only in GAL modes (computed from the same pair cosines).
    ``loss_scale``: the inner input-gradient loss scale (mixed_float16; see ``tf_divtrain.precision``).
    The objectives themselves live in :mod:`tf_divtrain.step`.
    """
    return step_lib.call_objective(objective_for_mode(mode, gal_lambda), members, x, y,
                                   training=training, loss_scale=loss_scale)


def objective_for_mode(mode: str, gal_lambda: float = 0.5, method_config=None, *, seed: int = 0,
                       step: Optional[tf.Variable] = None) -> step_lib.Objective:
    """The step objective of a training mode: Eq 9 in GAL modes; a ``MethodObjective`` in the method
    modes (``method_config``: the method's config, default its authors' defaults; ``seed`` and the
    global-step variable ``step`` seed its per-step randomness); mean member CE otherwise."""
    return modes_lib.objective(mode, gal_lambda, method_config, seed=seed, step=step)


# The strategy factory and the chief test live in tf_divtrain.distribute (shared with evaluate).
make_strategy, is_chief = distribute_lib.make_strategy, distribute_lib.is_chief  # the pre-issue-23 names


class Trainer:
    """Owns the ensemble, optimizer, strategy and the compiled step for one run."""

    def __init__(self, cfg: TrainConfig, input_shape, num_classes: int,
                 static_model: Optional[Callable] = None,
                 objective: Optional[step_lib.Objective] = None):
        self.cfg = cfg
        self.strategy = make_strategy(cfg.strategy)
        if cfg.batch_size % self.strategy.num_replicas_in_sync:
            raise TrainingError(f"batch_size={cfg.batch_size} does not split evenly across "
                                f"{self.strategy.num_replicas_in_sync} replicas; use a multiple.")
        self.sources = MODES[cfg.mode]
        self.sizes = batch_parts(cfg.mode, cfg.batch_size, cfg.adv_share)
        self.static_model = static_model
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        with self.strategy.scope():
            self.ensemble = models_lib.build_ensemble(cfg.members, input_shape, num_classes,
                                                      cfg.ensemble_size, cfg.seed, cfg.precision)
            inner = keras.optimizers.Adam(cfg.learning_rate)
            # mixed_float16: dynamic loss scaling (the inner GAL tape uses the same scale).
            self.optimizer = (keras.optimizers.LossScaleOptimizer(inner)
                              if cfg.precision == "mixed_float16" else inner)
            self.optimizer.build(self.ensemble.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # The step's objective (tf_divtrain.step): the mode's unless one is injected. Made under
            # the strategy so a method's schedule variables are mirrored like the weights.
            self.objective = objective or objective_for_mode(
                cfg.mode, cfg.gal_lambda, cfg.method_config(), seed=cfg.seed, step=self.step)
        # The checkpoint holds the float32 variables and the *inner* optimizer, so it has the same
        # structure in every precision (a run's weights restore under another precision).
        self.checkpoint = tf.train.Checkpoint(members=self.ensemble.members,
                                              optimizer=inner, step=self.step)
        # autograph=False: the step has no tensor-dependent Python control flow (loops are
        # tf.while_loop or Python ranges), as Keras 3 compiles its own train_step; converting the
        # Keras internals it calls took about a quarter of a 4-step run (issue 24).
        self._train_step = tf.function(self._distributed_step, jit_compile=cfg.jit_compile,
                                       autograph=False)
        self.begin_epoch(0, max(1, cfg.epochs))  # epoch 0's schedule until the loop says otherwise

    # -- per-epoch schedules (method modes) ----------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> dict:
        """Sets the objective's schedule for ``epoch`` (0-based) of ``epochs``: TRS's PGD radius (a
        variable the compiled step reads) and DVERGE's distillation layer (the step is retraced once
        per distinct layer). A no-op for the other modes. ``train()`` calls it at the start of every
        epoch (through the loop's EpochCallback hook), including the one a resumed run starts in.
        Returns what was set (for logs/tests)."""
        begin = getattr(self.objective, "begin_epoch", None)
        return begin(epoch, epochs, self.ensemble.members) if begin is not None else {}

    def _trace_key(self):
        """Python state the compiled step's graph depends on (DVERGE's layer), else None."""
        return getattr(self.objective, "trace_key", None)

    # -- one replica's step -------------------------------------------------------------------
    def _replica_step(self, x, y):
        cfg = self.cfg
        if cfg.mode in ADV_MODES:
            x = self._craft_adv_rows(x, y)
        out = step_lib.apply_step(self.ensemble.members, self.ensemble.trainable_variables,
                                  self.optimizer, self.objective, x, y, cfg.batch_size)
        return step_lib.metric_sums(out, y)

    def _craft_adv_rows(self, x, y):
        """Replaces this replica's D_adv rows by FGSM examples on the static model.

        The D_adv part is the last ``sizes[-1]`` rows of the *global* batch; replica r holds global
        rows [r * b, (r + 1) * b) (contiguous split, see ``distribute``), so the rows and their
        epsilons (drawn per global D_adv row from (step, seed)) are the same under any strategy.
        """
        cfg = self.cfg
        n_adv = self.sizes[-1]
        local = tf.shape(x)[0]
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        adv_index = replica * local + tf.range(local) - (cfg.batch_size - n_adv)
        rows = tf.where(adv_index >= 0)
        eps = ens_adv_lib.random_eps(n_adv, cfg.resolved_adv_eps(), tf.stack([self.step, tf.constant(cfg.seed, tf.int64)]))
        adv = ens_adv_lib.fgsm_per_example(self.static_model, tf.gather_nd(x, rows), tf.gather_nd(y, rows),
                                           tf.gather(eps, tf.gather_nd(adv_index, rows)),
                                           labels=cfg.adv_labels)
        return tf.tensor_scatter_nd_update(x, rows, adv)

    def _distributed_step(self, x, y, trace_key=None):
        del trace_key  # only keys the tf.function trace (see _trace_key)
        per_replica = self.strategy.run(self._replica_step, args=(x, y))
        sums = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}
        self.step.assign_add(1)
        count = sums.pop("count")
        out = {k: v / count for k, v in sums.items()}
        if "coherence_vanishing" in sums:  # coherence averages the examples with a defined pair
            out["coherence"] = sums["coherence"] / tf.maximum(count - sums["coherence_vanishing"], 1.0)
        return out

    def train_step(self, x, y):
        """One optimisation step on a global batch (already distributed or plain tensors)."""
        return self._train_step(x, y, self._trace_key())

    def distribute(self, dataset: tf.data.Dataset):
        """Global batches -> per-replica batches; replica r always gets global rows [r*b, (r+1)*b).

        Every worker builds the same seeded global stream; under multi_worker each input pipeline
        keeps the slices of its own replicas (no tf.data auto-sharding, which would hand workers
        different *batches* rather than parts of one global batch).
        """
        if self.cfg.strategy == "default":
            return dataset
        if self.cfg.strategy == "mirrored":
            return self.strategy.experimental_distribute_dataset(dataset)
        b = self.cfg.batch_size // self.strategy.num_replicas_in_sync

        def per_pipeline(ctx: tf.distribute.InputContext):
            local = self.strategy.num_replicas_in_sync // ctx.num_input_pipelines
            first = ctx.input_pipeline_id * local

            def slices(x, y):
                idx = [(first + k) * b for k in range(local)]
                return tf.data.Dataset.from_tensor_slices(
                    (tf.stack([x[i:i + b] for i in idx]), tf.stack([y[i:i + b] for i in idx])))

            ds = dataset.flat_map(slices)
            opts = tf.data.Options()
            opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(opts)

        return self.strategy.distribute_datasets_from_function(per_pipeline)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, logs, metrics and the export."""
        return is_chief(self.strategy)


# ----------------------------------------------------------------------------------------------
# Gradient statistics (inference mode; clean accuracy is ``inference.accuracies``).

def gradient_statistics(members, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> dict:
    """Input-gradient statistics, inference mode: mean GAL (Eq 8, the training loss' formula),
    and coherence (Eq 7) / mean pairwise cosine measured scale-free over the examples with a
    defined pair (``gal.scale_free_pair_cosines`` of ``gal.measured_cross_entropy`` gradients),
    with the vanishing counts (issue 27)."""
    if len(members) < 2:
        return {}

    @tf.function(autograph=False)
    def stats(xb, yb):
        grads, _, _ = gal_lib.member_input_gradients(members, xb, yb, training=False)
        measured, _, _ = gal_lib.member_input_gradients(members, xb, yb, training=False,
                                                        loss_fn=gal_lib.measured_cross_entropy)
        cos, defined = gal_lib.scale_free_pair_cosines(measured)
        zero = tf.logical_not(gal_lib.direction_defined(measured))
        return (gal_lib.gal_from_pairs(gal_lib.pair_cosines(grads)),
                gal_lib.max_over_defined(cos, defined), gal_lib.mean_over_defined(cos, defined),
                tf.reduce_sum(tf.cast(zero, tf.int32), -1))

    gal_v, coh, cos, zero = batching.map_batches(stats, x, y, batch_size=batch_size)
    ok = np.isfinite(coh)
    return {"gal": float(gal_v.mean()),
            "coherence": float(coh[ok].mean()) if ok.any() else None,
            "mean_cosine": float(cos[ok].mean()) if ok.any() else None,
            "examples": int(len(coh)), "vanishing_examples": int((~ok).sum()),
            "member_gradients_without_direction": int(zero.sum())}



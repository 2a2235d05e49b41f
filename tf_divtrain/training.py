"""Training runs (paper §3-4): TrainConfig (one validation), Trainer (ensemble, optimizer, strategy,
the compiled step) and ``train()``, which composes small named pieces -- data, seeding, out_dir
guard, checkpoint restore, the loop with its hooks (``tf_divtrain.loop``), final metrics, export.
The maths of the step is in ``tf_divtrain.step`` (shared with ``DiversityEnsemble``).

Modes and what one batch of ``B`` distinct training images holds (parts of equal size, the
remainder going to the first part, in this order; see ``data.train_stream``):

* ``baseline``     -- {D'}: CE only (Eq 9 with lambda = 0).
* ``div``          -- {D', D_noise}: Eq 9, CE + lambda * GAL.
* ``ens_adv``      -- {D', D_adv}: CE only. D_adv = FGSM on a static pre-trained model, each example
  with its own epsilon ~ |N(0, sigma = adv_eps / 2)| truncated at 2 sigma (so eps <= adv_eps).
* ``ens_adv_div``  -- {D', D_noise, D_adv}: Eq 9 (GAL on the whole batch).
* ``adp`` / ``trs`` / ``dverge`` -- {D'}: the peer methods of issue 14 (``tf_divtrain.methods``:
  ADP, Pang et al. 2019; TRS, Yang et al. 2021; DVERGE, Yang et al. 2020) with their authors'
  defaults, overridable with ``method_params="name=value,..."``. The authors train on clean images
  (plain for MNIST; shifted/cropped and flipped for CIFAR-10); D' is this package's clean augmented
  source, so every mode sees the same images. Per-epoch schedules (TRS's PGD radius, DVERGE's
  layer) are set by ``Trainer.begin_epoch``; see ``tf_divtrain.methods.objective`` for DVERGE's
  target batch (a seeded derangement of the same batch) and the stateless seeds. DVERGE trains from
  scratch like every other mode (the authors start from a pre-trained baseline by default).

D_adv follows Kurakin et al. 2016 / Tramer et al. 2018 where the paper (§4.2) is silent:
``adv_labels="predicted"`` crafts the FGSM with the static model's own predicted labels, not the
true ones (true labels leak into one-step perturbations: "label leaking", Kurakin et al. §4.2), and
``adv_share`` (default 0.5) of every batch is D_adv in both ens_adv modes, so clean and adversarial
losses weigh equally (Tramer et al.'s 0.5 / 0.5) and T_Ens and T_Ens+Div see the same D_adv per
step; the rest of the batch is split equally between the other sources (``batch_parts``).

CE and GAL are computed on every example of the batch. BatchNorm (ResNets): members run in
training mode during the step -- the single forward pass inside the inner tape uses batch
statistics and updates the moving averages once per step (the CE term reuses that forward, so
there is no second update); evaluation, attacks and the export use inference mode.

Losses are per-example sums divided by the *global* batch size, so N replicas of a
``tf.distribute`` strategy compute exactly the gradient of one big batch.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import keras
from absl import logging
import numpy as np
import tensorflow as tf

from tf_divtrain import batching
from tf_divtrain import checkpoints as checkpoints_lib
from tf_divtrain import data as data_lib
from tf_divtrain import ens_adv as ens_adv_lib
from tf_divtrain import export as export_lib
from tf_divtrain import gal as gal_lib
from tf_divtrain import io_utils
from tf_divtrain import locking
from tf_divtrain import loop as loop_lib
from tf_divtrain import methods as methods_lib
from tf_divtrain import models as models_lib
from tf_divtrain import modes as modes_lib
from tf_divtrain import precision as precision_lib
from tf_divtrain import step as step_lib

# Views of the one mode registry (tf_divtrain.modes) under the names the trainer uses.
MODES = {name: m.sources for name, m in modes_lib.MODES.items()}
GAL_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.gal)
METHOD_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.method)
ADV_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.adv)
ADV_LABELS = ens_adv_lib.ADV_LABELS
STRATEGIES = ("default", "mirrored", "multi_worker")
# mixed_float16: a non-finite loss makes LossScaleOptimizer skip the step and halve its scale; this
# many in a row (scale / 2^25) means the run itself diverged, and the NaN guard stops it.
MAX_SKIPPED_FP16_STEPS = 25
TrainingError = loop_lib.TrainingError  # a run cannot start or continue (config mismatch, NaN, ...)

def _resumable(default):
    """A config field that may differ when a run is resumed (it does not change the result)."""
    return dataclasses.field(default=default, metadata={"resumable": True})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the CLI fills it from absl flags)."""

    # Fields marked resumable may change between a run and its resumption (they do not change
    # the result); every other field must match the run's config.json (see prepare_out_dir).
    dataset: str = "mnist"
    data_dir: Optional[str] = _resumable(None)
    model: str = "conv3"
    ensemble_size: int = 5
    mode: str = "baseline"
    gal_lambda: float = 0.5
    epochs: int = _resumable(10)
    max_steps: int = _resumable(0)  # 0 = no cap
    batch_size: int = 128
    learning_rate: float = 1e-3
    noise_eps: Optional[float] = None  # None = dataset default (0.3 MNIST, 0.09 CIFAR-10)
    adv_eps: Optional[float] = None  # None = dataset default (same as noise_eps)
    static_model: str = ""
    seed: int = 0
    out_dir: str = _resumable("runs/default")
    train_examples: int = 0  # 0 = all
    validation_examples: int = 0
    eval_examples: int = _resumable(1000)  # test subset for metrics.json (0 = whole test split)
    strategy: str = _resumable("default")
    jit_compile: bool = _resumable(False)
    log_every: int = _resumable(20)
    checkpoint_every: int = _resumable(100)
    fresh: bool = _resumable(False)
    progress: bool = _resumable(True)
    download: bool = _resumable(False)
    deterministic: bool = _resumable(True)  # tf.config.experimental.enable_op_determinism
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (tf_divtrain.precision)
    adv_labels: str = "predicted"  # D_adv FGSM labels: the static model's prediction, or "true"
    adv_share: float = 0.5  # fraction of each batch that is D_adv in the ens_adv modes
    # Modes adp / trs / dverge: "name=value,..." overriding the method's defaults (see
    # tf_divtrain.methods). TRS's radius schedule spans --epochs (a resumed run with other
    # --epochs follows the new schedule from its current epoch on).
    method_params: str = ""

    def validate(self) -> "TrainConfig":
        data_lib.check_dataset_name(self.dataset)
        models_lib.member_names(self.model, self.ensemble_size)
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; valid: {', '.join(MODES)}.")
        n = len(models_lib.member_names(self.model, self.ensemble_size))
        if self.mode in GAL_MODES and n < 2:
            raise ValueError(f"mode={self.mode} needs an ensemble of at least 2 members (GAL compares "
                             f"pairs), got {n}; raise --ensemble_size.")
        self._validate_method()
        if self.gal_lambda < 0:
            raise ValueError(f"gal_lambda must be >= 0, got {self.gal_lambda}.")
        for name in ("noise_eps", "adv_eps"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} is outside [0, 1] (epsilons are in [0, 1] pixel scale).")
        if self.mode in ADV_MODES and not self.static_model:
            raise ValueError(f"mode={self.mode} needs --static_model: the out_dir (or saved_model dir)"
                             f" of a pre-trained model of the same architecture.")
        precision_lib.check_precision(self.precision)
        if self.adv_labels not in ADV_LABELS:
            raise ValueError(f"Unknown adv_labels {self.adv_labels!r}; valid: {', '.join(ADV_LABELS)} "
                             f"('predicted' avoids label leaking, Kurakin et al. 2016).")
        if not 0.0 < self.adv_share < 1.0:
            raise ValueError(f"adv_share={self.adv_share} must be in (0, 1): the fraction of each batch "
                             f"that is D_adv in the ens_adv modes (default 0.5).")
        if self.batch_size < len(MODES[self.mode]):
            raise ValueError(f"batch_size={self.batch_size} is too small for mode={self.mode}.")
        batch_parts(self.mode, self.batch_size, self.adv_share)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}.")
        if self.strategy == "multi_worker" and not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy=multi_worker reads the cluster from the TF_CONFIG environment "
                             "variable, which is not set (see README, 'Several machines').")
        if self.learning_rate <= 0 or self.epochs < 0 or self.max_steps < 0:
            raise ValueError("learning_rate must be > 0; epochs and max_steps must be >= 0.")
        return self

    def _validate_method(self) -> None:
        if self.mode not in METHOD_MODES:
            if self.method_params:
                raise ValueError(f"method_params={self.method_params!r} is only for the modes "
                                 f"{', '.join(METHOD_MODES)}; mode={self.mode} takes none (drop "
                                 f"--method_params, or pick one of those modes).")
            return
        names = models_lib.member_names(self.model, self.ensemble_size)
        if len(names) < 2:
            raise ValueError(f"mode={self.mode} needs an ensemble of at least 2 members (its diversity "
                             f"term compares members), got {len(names)}; raise --ensemble_size.")
        if self.mode == "dverge" and len(set(names)) > 1:
            raise ValueError(f"mode=dverge distils every member at the same layer index, which needs "
                             f"members of one architecture (as in the authors' code); got "
                             f"{', '.join(names)}. Use --model=<one name> with --ensemble_size.")
        self.method_config()
        refused = modes_lib.check_precision(self.mode, self.precision)
        if refused:
            raise ValueError(refused)

    def method_config(self):
        """The validated hyper-parameters of a method mode (defaults + ``method_params``), else None."""
        if self.mode not in METHOD_MODES:
            return None
        return methods_lib.config_from_string(self.mode, self.method_params)

    @property
    def members(self):
        return models_lib.member_names(self.model, self.ensemble_size)

    def resolved_noise_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.noise_eps is None else self.noise_eps

    def resolved_adv_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.adv_eps is None else self.adv_eps

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


RESUMABLE_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))


def batch_parts(mode: str, batch_size: int, adv_share: float = 0.5) -> list:
    """Sizes of the contiguous parts of a batch, in ``MODES[mode]`` order.

    Without D_adv: equal parts (remainder to the first). With D_adv: the last part holds
    ``round(adv_share * B)`` examples and the others split the rest equally -- so ens_adv and
    ens_adv_div craft the same number of D_adv examples per step.
    """
    sources = MODES[mode]
    if "adv" not in sources:
        return data_lib.split_sizes(batch_size, len(sources))
    n_adv = int(round(adv_share * batch_size))
    rest = batch_size - n_adv
    if n_adv < 1 or rest < len(sources) - 1:
        raise ValueError(f"batch_size={batch_size} with adv_share={adv_share} leaves {n_adv} D_adv and "
                         f"{rest} other examples for mode={mode}; raise --batch_size.")
    return data_lib.split_sizes(rest, len(sources) - 1) + [n_adv]


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


# D_adv helpers (tf_divtrain.ens_adv), kept under their old names.
random_eps = ens_adv_lib.random_eps
fgsm_random_eps = ens_adv_lib.fgsm_random_eps
fgsm_per_example = ens_adv_lib.fgsm_per_example


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default (one device) | mirrored (local devices) | multi_worker (cluster from TF_CONFIG)."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name != "default":
        raise ValueError(f"Unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}.")
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """The chief: task 'chief', or worker 0 of a cluster without one; every single-process run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


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
        self._train_step = tf.function(self._distributed_step, jit_compile=cfg.jit_compile)
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
# Evaluation helpers (inference mode).

def evaluate_accuracy(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 500,
                      predict_fn: Optional[Callable] = None) -> dict:
    """Clean accuracy of the ensemble (argmax of average softmax) and of each member."""
    logits = predict_member_logits(ensemble, x, batch_size, predict_fn)
    ens_pred = np.argmax(models_lib.ensemble_probabilities(logits).numpy(), -1)
    member_pred = np.argmax(logits, -1)
    return {"ensemble_accuracy": float(np.mean(ens_pred == y)),
            "member_accuracy": [float(np.mean(member_pred[:, i] == y)) for i in range(logits.shape[1])]}


def make_predict_fn(ensemble, input_shape) -> Callable:
    """A compiled inference-mode member-logits function that never retraces (any batch size)."""
    spec = tf.TensorSpec([None] + list(input_shape), tf.float32)
    return tf.function(lambda xb: ensemble.member_logits(xb, training=False), input_signature=[spec])


def predict_member_logits(ensemble, x: np.ndarray, batch_size: int = 500,
                          predict_fn: Optional[Callable] = None) -> np.ndarray:
    fn = predict_fn or make_predict_fn(ensemble, x.shape[1:])
    return batching.map_batches(fn, x, batch_size=batch_size)


def gradient_statistics(members, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> dict:
    """Input-gradient statistics, inference mode: mean GAL (Eq 8, the training loss' formula),
    and coherence (Eq 7) / mean pairwise cosine measured scale-free over the examples with a
    defined pair (``gal.scale_free_pair_cosines`` of ``gal.measured_cross_entropy`` gradients),
    with the vanishing counts (issue 27)."""
    if len(members) < 2:
        return {}

    @tf.function
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


# ----------------------------------------------------------------------------------------------
# A run: config bookkeeping, resume, the loop's hooks, final metrics, export.

_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _config_diff(old: dict, new: dict) -> dict:
    """Non-resumable fields that differ. A field missing from an older config.json counts as its
    default (runs written before the field existed, e.g. method_params, still resume)."""
    keys = (set(old) | set(new)) - set(RESUMABLE_KEYS)
    get_old = lambda k: old.get(k, _FIELD_DEFAULTS.get(k))  # noqa: E731
    return {k: (get_old(k), new.get(k)) for k in sorted(keys) if get_old(k) != new.get(k)}


def prepare_out_dir(cfg: TrainConfig) -> None:
    """Creates out_dir and writes config.json, refusing to mix runs of different configs.

    An existing run with another config is an error unless ``cfg.fresh``; then the old directory
    is moved aside to ``<out_dir>.old-<timestamp>`` (never deleted).
    """
    cfg_path = os.path.join(cfg.out_dir, "config.json")
    if os.path.isfile(cfg_path):
        try:
            old = io_utils.read_json(cfg_path)
        except io_utils.IncompleteFileError:
            if not cfg.fresh:
                raise
            old = {}  # damaged: --fresh moves the whole run aside below
        diff = _config_diff(old, cfg.to_json())
        if diff and not cfg.fresh:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise TrainingError(f"{cfg.out_dir} holds a run with a different config ({lines}). Use "
                                f"another --out_dir, or pass --fresh to move the old run aside.")
        if cfg.fresh:
            backup = f"{cfg.out_dir.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(cfg.out_dir, backup)
            logging.warning("Moved the previous run to %s", backup)
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        io_utils.atomic_write_json(cfg_path, cfg.to_json(), indent=2, sort_keys=True)
    except OSError as e:
        raise TrainingError(f"Cannot write to out_dir {cfg.out_dir!r} ({e}); choose a writable "
                            f"--out_dir.") from e


def load_static_model(path: str, dataset: str, input_shape) -> export_lib.LoadedEnsemble:
    try:
        static = export_lib.load_ensemble(path)
    except FileNotFoundError as e:
        raise TrainingError(f"--static_model: {e}") from e
    problem = export_lib.dataset_mismatch(static.metadata, dataset)
    if problem:
        raise TrainingError(f"--static_model {path} {problem}; pass a static model trained on {dataset}.")
    return static


def seed_everything(cfg: TrainConfig) -> None:
    """Python / NumPy / TF seeds from ``cfg.seed``; op determinism if ``cfg.deterministic``."""
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()


def step_budget(cfg: TrainConfig, num_train: int) -> tuple:
    """(steps per epoch, total steps): ``epochs`` epochs, capped by ``max_steps`` when set."""
    steps_per_epoch = max(1, num_train // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if cfg.epochs else cfg.max_steps
    return steps_per_epoch, total


def checkpoint_manager(cfg: TrainConfig, trainer: Trainer) -> tuple:
    """(CheckpointManager, scratch dir or ""), after restoring the latest checkpoint in out_dir.

    Under multi_worker every worker takes part in a save; only the chief's lands in out_dir, the
    others write to a private scratch dir that is deleted after each save (tf.distribute's
    documented pattern); every worker restores from the chief's checkpoints.
    """
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    scratch = "" if trainer.is_chief else os.path.join(
        cfg.out_dir, ".worker_tmp", f"task_{trainer.strategy.cluster_resolver.task_id}")
    # The newest readable checkpoint; a damaged one is moved aside (tf_divtrain.checkpoints).
    latest = checkpoints_lib.restore_latest(trainer.checkpoint, ckpt_dir, logging.warning,
                                            chief=trainer.is_chief)
    manager = tf.train.CheckpointManager(trainer.checkpoint, scratch or ckpt_dir, max_to_keep=3)
    if latest:
        logging.info("Resumed from %s (step %d)", latest, int(trainer.step.numpy()))
    return manager, scratch


def default_hooks(cfg: TrainConfig, trainer: Trainer, ds, manager, scratch: str, start: int,
                  total: int, schedule_epochs: int) -> list:
    """The CLI's hooks, in order: NaN guard, progress bar, TensorBoard, checkpoints, and the
    objective's per-epoch schedule over ``schedule_epochs`` epochs (``Trainer.begin_epoch``)."""
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    writer = (tf.summary.create_file_writer(os.path.join(cfg.out_dir, "logs")) if trainer.is_chief
              else tf.summary.create_noop_writer())
    x_val = ds.x_val if ds.x_val is not None else ds.x_test[:1000]
    y_val = ds.y_val if ds.y_val is not None else ds.y_test[:1000]
    n_val = min(len(x_val), 500)
    predict_fn = make_predict_fn(trainer.ensemble, ds.input_shape)

    def val_accuracy() -> float:
        return evaluate_accuracy(trainer.ensemble, x_val[:n_val], y_val[:n_val],
                                 predict_fn=predict_fn)["ensemble_accuracy"]

    fp16 = cfg.precision == "mixed_float16"
    return [
        loop_lib.NaNGuard(MAX_SKIPPED_FP16_STEPS if fp16 else 0,
                          lambda: manager.latest_checkpoint or ckpt_dir + " (none yet)"),
        loop_lib.ProgressBar(total, start, cfg.mode, cfg.progress),
        loop_lib.TensorBoardLogger(writer, cfg.log_every, val_accuracy),
        loop_lib.Checkpointer(manager, cfg.checkpoint_every, scratch),
        loop_lib.EpochCallback(lambda epoch: trainer.begin_epoch(epoch, schedule_epochs)),
    ]


def final_metrics(cfg: TrainConfig, trainer: Trainer, final, ds, loop_out: dict) -> dict:
    """metrics.json: clean accuracy and gradient statistics of ``final`` (the float32 weights,
    :func:`float32_ensemble`) on the test subset, the last step's training metrics, and this
    session's timing."""
    n_eval = cfg.eval_examples or len(ds.x_test)
    x_te, y_te = ds.x_test[:n_eval], ds.y_test[:n_eval]
    seconds, seen = loop_out["seconds"], loop_out["images"]
    return {
        "config": cfg.to_json(),
        "steps": int(trainer.step.numpy()),
        "test_examples": int(len(x_te)),
        **evaluate_accuracy(final, x_te, y_te),
        "test_gradient_stats": gradient_statistics(final.members, x_te[:500], y_te[:500]),
        "final_train": {k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
                        for k, v in loop_out["last"].items()},
        "train_seconds_this_session": seconds,
        "images_per_sec_this_session": seen / seconds if seen else None,
    }


def float32_ensemble(cfg: TrainConfig, trainer: Trainer, ds):
    """The trained ensemble in float32 (a float32 copy of the weights under mixed precision):
    evaluation and the export run in float32 whatever the training precision."""
    if cfg.precision == "float32":
        return trainer.ensemble
    return models_lib.clone_ensemble(trainer.ensemble, cfg.members, ds.input_shape, ds.num_classes,
                                     "float32")


def export_run(cfg: TrainConfig, final, ds, steps: int) -> str:
    """SavedModel of ``final`` (the float32 ensemble) in ``<out_dir>/saved_model`` with the run's
    metadata."""
    export_dir = os.path.join(cfg.out_dir, export_lib.SAVED_MODEL_DIR)
    meta = {"dataset": cfg.dataset, "input_shape": list(ds.input_shape), "num_classes": ds.num_classes,
            "models": cfg.members, "mode": cfg.mode, "seed": cfg.seed, "steps": steps,
            "gal_lambda": cfg.gal_lambda, "trained_precision": cfg.precision}
    export_lib.export_ensemble(final, export_dir, meta, overwrite=True)
    return export_dir


def train(cfg: TrainConfig, hooks: Optional[Sequence[loop_lib.Hook]] = None) -> dict:
    """Runs (or resumes) a training run; returns the metrics written to metrics.json.

    ``hooks``: extra :class:`tf_divtrain.loop.Hook` objects, run after the built-in ones
    (:func:`default_hooks`) after every step. The chief holds ``<out_dir>/.lock`` throughout
    (:mod:`tf_divtrain.locking`): a second run on the same out_dir refuses to start.
    """
    with locking.RunLock() as run_lock:
        return _train(cfg, hooks, run_lock)


def _train(cfg: TrainConfig, hooks, run_lock) -> dict:
    cfg.validate()
    extra_hooks = loop_lib.as_hooks(hooks)
    t_start = time.time()
    ds = data_lib.load_dataset(cfg.dataset, cfg.data_dir, validation_size=cfg.validation_examples,
                               train_size=cfg.train_examples or None, download=cfg.download)
    static = None
    if cfg.mode in ADV_MODES:
        static = load_static_model(cfg.static_model, cfg.dataset, ds.input_shape)
    seed_everything(cfg)
    trainer = Trainer(cfg, ds.input_shape, ds.num_classes, static)
    if trainer.is_chief:
        run_lock.acquire(cfg.out_dir)
        prepare_out_dir(cfg)
        run_lock.acquire(cfg.out_dir)  # again if --fresh moved the locked directory aside
    manager, scratch = checkpoint_manager(cfg, trainer)
    steps_per_epoch, total = step_budget(cfg, len(ds.x_train))
    start = int(trainer.step.numpy())
    stream = data_lib.train_stream(ds.x_train, ds.y_train, cfg.dataset, cfg.batch_size,
                                   trainer.sources, cfg.resolved_noise_eps(), cfg.seed, start)
    schedule_epochs = max(cfg.epochs, -(-total // steps_per_epoch))  # Trainer.begin_epoch's span
    hook_list = (default_hooks(cfg, trainer, ds, manager, scratch, start, total, schedule_epochs)
                 + extra_hooks)
    loop_out = loop_lib.run_loop(trainer.train_step, iter(trainer.distribute(stream)), start, total,
                                 hook_list, cfg.batch_size, steps_per_epoch)
    if not trainer.is_chief:
        return {"steps": int(trainer.step.numpy()), "chief": False}
    if not loop_out["last"]:  # resumed after the last step: that step's metrics, as recorded
        loop_out["last"] = checkpoints_lib.last_metrics(os.path.join(cfg.out_dir, "checkpoints"),
                                                        int(trainer.step.numpy()))
    final = float32_ensemble(cfg, trainer, ds)
    metrics_out = final_metrics(cfg, trainer, final, ds, loop_out)
    export_run(cfg, final, ds, metrics_out["steps"])
    metrics_out["wall_seconds_this_session"] = time.time() - t_start
    io_utils.atomic_write_json(os.path.join(cfg.out_dir, "metrics.json"), metrics_out, indent=2)
    return metrics_out

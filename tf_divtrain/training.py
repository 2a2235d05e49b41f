"""Training: the train step (nested GradientTapes), the loop, checkpoints and resume (paper §3-4).

Modes and what one batch of ``B`` distinct training images holds (parts of equal size, the
remainder going to the first part, in this order; see ``data.train_stream``):

* ``baseline``     -- {D'}: CE only (Eq 9 with lambda = 0).
* ``div``          -- {D', D_noise}: Eq 9, CE + lambda * GAL.
* ``ens_adv``      -- {D', D_adv}: CE only. D_adv = FGSM on a static pre-trained model, each example
  with its own epsilon ~ |N(0, sigma = adv_eps / 2)| truncated at 2 sigma (so eps <= adv_eps).
* ``ens_adv_div``  -- {D', D_noise, D_adv}: Eq 9 (GAL on the whole batch).

CE and GAL are computed on every example of the batch. BatchNorm (ResNets): members run in
training mode during the step -- the single forward pass inside the inner tape uses batch
statistics and updates the moving averages once per step (the CE term reuses that forward, so
there is no second update); evaluation, attacks and the export use inference mode.

Losses are per-example sums divided by the *global* batch size, so N replicas of a
``tf.distribute`` strategy compute exactly the gradient of one big batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import data as data_lib
from tf_divtrain import export as export_lib
from tf_divtrain import gal as gal_lib
from tf_divtrain import models as models_lib

MODES = {
    "baseline": ("aug",),
    "div": ("aug", "noise"),
    "ens_adv": ("aug", "adv"),
    "ens_adv_div": ("aug", "noise", "adv"),
}
GAL_MODES = ("div", "ens_adv_div")
ADV_MODES = ("ens_adv", "ens_adv_div")

# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_KEYS = ("epochs", "max_steps", "out_dir", "strategy", "jit_compile", "log_every",
                  "checkpoint_every", "data_dir", "fresh", "progress", "eval_examples", "download",
                  "deterministic")


class TrainingError(RuntimeError):
    """A run cannot start or continue (config mismatch, NaN loss, ...)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the CLI fills it from absl flags)."""

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    model: str = "conv3"
    ensemble_size: int = 5
    mode: str = "baseline"
    gal_lambda: float = 0.5
    epochs: int = 10
    max_steps: int = 0  # 0 = no cap
    batch_size: int = 128
    learning_rate: float = 1e-3
    noise_eps: Optional[float] = None  # None = dataset default (0.3 MNIST, 0.09 CIFAR-10)
    adv_eps: Optional[float] = None  # None = dataset default (same as noise_eps)
    static_model: str = ""
    seed: int = 0
    out_dir: str = "runs/default"
    train_examples: int = 0  # 0 = all
    validation_examples: int = 0
    eval_examples: int = 1000  # test subset for metrics.json (0 = whole test split)
    strategy: str = "default"
    jit_compile: bool = False
    log_every: int = 20
    checkpoint_every: int = 100
    fresh: bool = False
    progress: bool = True
    download: bool = False
    deterministic: bool = True  # tf.config.experimental.enable_op_determinism (slower on GPU)

    def validate(self) -> "TrainConfig":
        data_lib.check_dataset_name(self.dataset)
        models_lib.member_names(self.model, self.ensemble_size)
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; valid: {', '.join(MODES)}.")
        n = len(models_lib.member_names(self.model, self.ensemble_size))
        if self.mode in GAL_MODES and n < 2:
            raise ValueError(f"mode={self.mode} needs an ensemble of at least 2 members (GAL compares "
                             f"pairs), got {n}; raise --ensemble_size.")
        if self.gal_lambda < 0:
            raise ValueError(f"gal_lambda must be >= 0, got {self.gal_lambda}.")
        for name in ("noise_eps", "adv_eps"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} is outside [0, 1] (epsilons are in [0, 1] pixel scale).")
        if self.mode in ADV_MODES and not self.static_model:
            raise ValueError(f"mode={self.mode} needs --static_model: the out_dir (or saved_model dir)"
                             f" of a pre-trained model of the same architecture.")
        if self.batch_size < len(MODES[self.mode]):
            raise ValueError(f"batch_size={self.batch_size} is too small for mode={self.mode}.")
        if self.strategy not in ("default", "mirrored"):
            raise ValueError(f"Unknown strategy {self.strategy!r}; valid: default, mirrored.")
        if self.learning_rate <= 0 or self.epochs < 0 or self.max_steps < 0:
            raise ValueError("learning_rate must be > 0; epochs and max_steps must be >= 0.")
        return self

    @property
    def members(self):
        return models_lib.member_names(self.model, self.ensemble_size)

    def resolved_noise_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.noise_eps is None else self.noise_eps

    def resolved_adv_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.adv_eps is None else self.adv_eps

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# The maths of one step (pure functions of tensors; no Python state).

def per_example_objective(members, x, y, mode: str, gal_lambda: float, training: bool = True):
    """Forward (+ inner input-gradient tape for GAL modes) -> dict of per-example tensors.

    ``loss`` [B] is Eq 9 (GAL modes) or the mean member CE (other modes); ``ce`` [B, N];
    ``gal`` / ``coherence`` [B] only in GAL modes (computed from the same pair cosines).
    """
    if mode in GAL_MODES:
        grads, logits, ce = gal_lib.member_input_gradients(members, x, y, training=training)
        pairs = gal_lib.pair_cosines(grads)
        gal = gal_lib.gal_from_pairs(pairs)
        return {"loss": gal_lib.div_loss_per_example(ce, gal, gal_lambda), "ce": ce, "gal": gal,
                "coherence": gal_lib.coherence_from_pairs(pairs), "logits": logits}
    logits = tf.stack([m(x, training=training) for m in members], axis=1)
    ce = gal_lib.member_cross_entropy(logits, y)
    return {"loss": tf.reduce_mean(ce, axis=-1), "ce": ce, "logits": logits}


def fgsm_random_eps(logits_fn: Callable, x, y, max_eps: float, seed):
    """D_adv: FGSM (Eq 2) on ``logits_fn`` (mean member CE), per-example eps ~ |N(0, max_eps/2)|
    truncated at 2 sigma (Kurakin et al. 2016, as in paper §4.2); result clipped to [0, 1]."""
    grad = attacks_lib.input_gradient(logits_fn, attacks_lib.ensemble_ce, x, y)
    eps = tf.abs(tf.random.stateless_truncated_normal(tf.shape(x)[:1], seed, stddev=max_eps / 2.0))
    eps = tf.reshape(eps, [-1, 1, 1, 1])
    return tf.stop_gradient(tf.clip_by_value(x + eps * tf.sign(grad), 0.0, 1.0))


class Trainer:
    """Owns the ensemble, optimizer, strategy and the compiled step for one run."""

    def __init__(self, cfg: TrainConfig, input_shape, num_classes: int,
                 static_model: Optional[Callable] = None):
        self.cfg = cfg
        self.strategy = (tf.distribute.MirroredStrategy() if cfg.strategy == "mirrored"
                         else tf.distribute.get_strategy())
        self.sources = MODES[cfg.mode]
        self.sizes = data_lib.split_sizes(cfg.batch_size, len(self.sources))
        self.static_model = static_model
        with self.strategy.scope():
            self.ensemble = models_lib.build_ensemble(cfg.members, input_shape, num_classes,
                                                      cfg.ensemble_size, cfg.seed)
            self.optimizer = keras.optimizers.Adam(cfg.learning_rate)
            self.optimizer.build(self.ensemble.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(members=self.ensemble.members,
                                              optimizer=self.optimizer, step=self.step)
        self._train_step = tf.function(self._distributed_step, jit_compile=cfg.jit_compile)

    # -- one replica's step -------------------------------------------------------------------
    def _replica_step(self, x, y):
        cfg = self.cfg
        if cfg.mode in ADV_MODES:
            # The adv part is the last part of the batch (see MODES / data.train_stream).
            n_adv = self.sizes[-1]
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.stack([self.step * 1000 + tf.cast(replica, tf.int64), tf.constant(cfg.seed, tf.int64)])
            head, tail = x[:-n_adv], x[-n_adv:]
            tail = fgsm_random_eps(self.static_model, tail, y[-n_adv:], cfg.resolved_adv_eps(), seed)
            x = tf.concat([head, tail], axis=0)
        variables = self.ensemble.trainable_variables
        with tf.GradientTape() as tape:
            out = per_example_objective(self.ensemble.members, x, y, cfg.mode, cfg.gal_lambda)
            loss = tf.reduce_sum(out["loss"]) / float(cfg.batch_size)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        correct = tf.cast(tf.equal(tf.argmax(models_lib.ensemble_probabilities(out["logits"]), -1),
                                   tf.cast(y, tf.int64)), tf.float32)
        sums = {"loss": tf.reduce_sum(out["loss"]), "ce": tf.reduce_sum(tf.reduce_mean(out["ce"], -1)),
                "member_ce": tf.reduce_sum(out["ce"], axis=0), "train_acc": tf.reduce_sum(correct),
                "count": tf.cast(tf.shape(y)[0], tf.float32)}
        if "gal" in out:
            sums["gal"] = tf.reduce_sum(out["gal"])
            sums["coherence"] = tf.reduce_sum(out["coherence"])
        return sums

    def _distributed_step(self, x, y):
        per_replica = self.strategy.run(self._replica_step, args=(x, y))
        sums = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}
        self.step.assign_add(1)
        count = sums.pop("count")
        return {k: v / count for k, v in sums.items()}

    def train_step(self, x, y):
        """One optimisation step on a global batch (already distributed or plain tensors)."""
        return self._train_step(x, y)

    def distribute(self, dataset: tf.data.Dataset):
        if self.cfg.strategy == "default":
            return dataset
        return self.strategy.experimental_distribute_dataset(dataset)


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
    return np.concatenate([fn(tf.constant(x[i:i + batch_size])).numpy()
                           for i in range(0, len(x), batch_size)], axis=0)


def gradient_statistics(members, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> dict:
    """Mean GAL (Eq 8), coherence (Eq 7) and pairwise cosine of input gradients, inference mode."""
    if len(members) < 2:
        return {}

    @tf.function
    def stats(xb, yb):
        grads, _, _ = gal_lib.member_input_gradients(members, xb, yb, training=False)
        pairs = gal_lib.pair_cosines(grads)
        return gal_lib.gal_from_pairs(pairs), gal_lib.coherence_from_pairs(pairs), tf.reduce_mean(pairs, -1)

    out = [stats(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]))
           for i in range(0, len(x), batch_size)]
    gal_v, coh, cos = (np.concatenate([o[k].numpy() for o in out]) for k in range(3))
    return {"gal": float(gal_v.mean()), "coherence": float(coh.mean()), "mean_cosine": float(cos.mean())}


# ----------------------------------------------------------------------------------------------
# The loop: config bookkeeping, resume, checkpoints, TensorBoard, NaN guard, export.

def _config_diff(old: dict, new: dict) -> dict:
    keys = (set(old) | set(new)) - set(RESUMABLE_KEYS)
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def prepare_out_dir(cfg: TrainConfig) -> None:
    """Creates out_dir and writes config.json, refusing to mix runs of different configs.

    An existing run with another config is an error unless ``cfg.fresh``; then the old directory
    is moved aside to ``<out_dir>.old-<timestamp>`` (never deleted).
    """
    cfg_path = os.path.join(cfg.out_dir, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        diff = _config_diff(old, cfg.to_json())
        if diff and not cfg.fresh:
            lines = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise TrainingError(f"{cfg.out_dir} holds a run with a different config ({lines}). Use "
                                f"another --out_dir, or pass --fresh to move the old run aside.")
        if cfg.fresh:
            backup = f"{cfg.out_dir.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(cfg.out_dir, backup)
            print(f"Moved the previous run to {backup}")
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        tmp = cfg_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg.to_json(), f, indent=2, sort_keys=True)
        os.replace(tmp, cfg_path)
    except OSError as e:
        raise TrainingError(f"Cannot write to out_dir {cfg.out_dir!r} ({e}); choose a writable "
                            f"--out_dir.") from e


def load_static_model(path: str, dataset: str, input_shape) -> export_lib.LoadedEnsemble:
    try:
        static = export_lib.load_ensemble(path)
    except FileNotFoundError as e:
        raise TrainingError(f"--static_model: {e}") from e
    if static.dataset != dataset or tuple(static.input_shape) != tuple(input_shape):
        raise TrainingError(f"--static_model {path} was trained on {static.dataset} "
                            f"{static.input_shape}, but this run uses {dataset} {tuple(input_shape)}.")
    return static


def train(cfg: TrainConfig) -> dict:
    """Runs (or resumes) a training run; returns the metrics written to metrics.json."""
    cfg.validate()
    t_start = time.time()
    ds = data_lib.load_dataset(cfg.dataset, cfg.data_dir, validation_size=cfg.validation_examples,
                               train_size=cfg.train_examples or None, download=cfg.download)
    static = None
    if cfg.mode in ADV_MODES:
        static = load_static_model(cfg.static_model, cfg.dataset, ds.input_shape)
    prepare_out_dir(cfg)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    trainer = Trainer(cfg, ds.input_shape, ds.num_classes, static)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    manager = tf.train.CheckpointManager(trainer.checkpoint, ckpt_dir, max_to_keep=3)
    if manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"Resumed from {manager.latest_checkpoint} (step {int(trainer.step.numpy())})")

    steps_per_epoch = max(1, len(ds.x_train) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if cfg.epochs else cfg.max_steps
    start = int(trainer.step.numpy())
    stream = data_lib.train_stream(ds.x_train, ds.y_train, cfg.dataset, cfg.batch_size,
                                   trainer.sources, cfg.resolved_noise_eps(), cfg.seed, start)
    it = iter(trainer.distribute(stream))
    writer = tf.summary.create_file_writer(os.path.join(cfg.out_dir, "logs"))
    x_eval = ds.x_val if ds.x_val is not None else ds.x_test[:1000]
    y_eval = ds.y_val if ds.y_val is not None else ds.y_test[:1000]

    predict_fn = make_predict_fn(trainer.ensemble, ds.input_shape)
    from tqdm.auto import tqdm  # local: only the loop needs it

    bar = tqdm(total=total, initial=start, disable=not cfg.progress, desc=f"{cfg.mode}",
               unit="step", mininterval=5.0)
    last = {}
    seen, t_loop = 0, time.time()
    for step in range(start, total):
        x, y = next(it)
        metrics = {k: v.numpy() for k, v in trainer.train_step(x, y).items()}
        seen += cfg.batch_size
        if not np.isfinite(metrics["loss"]):
            raise TrainingError(
                f"Non-finite loss ({metrics['loss']}) at step {step + 1}; stopped. The last good "
                f"checkpoint is kept in {manager.latest_checkpoint or ckpt_dir + ' (none yet)'}. "
                f"Lower --learning_rate or --gal_lambda.")
        last = metrics
        ips = seen / max(time.time() - t_loop, 1e-9)
        post = {"ce": f"{metrics['ce']:.3f}", "img/s": f"{ips:.0f}"}
        if "gal" in metrics:
            post.update(gal=f"{metrics['gal']:.3f}", coh=f"{metrics['coherence']:.3f}")
        bar.set_postfix(post, refresh=False)
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == total:
            with writer.as_default(step=done):
                for k, v in metrics.items():
                    if k == "member_ce":
                        for i, c in enumerate(v):
                            tf.summary.scalar(f"train/member_{i}_ce", c)
                    else:
                        tf.summary.scalar(f"train/{k}", v)
                tf.summary.scalar("train/images_per_sec", ips)
                n_val = min(len(x_eval), 500)
                acc = evaluate_accuracy(trainer.ensemble, x_eval[:n_val], y_eval[:n_val],
                                        predict_fn=predict_fn)
                tf.summary.scalar("val/ensemble_accuracy", acc["ensemble_accuracy"])
        if done % cfg.checkpoint_every == 0 or done == total or done % steps_per_epoch == 0:
            manager.save(checkpoint_number=done)
    bar.close()
    train_time = time.time() - t_loop

    n_eval = cfg.eval_examples or len(ds.x_test)
    x_te, y_te = ds.x_test[:n_eval], ds.y_test[:n_eval]
    metrics_out = {
        "config": cfg.to_json(),
        "steps": int(trainer.step.numpy()),
        "test_examples": int(len(x_te)),
        **evaluate_accuracy(trainer.ensemble, x_te, y_te, predict_fn=predict_fn),
        "test_gradient_stats": gradient_statistics(trainer.ensemble.members, x_te[:500], y_te[:500]),
        "final_train": {k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in last.items()},
        "train_seconds_this_session": train_time,
        "images_per_sec_this_session": seen / train_time if seen else None,
        "wall_seconds_this_session": time.time() - t_start,
    }
    export_dir = os.path.join(cfg.out_dir, export_lib.SAVED_MODEL_DIR)
    meta = {"dataset": cfg.dataset, "input_shape": list(ds.input_shape), "num_classes": ds.num_classes,
            "models": cfg.members, "mode": cfg.mode, "seed": cfg.seed, "steps": metrics_out["steps"],
            "gal_lambda": cfg.gal_lambda}
    export_lib.export_ensemble(trainer.ensemble, export_dir, meta, overwrite=True)
    metrics_out["wall_seconds_this_session"] = time.time() - t_start
    tmp = os.path.join(cfg.out_dir, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics_out, f, indent=2)
    os.replace(tmp, os.path.join(cfg.out_dir, "metrics.json"))
    return metrics_out

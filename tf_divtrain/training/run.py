"""One training run end to end (``train``): out_dir guard and lock, data, seeding, checkpoint
restore, the loop with its hooks (:mod:`tf_divtrain.loop`), final metrics, export."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import keras
from absl import logging
import numpy as np
import tensorflow as tf

from tf_divtrain import checkpoints as checkpoints_lib
from tf_divtrain import data as data_lib
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import export as export_lib
from tf_divtrain import io_utils
from tf_divtrain import inference
from tf_divtrain import locking
from tf_divtrain import loop as loop_lib
from tf_divtrain import models as models_lib
from tf_divtrain import modes as modes_lib
from tf_divtrain import precision as precision_lib

from tf_divtrain.training.config import (
    ADV_MODES, MAX_SKIPPED_FP16_STEPS, RESUMABLE_KEYS, TrainConfig, TrainingError)
from tf_divtrain.training.trainer import (
    Trainer, gradient_statistics)
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
    warning = repeatability_warning(
        cfg, inter_op_threads_requested(tf.config.threading.get_inter_op_parallelism_threads()))
    if warning:
        logging.warning(warning)


def inter_op_threads_requested(configured: int) -> int:
    """The inter-op thread count asked for: ``configured`` (flag or ``tf.config``), else
    ``$TF_NUM_INTEROP_THREADS`` (which TensorFlow reads when the config says 0), else 0 (its
    default, one per core)."""
    if configured:
        return configured
    env = os.environ.get("TF_NUM_INTEROP_THREADS", "")
    return int(env) if env.isdigit() else 0


def needs_serial_ops(cfg: TrainConfig) -> bool:
    """:func:`tf_divtrain.precision.serial_ops_for_determinism` for this run's settings."""
    return precision_lib.serial_ops_for_determinism(
        cfg.precision, modes_lib.MODES[cfg.mode].objective, cfg.members, cfg.deterministic)


def repeatability_warning(cfg: TrainConfig, inter_op_threads: int) -> Optional[str]:
    """What to say when this run will not be bitwise repeatable although ``deterministic`` is on
    (:func:`tf_divtrain.precision.serial_ops_for_determinism`): the ``train`` CLI sets one inter-op
    thread itself, a library caller must do it before TensorFlow starts."""
    if inter_op_threads == 1 or not needs_serial_ops(cfg):
        return None
    return ("mixed_bfloat16 GAL training of batch-norm members is not bitwise repeatable with "
            f"{inter_op_threads or 'the default number of'} inter-op threads (measured: "
            "results/studies/determinism_probe); call tf.config.threading."
            "set_inter_op_parallelism_threads(1) before TensorFlow starts, or train in float32.")


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
    scratch = distribute_lib.scratch_dir(cfg.out_dir, trainer.strategy)
    # The newest readable checkpoint; a damaged one is moved aside (tf_divtrain.checkpoints).
    latest = checkpoints_lib.restore_latest(trainer.checkpoint, ckpt_dir, logging.warning,
                                            chief=trainer.is_chief)
    manager = tf.train.CheckpointManager(trainer.checkpoint, scratch or ckpt_dir, max_to_keep=3)
    if latest:
        logging.info("Resumed from %s (step %d)", latest, int(trainer.step.numpy()))
    return manager, scratch


def default_hooks(cfg: TrainConfig, trainer: Trainer, ds, manager, scratch: str, start: int,
                  total: int, schedule_epochs: int, history: Optional[dict] = None) -> list:
    """The CLI's hooks, in order: NaN guard, progress bar, TensorBoard, checkpoints (recording
    the training time on top of ``history``, :func:`tf_divtrain.checkpoints.run_history`), and the
    objective's per-epoch schedule over ``schedule_epochs`` epochs (``Trainer.begin_epoch``)."""
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    writer = (tf.summary.create_file_writer(os.path.join(cfg.out_dir, "logs")) if trainer.is_chief
              else tf.summary.create_noop_writer())
    x_val = ds.x_val if ds.x_val is not None else ds.x_test[:1000]
    y_val = ds.y_val if ds.y_val is not None else ds.y_test[:1000]
    n_val = min(len(x_val), 500)
    predict_fn = inference.logits_fn(trainer.ensemble, ds.input_shape)

    def val_accuracy() -> float:
        return inference.accuracies(trainer.ensemble, x_val[:n_val], y_val[:n_val],
                                    fn=predict_fn)["ensemble_accuracy"]

    fp16 = cfg.precision == "mixed_float16"
    return [
        loop_lib.NaNGuard(MAX_SKIPPED_FP16_STEPS if fp16 else 0,
                          lambda: manager.latest_checkpoint or ckpt_dir + " (none yet)"),
        loop_lib.ProgressBar(total, start, cfg.mode, cfg.progress),
        loop_lib.TensorBoardLogger(writer, cfg.log_every, val_accuracy),
        loop_lib.Checkpointer(manager, cfg.checkpoint_every, scratch, history),
        loop_lib.EpochCallback(lambda epoch: trainer.begin_epoch(epoch, schedule_epochs)),
    ]


def final_metrics(cfg: TrainConfig, trainer: Trainer, final, ds, loop_out: dict,
                  history: Optional[dict] = None) -> dict:
    """metrics.json: clean accuracy and gradient statistics of ``final`` (the float32 weights,
    :func:`float32_ensemble`) on the test subset, the last step's training metrics, this
    session's timing, and the whole run's (``train_seconds_total`` over ``train_sessions`` runs:
    ``history`` of the checkpoint it resumed from plus this session; None when not recorded)."""
    n_eval = cfg.eval_examples or len(ds.x_test)
    x_te, y_te = ds.x_test[:n_eval], ds.y_test[:n_eval]
    seconds, seen = loop_out["seconds"], loop_out["images"]
    trained = bool(seen)  # a run resumed after its last step trains nothing
    total = (None if history is None else history["train_seconds"] + (seconds if trained else 0.0))
    sessions = (None if history is None else history["sessions"] + int(trained))
    return {
        "config": cfg.to_json(),
        "steps": int(trainer.step.numpy()),
        "test_examples": int(len(x_te)),
        **inference.accuracies(final, x_te, y_te),
        "test_gradient_stats": gradient_statistics(final.members, x_te[:500], y_te[:500]),
        "final_train": {k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
                        for k, v in loop_out["last"].items()},
        "train_seconds_this_session": seconds,
        "images_per_sec_this_session": seen / seconds if seen else None,
        "train_seconds_total": total,
        "train_sessions": sessions,
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
    history = checkpoints_lib.run_history(os.path.join(cfg.out_dir, "checkpoints"), start)
    stream = data_lib.train_stream(ds.x_train, ds.y_train, cfg.dataset, cfg.batch_size,
                                   trainer.sources, cfg.resolved_noise_eps(), cfg.seed, start)
    schedule_epochs = max(cfg.epochs, -(-total // steps_per_epoch))  # Trainer.begin_epoch's span
    hook_list = (default_hooks(cfg, trainer, ds, manager, scratch, start, total, schedule_epochs,
                               history) + extra_hooks)
    loop_out = loop_lib.run_loop(trainer.train_step, iter(trainer.distribute(stream)), start, total,
                                 hook_list, cfg.batch_size, steps_per_epoch)
    if not trainer.is_chief:
        return {"steps": int(trainer.step.numpy()), "chief": False}
    if not loop_out["last"]:  # resumed after the last step: that step's metrics, as recorded
        loop_out["last"] = checkpoints_lib.last_metrics(os.path.join(cfg.out_dir, "checkpoints"),
                                                        int(trainer.step.numpy()))
    final = float32_ensemble(cfg, trainer, ds)
    metrics_out = final_metrics(cfg, trainer, final, ds, loop_out, history)
    export_run(cfg, final, ds, metrics_out["steps"])
    metrics_out["wall_seconds_this_session"] = time.time() - t_start
    io_utils.atomic_write_json(os.path.join(cfg.out_dir, "metrics.json"), metrics_out, indent=2)
    return metrics_out

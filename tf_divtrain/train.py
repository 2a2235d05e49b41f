"""Train an ensemble: ``python -m tf_divtrain.train --flagfile=flags/<experiment>.cfg [--flag=value]``.

Modes: baseline, div (Diversity Training, Eq 9), ens_adv (Ensemble Adversarial Training),
ens_adv_div (both). Writes config.json, checkpoints/, logs/ (TensorBoard), metrics.json and
saved_model/ into --out_dir; re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from tf_divtrain import data as data_lib
from tf_divtrain import models as models_lib
from tf_divtrain import precision as precision_lib
from tf_divtrain import training

FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", "mnist", f"One of {sorted(data_lib.DATASETS)}.")
flags.DEFINE_string("data_dir", None, f"Folder with <dataset>.npz; default ${data_lib.ENV_VAR}, "
                    "else ~/.cache/tf_divtrain/data.")
flags.DEFINE_bool("download", False, "Fetch a missing dataset through keras.datasets (needs internet).")
flags.DEFINE_string("model", "conv3", f"One of {sorted(models_lib.MODELS)}, 'mix', or a comma list "
                    "of member names (e.g. resnet26,resnet20,conv4,conv3,conv3).")
flags.DEFINE_integer("ensemble_size", 5, "Members when --model is a single name.")
flags.DEFINE_enum("mode", "baseline", list(training.MODES), "Training mode (see tf_divtrain.training).")
flags.DEFINE_float("gal_lambda", 0.5, "lambda of Eq 9 (GAL weight); >= 0.")
flags.DEFINE_integer("epochs", 10, "Epochs over the (possibly subset) training split.")
flags.DEFINE_integer("max_steps", 0, "Stop after this many steps in total (0 = no cap).")
flags.DEFINE_integer("batch_size", 128, "Global batch size (split across sources and replicas).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("noise_eps", None, "D_noise epsilon in [0, 1]; default 0.3 MNIST, 0.09 CIFAR-10.")
flags.DEFINE_float("adv_eps", None, "Max FGSM epsilon of D_adv in [0, 1]; default = noise default.")
flags.DEFINE_string("static_model", "", "ens_adv modes: out_dir or saved_model of the static model.")
flags.DEFINE_integer("seed", 0, "Seed of weights, data order, augmentation and noise.")
flags.DEFINE_string("out_dir", None, "Run directory (config, checkpoints, logs, metrics, export).")
flags.DEFINE_integer("train_examples", 0, "Use only the first N training examples (0 = all).")
flags.DEFINE_integer("validation_examples", 0, "Hold out the last N training examples for validation.")
flags.DEFINE_integer("eval_examples", 1000, "Test examples for metrics.json (0 = whole test split).")
flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "tf.distribute strategy: "
                  "default (one device), mirrored (local GPUs), multi_worker (several processes or "
                  "machines; cluster from $TF_CONFIG, checkpoints written by the chief).")
flags.DEFINE_enum("precision", "float32", list(precision_lib.CHOICES), "Compute precision: float32, "
                  "mixed_bfloat16, mixed_float16 (loss-scaled), or auto (mixed_bfloat16 where the "
                  "hardware runs bfloat16 natively, else float32). Variables, losses, GAL and the "
                  "export stay float32 (see tf_divtrain/precision.py).")
flags.DEFINE_enum("adv_labels", "predicted", list(training.ADV_LABELS), "Labels of the D_adv FGSM: "
                  "the static model's prediction (Kurakin et al. 2016, avoids label leaking) or true.")
flags.DEFINE_float("adv_share", 0.5, "Fraction of each batch that is D_adv in the ens_adv modes, "
                   "in (0, 1).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("log_every", 20, "TensorBoard logging interval in steps.")
flags.DEFINE_integer("checkpoint_every", 100, "Checkpoint interval in steps (also every epoch).")
flags.DEFINE_bool("fresh", False, "Move an existing run with a different config aside and start over.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_integer("intra_op_threads", 0, "Threads inside one op; 0 = TensorFlow's default; -1 = "
                     "max(1, cores // members) so members run side by side (1.46x faster isolated "
                     "steps on 2 cores in benchmarks/, but no gain end to end in this CLI: "
                     "1.23-1.25 s/step either way, measured).")
flags.DEFINE_integer("inter_op_threads", 0, "Ops run concurrently; 0 = TensorFlow's default (cores).")
flags.DEFINE_bool("deterministic", True, "Deterministic ops (same seed -> same weights on the same "
                  "machine); turn off on GPU for speed.")

flags.mark_flag_as_required("out_dir")
for _name in ("noise_eps", "adv_eps"):
    flags.register_validator(_name, lambda v: v is None or 0.0 <= v <= 1.0,
                             message=f"--{_name} must be in [0, 1] (pixel scale).")
flags.register_validator("gal_lambda", lambda v: v >= 0, message="--gal_lambda must be >= 0.")
flags.register_validator("dataset", lambda v: v in data_lib.DATASETS,
                         message=f"--dataset must be one of {sorted(data_lib.DATASETS)}.")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1.")
flags.register_validator("ensemble_size", lambda v: v >= 1, message="--ensemble_size must be >= 1.")


def _model_ok(v):
    try:
        models_lib.member_names(v, 2)
        return True
    except ValueError:
        return False


flags.register_validator("model", _model_ok, message=f"--model must be one of "
                         f"{sorted(models_lib.MODELS)}, 'mix', or a comma list of those names.")


@flags.multi_flags_validator(["mode", "ensemble_size", "model"],
                             message="GAL modes (div, ens_adv_div) need --ensemble_size >= 2.")
def _gal_needs_members(d):
    if d["mode"] not in training.GAL_MODES or not _model_ok(d["model"]):
        return True
    return len(models_lib.member_names(d["model"], d["ensemble_size"])) >= 2


@flags.multi_flags_validator(["mode", "static_model"],
                             message="ens_adv modes need --static_model (a pre-trained export).")
def _adv_needs_static(d):
    return d["mode"] not in training.ADV_MODES or bool(d["static_model"])


def configure_threads(intra: int, inter: int, members: int) -> None:
    """Sets TF's thread pools; must run before TensorFlow executes its first op."""
    import os

    import tensorflow as tf

    if intra < 0:
        intra = max(1, (os.cpu_count() or 1) // max(1, members))
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def config_from_flags() -> training.TrainConfig:
    names = [f.name for f in training.dataclasses.fields(training.TrainConfig)]
    return training.TrainConfig(**{n: getattr(FLAGS, n) for n in names})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cfg = config_from_flags()
    cfg.precision = precision_lib.resolve(cfg.precision)
    configure_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads, len(cfg.members))
    try:
        metrics = training.train(cfg)
    except (training.TrainingError, data_lib.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    summary = {k: metrics[k] for k in ("steps", "ensemble_accuracy", "member_accuracy",
                                       "test_gradient_stats", "chief") if k in metrics}
    print(json.dumps(summary, indent=2))


def run():
    app.run(main)


if __name__ == "__main__":
    run()

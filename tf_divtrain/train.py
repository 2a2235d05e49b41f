"""Train an ensemble: ``python -m tf_divtrain.train --flagfile=flags/<experiment>.cfg [--flag=value]``.

Modes: baseline, div (Diversity Training, Eq 9), ens_adv (Ensemble Adversarial Training),
ens_adv_div (both), and the peer methods adp, trs, dverge (``--method_params=name=value,...``
overrides their authors' defaults; see tf_divtrain.methods). Writes config.json, checkpoints/, logs/ (TensorBoard), metrics.json and
saved_model/ into --out_dir; re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json

from absl import flags

from tf_divtrain import cli_flags
from tf_divtrain import data as data_lib
from tf_divtrain import models as models_lib
from tf_divtrain import modes as modes_lib
from tf_divtrain import precision as precision_lib
from tf_divtrain import training
from tf_divtrain.training import run as training_run

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS) -> None:
    """Defines the train flags in ``fv`` (called by ``run()``, not at import, so this CLI and the
    others can be imported into one process). Flag names are the ``TrainConfig`` fields plus the
    thread settings; one validator runs ``TrainConfig.validate`` (no second copy of the rules)."""
    cli_flags.define_dataset_flags(fv, default="mnist")
    flags.DEFINE_bool("download", False, "Fetch a missing dataset through keras.datasets (needs internet).", flag_values=fv)
    flags.DEFINE_string("model", "conv3", f"One of {sorted(models_lib.MODELS)}, 'mix', or a comma list "
                        "of member names (e.g. resnet26,resnet20,conv4,conv3,conv3).", flag_values=fv)
    flags.DEFINE_integer("ensemble_size", 5, "Members when --model is a single name.", flag_values=fv)
    flags.DEFINE_enum("mode", "baseline", list(modes_lib.MODES), modes_lib.help_text(), flag_values=fv)
    flags.DEFINE_float("gal_lambda", 0.5, "lambda of Eq 9 (GAL weight); >= 0.", flag_values=fv)
    flags.DEFINE_integer("epochs", 10, "Epochs over the (possibly subset) training split.", flag_values=fv)
    flags.DEFINE_integer("max_steps", 0, "Stop after this many steps in total (0 = no cap).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 128, "Global batch size (split across sources and replicas).", flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", flag_values=fv)
    flags.DEFINE_float("noise_eps", None, "D_noise epsilon in [0, 1]; default 0.3 MNIST, 0.09 CIFAR-10.", flag_values=fv)
    flags.DEFINE_float("adv_eps", None, "Max FGSM epsilon of D_adv in [0, 1]; default = noise default.", flag_values=fv)
    flags.DEFINE_string("static_model", "", "ens_adv modes: out_dir or saved_model of the static model.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of weights, data order, augmentation and noise.", flag_values=fv)
    flags.DEFINE_string("out_dir", None, "Run directory (config, checkpoints, logs, metrics, export).", flag_values=fv)
    flags.DEFINE_integer("train_examples", 0, "Use only the first N training examples (0 = all).", flag_values=fv)
    flags.DEFINE_integer("validation_examples", 0, "Hold out the last N training examples for validation.", flag_values=fv)
    flags.DEFINE_integer("eval_examples", 1000, "Test examples for metrics.json (0 = whole test split).", flag_values=fv)
    flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "tf.distribute strategy: "
                      "default (one device), mirrored (local GPUs), multi_worker (several processes or "
                      "machines; cluster from $TF_CONFIG, checkpoints written by the chief).", flag_values=fv)
    cli_flags.define_precision_flag(fv, "mixed_float16 is loss-scaled; auto = mixed_bfloat16 where the "
                                    "hardware runs bfloat16 natively, else float32. Variables, losses, "
                                    "GAL and the export stay float32 (see tf_divtrain/precision.py).",
                                    choices=precision_lib.CHOICES)
    flags.DEFINE_enum("adv_labels", "predicted", list(training.ADV_LABELS), "Labels of the D_adv FGSM: "
                      "the static model's prediction (Kurakin et al. 2016, avoids label leaking) or true.", flag_values=fv)
    flags.DEFINE_string("method_params", "", "Modes adp, trs, dverge: comma list name=value overriding "
                        "the method's defaults, e.g. adp: alpha=2,beta=0.5; trs: coeff=2,lamda=2,scale=5,"
                        "init_eps=0.1,adv_eps=0.2; dverge: eps=0.35,step_size=0.035,steps=10,layer=5. "
                        "Names and ranges are checked (see tf_divtrain.methods); other modes take none.",
                        flag_values=fv)
    flags.DEFINE_float("adv_share", 0.5, "Fraction of each batch that is D_adv in the ens_adv modes, "
                       "in (0, 1).", flag_values=fv)
    flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.", flag_values=fv)
    flags.DEFINE_integer("log_every", 20, "TensorBoard logging interval in steps.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 100, "Checkpoint interval in steps (also every epoch).", flag_values=fv)
    flags.DEFINE_bool("fresh", False, "Move an existing run with a different config aside and start over.", flag_values=fv)
    flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
    flags.DEFINE_integer("intra_op_threads", 0, "Threads inside one op; 0 = TensorFlow's default; -1 = "
                         "max(1, cores // members) so members run side by side (1.46x faster isolated "
                         "steps on 2 cores in benchmarks/, but no gain end to end in this CLI: "
                         "1.23-1.25 s/step either way, measured).", flag_values=fv)
    flags.DEFINE_integer("inter_op_threads", 0, "Ops run concurrently; 0 = TensorFlow's default (cores).", flag_values=fv)
    flags.DEFINE_bool("deterministic", True, "Deterministic ops (same seed -> same weights on the same "
                      "machine); turn off on GPU for speed.", flag_values=fv)

    flags.mark_flag_as_required("out_dir", flag_values=fv)
    names = [f.name for f in dataclasses.fields(training.TrainConfig)]

    def _config_ok(values):
        cfg = training.TrainConfig(**values)
        if cfg.precision == "auto":
            cfg = dataclasses.replace(cfg, precision="float32")  # resolved in main()
        try:
            cfg.validate()
        except (ValueError, data_lib.DataError) as e:
            if "TF_CONFIG" in str(e):  # checked when the strategy starts, not at parse time
                return True
            raise flags.ValidationError(str(e)) from e
        return True

    flags.register_multi_flags_validator(names, _config_ok, flag_values=fv)


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


def config_from_flags(fv=FLAGS) -> training.TrainConfig:
    names = [f.name for f in dataclasses.fields(training.TrainConfig)]
    return training.TrainConfig(**{n: getattr(fv, n) for n in names})


def main(argv, fv=None):
    fv = fv if fv is not None else FLAGS
    if len(argv) > 1:
        cli_flags.fail(f"unexpected arguments {argv[1:]}")
    cfg = config_from_flags(fv)
    cfg.precision = precision_lib.resolve(cfg.precision)
    inter = fv.inter_op_threads
    if training_run.inter_op_threads_requested(inter) == 0 and training_run.needs_serial_ops(cfg):
        inter = 1
        print("deterministic mixed_bfloat16 GAL training of batch-norm members: one inter-op thread, "
              "so that a re-run gives the same weights (measured ~1.2x slower; --inter_op_threads=N "
              "or --deterministic=false drops it, --precision=float32 does not need it)")
    configure_threads(fv.intra_op_threads, inter, len(cfg.members))
    try:
        metrics = training.train(cfg)
    except (training.TrainingError, data_lib.DataError, ValueError) as e:
        cli_flags.fail(e)
    summary = {k: metrics[k] for k in ("steps", "ensemble_accuracy", "member_accuracy",
                                       "test_gradient_stats", "chief") if k in metrics}
    print(json.dumps(summary, indent=2))


def run():
    define_flags()
    cli_flags.run_app(main)


if __name__ == "__main__":
    run()

"""Re-scores a training run's ``test_gradient_stats`` (metrics.json) with the scale-free metric of
issue 27, from the run's last checkpoint, and records the old formula's numbers beside them.

    python experiments/rescore_gradient_stats.py --run=results/cpu/work/mnist_conv3/div \
        --out=results/cpu/mnist_conv3/train/div/metrics.json

Same images as training.final_metrics (the first min(500, eval_examples) test images, float32,
inference mode). ``test_gradient_stats`` becomes :func:`tf_divtrain.training.gradient_statistics`;
``test_gradient_stats_before_issue27`` holds the formula used before (l2_normalize floor, every
example scored), recomputed here; the script fails if that recomputation does not reproduce the
old numbers already in the file (so the weights are the ones the file describes).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Training out_dir (config.json, checkpoints/).")
flags.DEFINE_string("out", None, "metrics.json to update (default: <run>/metrics.json).")
flags.DEFINE_float("tolerance", 1e-5, "Allowed difference between the recomputed old statistics "
                   "and the ones in the file.")


def old_statistics(members, x, y, batch_size: int = 250) -> dict:
    """The pre-issue-27 formula (gal.pair_cosines with its floor; every example scored)."""
    import tensorflow as tf

    from tf_divtrain import batching, gal

    @tf.function
    def stats(xb, yb):
        grads, _, _ = gal.member_input_gradients(members, xb, yb, training=False)
        pairs = gal.pair_cosines(grads)
        return gal.gal_from_pairs(pairs), gal.coherence_from_pairs(pairs), tf.reduce_mean(pairs, -1)

    g, c, m = batching.map_batches(stats, x, y, batch_size=batch_size)
    return {"gal": float(g.mean()), "coherence": float(c.mean()), "mean_cosine": float(m.mean())}


def main(argv):
    del argv
    import tensorflow as tf

    from tf_divtrain import data as data_lib
    from tf_divtrain import models, training

    with open(os.path.join(FLAGS.run, "config.json")) as f:
        cfg = json.load(f)
    out = FLAGS.out or os.path.join(FLAGS.run, "metrics.json")
    with open(out) as f:
        metrics = json.load(f)
    ds = data_lib.load_dataset(cfg["dataset"], cfg.get("data_dir"))
    n_eval = cfg.get("eval_examples") or len(ds.x_test)
    x, y = ds.x_test[:n_eval][:500], ds.y_test[:n_eval][:500]
    ens = models.build_ensemble(cfg["model"], ds.input_shape, ds.num_classes, cfg["ensemble_size"],
                                cfg["seed"], "float32")
    ckpt = tf.train.latest_checkpoint(os.path.join(FLAGS.run, "checkpoints"))
    tf.train.Checkpoint(members=ens.members).restore(ckpt).expect_partial()
    before = old_statistics(ens.members, x, y)
    recorded = metrics.get("test_gradient_stats_before_issue27", metrics["test_gradient_stats"])
    diff = {k: abs(before[k] - recorded[k]) for k in before}
    print(f"{FLAGS.run}: old formula recomputed {before}; in the file {recorded}; |diff| {diff}")
    if max(diff.values()) > FLAGS.tolerance:
        print("error: the recomputed old statistics differ from the file's: not the same weights?",
              file=sys.stderr)
        return 1
    metrics["test_gradient_stats_before_issue27"] = recorded
    metrics["test_gradient_stats"] = training.gradient_statistics(ens.members, x, y)
    print(f"new: {metrics['test_gradient_stats']}")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("run")
    app.run(main)

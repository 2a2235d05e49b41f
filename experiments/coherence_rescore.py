"""Fig. 4 before and after issue 27, step by step, on trained exports.

    python experiments/coherence_rescore.py --ensembles=T_Base=DIR,T_Div=DIR --dataset=mnist \
        --num_examples=500 --out=results/cpu/mnist_conv3/analysis/coherence_rescore

For every target and the first N test images, the per-example coherence (Eq 7) under
  old          the pre-issue-27 metric: gal.coherence (l2_normalize floor, |g| < 1e-6 shrunk) of
               the plain CE gradients, every example scored;
  scale_free   the same plain CE gradients, scale-free cosines, over defined pairs;
  measured     scale-free on gal.measured_cross_entropy gradients (label term -sum_{j!=y} p_j):
               what analysis.json now reports;
  margin       scale-free on the logit-margin gradients (--coherence_margin).
Writes <out>.json (summaries, member-gradient counts, per-step changes) and <out>.md (a table).
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("ensembles", None, "LABEL=DIR,... as for tf_divtrain.analyze.")
flags.DEFINE_string("dataset", "mnist", "Dataset of the exports.")
flags.DEFINE_integer("num_examples", 500, "First N test images.")
flags.DEFINE_integer("batch_size", 100, "Batch size.")
flags.DEFINE_string("out", None, "Output path without extension.")


def main(argv):
    del argv
    import tensorflow as tf

    from tf_divtrain import analysis, batching, data as data_lib, gal
    from tf_divtrain.analysis.common import _compiled

    targets = analysis.load_targets(analysis.parse_ensembles(FLAGS.ensembles), FLAGS.dataset)
    ds = data_lib.load_dataset(FLAGS.dataset, None, test_size=FLAGS.num_examples)
    x, y = ds.x_test, ds.y_test
    report = {"dataset": FLAGS.dataset, "num_examples": int(len(x)), "ensembles": {}}
    for label, ens in targets.items():
        c = _compiled(ens)

        @tf.function(reduce_retracing=True, autograph=False)
        def plain(xb, yb, c=c):
            g = analysis.member_input_gradients(c.logits_fn, xb, yb, c.n)
            return (gal.coherence(g), gal.scale_free_coherence(g),
                    tf.reduce_sum(tf.cast(gal.scale_free_norm(g) < 1e-6, tf.int32), -1),
                    tf.reduce_sum(tf.cast(tf.logical_not(gal.direction_defined(g)), tf.int32), -1))

        old, sf, small, zero_plain = batching.map_batches(plain, x, y, batch_size=FLAGS.batch_size)
        measured = analysis.coherence_stats(ens, x, y, FLAGS.batch_size, "ce")
        margin = analysis.coherence_stats(ens, x, y, FLAGS.batch_size, "margin")
        ok = np.isfinite(measured["values"])
        entry = {
            "old": analysis.summarize(old),
            "scale_free_plain_ce": analysis.summarize(sf[np.isfinite(sf)]),
            "measured": analysis.summarize_coherence(measured),
            "margin": analysis.summarize_coherence(margin),
            "member_gradients_norm_below_1e-6_plain_ce": int(small.sum()),
            "member_gradients_zero_plain_ce": int(zero_plain.sum()),
            "examples_changed_by_more_than_0.01": {
                "old_to_scale_free": int(np.sum(np.abs(np.nan_to_num(sf, nan=0.0) - old) > 0.01)),
                "scale_free_to_measured": int(np.sum(np.abs(np.nan_to_num(measured["values"] - sf,
                                                                          nan=0.0)) > 0.01))},
            "old_on_defined_examples": analysis.summarize(old[ok]),
        }
        report["ensembles"][label] = entry
        print(label, json.dumps({k: (v.get("mean") if isinstance(v, dict) and "mean" in v else v)
                                 for k, v in entry.items()}))
    with open(FLAGS.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    rows = ["| target | old (floor, all examples) | scale-free, plain CE | reported: scale-free, "
            "measured CE | vanishing | member grads = 0 | member grads < 1e-6 | logit margin |",
            "|---|---|---|---|---|---|---|---|"]
    for label, e in report["ensembles"].items():
        m, mg = e["measured"], e["measured"]["member_gradients"]
        rows.append(f"| {label} | {e['old']['mean']:.4f} (median {e['old']['median']:.4f}) | "
                    f"{e['scale_free_plain_ce']['mean']:.4f} | {m['mean']:.4f} (median "
                    f"{m['median']:.4f}) | {m['vanishing']} of {m['num_examples']} | "
                    f"{mg['exactly_zero']} of {mg['total']} | {mg['norm_below_1e-6']} | "
                    f"{e['margin']['mean']:.4f} (median {e['margin']['median']:.4f}) |")
    with open(FLAGS.out + ".md", "w") as f:
        f.write("Mean coherence (Eq 7) over the first %d test images; see "
                "experiments/coherence_rescore.py for each column's definition.\n\n" % len(x))
        f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("ensembles")
    flags.mark_flag_as_required("out")
    app.run(main)

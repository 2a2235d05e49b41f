"""Did each cpu-methods target reach ADP's own diversity measures? (issue 14, cpu-methods notes)

    python experiments/adp_terms.py --results=results/cpu-methods [--work=DIR] [--num_examples=1000]

ADP (Pang et al. 2019, Eq 3-5) raises the ensemble entropy H(mean prediction) and the log-det of the
members' normalised non-maximal predictions. T_ADP barely beats T_Base under transfer attacks; this
measures whether that is because ADP did not reach its objective or because the objective it
reached does not make the members' vulnerabilities differ. For every trained target in
``<work>/mnist_conv3/<name>`` on the first N MNIST test images: the mean ensemble entropy and
log-det (``tf_divtrain.methods.adp``, the same functions the ADP objective uses) and the member
disagreement rate (fraction of member pairs whose argmax differ). Writes ``<results>/adp_terms.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import numpy as np
import tensorflow as tf

from tf_divtrain import data as data_lib
from tf_divtrain import export
from tf_divtrain.methods import adp

TARGETS = (("base", "T_Base"), ("div", "T_Div"), ("adp", "T_ADP"), ("dverge", "T_DVERGE"), ("trs", "T_TRS"))


def terms(ensemble, x, y, batch: int = 250) -> dict:
    """Mean ensemble entropy, log-det (ADP's two terms) and member disagreement over the images."""
    ent, ld, dis = [], [], []
    for i in range(0, len(x), batch):
        logits = ensemble.member_logits(tf.constant(x[i:i + batch]))
        probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        yb = tf.constant(y[i:i + batch])
        ent.append(adp.ensemble_entropy(probs).numpy())
        ld.append(adp.log_det_nonmax_from_logits(tf.cast(logits, tf.float32), yb).numpy())
        pred = np.argmax(logits.numpy(), axis=-1)  # [B, N]
        pairs = list(itertools.combinations(range(pred.shape[1]), 2))
        dis.append(np.mean([pred[:, a] != pred[:, b] for a, b in pairs], axis=0))
    return {"ensemble_entropy": float(np.mean(np.concatenate(ent))),
            "log_det_nonmax": float(np.mean(np.concatenate(ld))),
            "member_disagreement": float(np.mean(np.concatenate(dis)))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results/cpu-methods")
    p.add_argument("--work", default=None, help="work dir (default <results>/work)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--num_examples", type=int, default=1000)
    a = p.parse_args(argv)
    work = os.path.join(a.work or os.path.join(a.results, "work"), "mnist_conv3")
    ds = data_lib.load_dataset("mnist", data_lib.resolve_data_dir(a.data_dir))
    x, y = ds.x_test[:a.num_examples], ds.y_test[:a.num_examples]
    out = {"examples": int(len(x)), "targets": {}}
    for name, label in TARGETS:
        path = os.path.join(work, name)
        if os.path.isdir(path):
            out["targets"][label] = terms(export.load_ensemble(path), x, y)
    if not out["targets"]:
        sys.exit(f"adp_terms.py: no trained targets under {work}; pass --work.")
    lines = ["# ADP's diversity measures on every target (`experiments/adp_terms.py`)", "",
             f"First {out['examples']} MNIST test images; higher = more diverse by ADP's definition.", "",
             "| target | ensemble entropy H(mean prediction) | log-det of normalised non-maximal predictions | "
             "member disagreement |", "|---|---|---|---|"]
    for label, t in out["targets"].items():
        lines.append(f"| {label} | {t['ensemble_entropy']:.4f} | {t['log_det_nonmax']:.3f} | "
                     f"{t['member_disagreement']:.4f} |")
    text = "\n".join(lines) + "\n"
    for ext, body in (("json", json.dumps(out, indent=2) + "\n"), ("md", text)):
        with open(os.path.join(a.results, f"adp_terms.{ext}"), "w") as f:
            f.write(body)
    print(text)


if __name__ == "__main__":
    main()

"""Puts a coherence-only analysis (``--analyses=coherence``) into an existing analysis.json: the
Fig. 4 entries (``coherence``, ``coherence_margin``), their definitions and the histogram are
replaced; GAAS, transferability and the white-box check are kept as they were. For re-scoring
Fig. 4 with the issue-27 metric on the same (retrained, checked) models without re-running the
attacks, whose code did not change.

    python experiments/merge_coherence_analysis.py --new=work/analysis_coherence/analysis.json \
        --into=results/cpu/mnist_conv3/analysis/analysis.json
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("new", None, "analysis.json of the coherence-only run.")
flags.DEFINE_string("into", None, "analysis.json to update (its coherence_hist.png is replaced too).")


def main(argv):
    del argv
    with open(FLAGS.new) as f:
        new = json.load(f)
    with open(FLAGS.into) as f:
        old = json.load(f)
    if set(new["ensembles"]) != set(old["ensembles"]) or new["num_examples"] != old["subset_sizes"]["coherence"]:
        print("error: the two analyses do not cover the same ensembles / coherence subset", file=sys.stderr)
        return 1
    for label, e in new["ensembles"].items():
        dst = old["ensembles"][label]
        if e["clean_accuracy"] != dst["clean_accuracy"]:
            print(f"error: {label}: clean accuracy {e['clean_accuracy']} != {dst['clean_accuracy']}: "
                  "not the same model", file=sys.stderr)
            return 1
        for key in ("coherence", "coherence_margin"):
            if key in e:
                dst[key] = e[key]
    for key in ("coherence_definition", "coherence_margin_definition"):
        if key in new:
            old[key] = new[key]
    old["coherence_rescored"] = ("Fig. 4 entries re-computed with the issue-27 metric by a "
                                 "coherence-only analysis of the same models; GAAS, transferability "
                                 "and white-box entries are from the original analysis.")
    hist = os.path.join(os.path.dirname(FLAGS.into), "coherence_hist.png")
    shutil.copyfile(new["files"]["coherence_hist"], hist)
    with open(FLAGS.into, "w") as f:
        json.dump(old, f, indent=2)
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("new")
    flags.mark_flag_as_required("into")
    app.run(main)

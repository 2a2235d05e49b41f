"""Why the short CIFAR rows differ: member alignment at initialisation vs after training, and how
well the surrogate's attacks transfer to T_Base (issue 11, cpu-cifar notes).

    python experiments/coherence_at_init.py --results=results/cpu-cifar [--rows=cifar10_conv4,...]

Per Table 2 row: mean coherence (Eq 7) on the first N test images of (a) the targets' common
seed-0 *initial* ensemble -- the weights T_Base and T_Div start from, built by ``training.Trainer``
exactly as ``train`` builds it -- and (b) the trained T_Base and T_Div exports (work/ROW/base, div);
and, from the evaluation's per-example results, the transfer rate of each attack on T_Base: the
fraction of the images T_Base classifies correctly clean that the transferred example fools. GAL
can only lower coherence that exists, and a transfer defence can only show where attacks transfer.
Writes ``<results>/coherence_at_init.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tf_divtrain import data as data_lib
from tf_divtrain import evaluation, export, training
from tf_divtrain.analysis import coherence_values

MODELS = {"cifar10_conv4": "conv4", "cifar10_resnet20": "resnet20", "cifar10_mix": "mix"}


def transfer_rates(results: dict, label: str = "T_Base") -> dict:
    """{attack@eps: fraction of ``label``'s clean-correct images fooled} from per-example results."""
    row = next(r for r in results["rows"] if r["label"] == label)
    clean = evaluation.per_example_mask(row)
    out = {}
    for a, per in row["attacks"].items():
        for e in per:
            adv = evaluation.per_example_mask(row, a, e)
            out[f"{a}@{e}"] = float(np.mean(~adv[clean])) if clean.any() else None
    return out


def row_figures(results_dir: str, row: str, data_dir: str, n: int) -> dict:
    ds = data_lib.load_dataset("cifar10", data_dir)
    x, y = ds.x_test[:n], ds.y_test[:n]
    cfg = training.TrainConfig(dataset="cifar10", model=MODELS[row], ensemble_size=5, mode="baseline",
                               seed=0, data_dir=data_dir)
    cfg.validate()
    init = training.Trainer(cfg, ds.input_shape, 10).ensemble
    out = {"examples": int(n), "coherence_mean": {"initial (seed 0)": float(np.mean(coherence_values(init, x, y)))}}
    for label, role in (("T_Base", "base"), ("T_Div", "div")):
        path = os.path.join(results_dir, "work", row, role)
        if os.path.isdir(path):
            out["coherence_mean"][label] = float(np.mean(coherence_values(export.load_ensemble(path), x, y)))
    res_path = os.path.join(results_dir, row, "eval", "results.json")
    if os.path.isfile(res_path):
        with open(res_path) as f:
            out["transfer_rate_T_Base"] = transfer_rates(json.load(f))
    return out


def markdown(fig: dict) -> str:
    lines = ["# Member alignment at initialisation and transfer to T_Base (`experiments/coherence_at_init.py`)", "",
             "| row | images | coherence: initial ensemble (seed 0) | T_Base trained | T_Div trained | "
             "transfer rate to T_Base, mean over the 10 cells (min-max) |", "|---|---|---|---|---|---|"]
    for row, f in fig.items():
        c = f["coherence_mean"]
        tr = [v for v in (f.get("transfer_rate_T_Base") or {}).values() if v is not None]
        t = f"{np.mean(tr):.2f} ({min(tr):.2f}-{max(tr):.2f})" if tr else "—"
        g = lambda k: f"{c[k]:.3f}" if k in c else "—"  # noqa: E731
        lines.append(f"| {row} | {f['examples']} | {g('initial (seed 0)')} | {g('T_Base')} | {g('T_Div')} | {t} |")
    lines += ["", "Transfer rate: fraction of the test images T_Base classifies correctly that the "
              "surrogate's transferred adversarial example makes it misclassify."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results/cpu-cifar")
    p.add_argument("--rows", default=",".join(MODELS))
    p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"))
    p.add_argument("--num_examples", type=int, default=500)
    a = p.parse_args(argv)
    rows = [r for r in a.rows.split(",") if r]
    bad = [r for r in rows if r not in MODELS]
    if bad:
        sys.exit(f"coherence_at_init.py: unknown row(s) {bad}; valid: {', '.join(MODELS)}.")
    fig = {r: row_figures(a.results, r, a.data_dir, a.num_examples) for r in rows}
    with open(os.path.join(a.results, "coherence_at_init.json"), "w") as f:
        json.dump(fig, f, indent=2)
    text = markdown(fig)
    with open(os.path.join(a.results, "coherence_at_init.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

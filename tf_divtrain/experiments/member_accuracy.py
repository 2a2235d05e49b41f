"""Why does an ordering fail in a cell? Each target's members, clean and under the cached examples.

    python -m tf_divtrain.experiments.member_accuracy --eval=results/mnist-paper/mnist_conv3/eval/results.json \
        --out=results/mnist-paper/mnist_conv3/eval/member_accuracy [--targets=T_Ens,T_Ens+Div]
        [--cells=fgsm@0.1,mifgsm@0.1] [--root=DIR]

For every target (default all) and every (attack, eps) cell (default all), on the very images the evaluation scored
(its cached adversarial arrays, read from ``results.json``): each member's accuracy, the mean
member accuracy and the ensemble's (averaged softmax, as scored in Table 2). Per image, the
ensemble's clean/attacked outcome splits into *fooled* (right clean, wrong under attack) and
*corrected* (wrong clean, right under attack); accuracy under attack = clean - fooled + corrected.
The ensemble's accuracies must reproduce ``results.json`` exactly, or the script stops (they would
not be the evaluated models or images). Relative paths in ``results.json`` resolve against
``--root`` (default: the current directory; the run's clone if it ran elsewhere).
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import evaluation, export
from tf_divtrain import data as data_lib
from tf_divtrain.analysis import predictions
from tf_divtrain.io_utils import IncompleteFileError, read_json, write_md_and_json


BATCH = 500


class MemberAccuracyError(ValueError):
    """The evaluation's files do not match what this script re-scores."""


def parse_cells(text: str, results: dict = None) -> List[Tuple[str, str]]:
    """``"fgsm@0.1,ifgsm@0.3"`` -> [("fgsm", "0.1"), ("ifgsm", "0.3")]; ``"all"``: every cell of
    ``results`` (attack order, then eps)."""
    if text.strip() == "all":
        if results is None:
            raise MemberAccuracyError("--cells=all needs the evaluation's results.json.")
        return [(a, evaluation.eps_key(e)) for a in results["attacks"] for e in results["eps"]]
    cells = []
    for item in text.split(","):
        attack, sep, eps = item.strip().partition("@")
        if not sep or attack not in attacks_lib.ATTACKS:
            raise MemberAccuracyError(f"cell {item!r} is not ATTACK@EPS with ATTACK one of "
                                      f"{', '.join(attacks_lib.ATTACKS)} (e.g. fgsm@0.1).")
        cells.append((attack, evaluation.eps_key(float(eps))))
    return cells


def breakdown(y: np.ndarray, clean: Tuple[np.ndarray, np.ndarray],
              attacked: Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]]) -> dict:
    """Accuracies and the fooled / corrected split from (ensemble, member) predictions."""
    ens_clean = clean[0] == y
    out = {"clean": {"ensemble": float(ens_clean.mean()),
                     "members": [float(v) for v in (clean[1] == y[:, None]).mean(0)],
                     "errors": int((~ens_clean).sum())}, "cells": {}}
    out["clean"]["mean_member"] = float(np.mean(out["clean"]["members"]))
    for (a, e), (ens_pred, mem_pred) in attacked.items():
        ens_ok = ens_pred == y
        members = [float(v) for v in (mem_pred == y[:, None]).mean(0)]
        out["cells"][f"{a}@{e}"] = {
            "ensemble": float(ens_ok.mean()), "members": members, "mean_member": float(np.mean(members)),
            "fooled": int((ens_clean & ~ens_ok).sum()), "corrected": int((~ens_clean & ens_ok).sum())}
    return out


def run(results: dict, targets: Sequence[str], cells: Sequence[Tuple[str, str]], root: str,
        data_dir=None) -> dict:
    rows = {r["label"]: r for r in results["rows"]}
    if list(targets) == ["all"]:
        targets = [label for label, r in rows.items() if r.get("role", "target") == "target"]
    missing = [t for t in targets if t not in rows]
    if missing:
        raise MemberAccuracyError(f"target(s) {missing} not in results.json (rows: {', '.join(rows)}).")
    for a, e in cells:
        if a not in results["crafting"] or e not in results["crafting"][a]:
            raise MemberAccuracyError(f"results.json has no crafted examples for {a}@{e}.")

    def resolve(p):
        return p if os.path.isabs(p) else os.path.join(root, p)
    ds = data_lib.load_dataset(results["dataset"], data_dir, test_size=results["num_examples"])
    y = np.asarray(ds.y_test)
    x_adv = {c: np.load(resolve(results["crafting"][c[0]][c[1]]["path"])) for c in cells}
    out = {"dataset": results["dataset"], "num_examples": int(len(y)), "targets": {}}
    for t in targets:
        ens = export.load_ensemble(resolve(rows[t]["path"]))
        # (ensemble argmax of the averaged softmax [B], member argmax [B, N]), one compiled forward
        predict = lambda x, batch_size, ens=ens: predictions(ens, x, batch_size)  # noqa: E731
        clean = predict(ds.x_test, BATCH)
        attacked = {c: predict(x_adv[c], BATCH) for c in cells}
        b = breakdown(y, clean, attacked)
        checks = [("clean", b["clean"]["ensemble"], rows[t]["clean"])] + [
            (f"{a}@{e}", b["cells"][f"{a}@{e}"]["ensemble"], rows[t]["attacks"][a][e]) for a, e in cells]
        for name, got, want in checks:
            if abs(got - want) > 0.5 / len(y):
                raise MemberAccuracyError(f"{t} {name}: re-scored {got:.4f}, results.json {want:.4f}; "
                                          f"not the evaluated model or images.")
        out["targets"][t] = b
    return out


def to_markdown(res: dict) -> str:
    def pct(v):
        return f"{100 * v:.1f}"
    lines = ["# Member accuracy, clean and under the evaluation's transfer examples", "",
             f"{res['dataset']}, first {res['num_examples']} test images (the evaluation's own). "
             "Ensemble: averaged softmax, as in Table 2 (reproduces results.json). Fooled: right "
             "clean, wrong under attack; corrected: wrong clean, right under attack (images). "
             "Accuracy under attack = clean − fooled + corrected.", "",
             "| target | cell | ensemble % | mean member % | members % | fooled | corrected |",
             "|---|---|---|---|---|---|---|"]
    for t, b in res["targets"].items():
        c = b["clean"]
        lines.append(f"| {t} | clean | {pct(c['ensemble'])} | {pct(c['mean_member'])} | "
                     f"{', '.join(pct(v) for v in c['members'])} | — | ({c['errors']} errors) |")
        for name, d in b["cells"].items():
            lines.append(f"| {t} | {name} | {pct(d['ensemble'])} | {pct(d['mean_member'])} | "
                         f"{', '.join(pct(v) for v in d['members'])} | {d['fooled']} | {d['corrected']} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", required=True, help="results.json written by tf_divtrain.evaluate")
    p.add_argument("--targets", default="all",
                   help="comma-separated row labels, e.g. T_Ens,T_Ens+Div; default all targets")
    p.add_argument("--cells", default="all",
                   help="comma-separated ATTACK@EPS, e.g. fgsm@0.1; default every cell evaluated")
    p.add_argument("--root", default=".", help="directory the relative paths in results.json are under")
    p.add_argument("--data_dir", default=None, help="dataset dir (default: $TF_DIVTRAIN_DATA)")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    if not os.path.isfile(args.eval):
        p.error(f"{args.eval} does not exist; pass a results.json written by tf_divtrain.evaluate.")
    try:
        results = read_json(args.eval)
    except IncompleteFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = run(results, [t for t in args.targets.split(",") if t],
                  parse_cells(args.cells, results), args.root, args.data_dir)
    except (MemberAccuracyError, data_lib.DataError, FileNotFoundError) as e:
        p.error(str(e))
    res.update(eval=args.eval, cells=args.cells)
    md = to_markdown(res)
    write_md_and_json(args.out, md, res)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two transfer evaluations of the same models on the same crafted-image setup, cell by cell.

    python -m tf_divtrain.experiments.compare_evals --a=results/cpu-methods/adaptive_loss/results.json \
        --b=results/cpu-methods/mnist_conv3/eval/results.json --label_a=prediction_ce \
        --label_b="mean member CE" --out=results/cpu-methods/adaptive_loss/comparison

Use: one attack setting against another (e.g. ``--attack_loss=prediction_ce`` against the paper's
mean member CE), with everything else equal. For every surrogate block present in both files (same
label AND same surrogate fingerprint), every row present in both (targets and the white-box sanity
rows) and every (attack, eps) cell in both: accuracy under A, under B, A - B and McNemar's exact
p-value on the same images (:mod:`tf_divtrain.stats`); plus robust-to-all over the shared cells,
recomputed from the per-example results so both sides cover the same attacks. A negative A - B
means A's examples fool that row more: A is the stronger attack there.

Refuses (clear error) files of other datasets, image counts, seeds or crafting precisions, and
files without per-example results, since those would not compare like with like.
Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List

import numpy as np

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import evaluation, stats
from tf_divtrain.io_utils import IncompleteFileError, read_json, write_md_and_json

SAME = ("dataset", "num_examples", "seed", "batch_size", "crafting_precision")


class CompareError(ValueError):
    """The two evaluations cannot be compared cell by cell."""


def _masks(row: dict, cells) -> Dict[tuple, np.ndarray]:
    out = {}
    for a, e in cells:
        m = evaluation.per_example_mask(row, a, e)
        if m is None:
            raise CompareError(f"row {row['label']!r} has no per-example result for {a} eps {e}; "
                               f"re-run the evaluation with this version (cached attacks are reused).")
        out[(a, e)] = m
    return out


def compare(res_a: dict, res_b: dict) -> dict:
    """Cell-by-cell comparison of two results.json dicts (module docstring)."""
    for k in SAME:
        if res_a.get(k) != res_b.get(k):
            raise CompareError(f"the evaluations differ in {k}: {res_a.get(k)!r} vs {res_b.get(k)!r}; "
                               f"compare evaluations of the same images and crafting setup.")
    blocks_b = {b["label"]: b for b in evaluation.surrogate_blocks(res_b)}
    eps_keys = [evaluation.eps_key(e) for e in res_a["eps"] if e in res_b["eps"]]
    cells = [(a, e) for a in res_a["attacks"] if a in res_b["attacks"] for e in eps_keys]
    if not cells:
        raise CompareError("the evaluations share no (attack, eps) cell.")
    out_blocks = []
    for block_a in evaluation.surrogate_blocks(res_a):
        block_b = blocks_b.get(block_a["label"])
        if block_b is None:
            continue
        fa, fb = block_a["surrogate"].get("fingerprint"), block_b["surrogate"].get("fingerprint")
        if fa != fb:
            raise CompareError(f"surrogate {block_a['label']} is a different model in the two files "
                               f"(fingerprints {fa} vs {fb}).")
        rows_b = {r["label"]: r for r in block_b["rows"]}
        rows = []
        for row_a in block_a["rows"]:
            row_b = rows_b.get(row_a["label"])
            if row_b is None:
                continue
            ma, mb = _masks(row_a, cells), _masks(row_b, cells)
            entries = []
            for a, e in cells:
                c = stats.paired_comparison(ma[(a, e)], mb[(a, e)])
                entries.append({"attack": a, "eps": e, "acc_a": c["acc_a"], "acc_b": c["acc_b"],
                                "diff": c["diff"], "only_a": c["only_a"], "only_b": c["only_b"],
                                "p_value": c["p_value"]})
            robust = {}
            for e in eps_keys + [evaluation.ROBUST_ALL_KEY]:
                sel = [k for k in cells if e == evaluation.ROBUST_ALL_KEY or k[1] == e]
                ra = np.logical_and.reduce([ma[k] for k in sel])
                rb = np.logical_and.reduce([mb[k] for k in sel])
                c = stats.paired_comparison(ra, rb)
                robust[e] = {"acc_a": c["acc_a"], "acc_b": c["acc_b"], "diff": c["diff"],
                             "p_value": c["p_value"]}
            rows.append({"label": row_a["label"], "role": row_a["role"], "cells": entries,
                         "robust_to_shared": robust,
                         "a_stronger": sum(x["diff"] < 0 and x["p_value"] < stats.ALPHA for x in entries),
                         "b_stronger": sum(x["diff"] > 0 and x["p_value"] < stats.ALPHA for x in entries)})
        out_blocks.append({"surrogate": block_a["label"], "fingerprint": fa, "rows": rows})
    if not out_blocks:
        raise CompareError("the evaluations share no surrogate (same label) to compare.")
    return {"cells": [list(c) for c in cells], "eps": eps_keys, "alpha": stats.ALPHA,
            "num_examples": res_a["num_examples"], "dataset": res_a["dataset"],
            "attack_options_a": res_a.get("attack_options") or {},
            "attack_options_b": res_b.get("attack_options") or {}, "blocks": out_blocks}


def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}"


def to_markdown(cmp: dict, label_a: str, label_b: str) -> str:
    """One table per surrogate: per row, each cell as ``A / B (A-B, p)``."""
    cells = [tuple(c) for c in cmp["cells"]]
    lines = [f"# {label_a} (A) vs {label_b} (B): transfer accuracy, cell by cell", "",
             f"{cmp['dataset']}, first {cmp['num_examples']} test images, the same images and "
             f"seeds on both sides. Cell: accuracy % under A / under B, then A − B in points and "
             f"McNemar's exact p. A − B < 0: A's examples fool the row more (A is the stronger "
             f"attack). Significant at p < {cmp['alpha']}. Robust to all: correct under every "
             f"shared attack at that eps (recomputed from per-example results on both sides).", ""]
    for b in cmp["blocks"]:
        lines += [f"## Surrogate {b['surrogate']}", ""]
        head = (["row"] + [f"{attacks_lib.DISPLAY_NAMES[a]} {e}" for a, e in cells]
                + [f"robust to all {e}" for e in cmp["eps"]] + ["A stronger / B stronger (sig.)"])
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for r in b["rows"]:
            row = [r["label"] if r["role"] == "target" else f"*{r['label']}*"]
            for c in r["cells"]:
                row.append(f"{_pct(c['acc_a'])} / {_pct(c['acc_b'])} ({100 * c['diff']:+.1f}, "
                           f"p={c['p_value']:.2g})")
            for e in cmp["eps"]:
                c = r["robust_to_shared"][e]
                row.append(f"{_pct(c['acc_a'])} / {_pct(c['acc_b'])} (p={c['p_value']:.2g})")
            row.append(f"{r['a_stronger']} / {r['b_stronger']} of {len(r['cells'])}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="results.json of evaluation A")
    p.add_argument("--b", required=True, help="results.json of evaluation B")
    p.add_argument("--label_a", default="A")
    p.add_argument("--label_b", default="B")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.md and <out>.json")
    args = p.parse_args(argv)
    loaded = []
    for path in (args.a, args.b):
        if not os.path.isfile(path):
            p.error(f"{path} does not exist; pass a results.json written by tf_divtrain.evaluate.")
        try:
            loaded.append(read_json(path))
        except IncompleteFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        cmp = compare(*loaded)
    except CompareError as e:
        p.error(str(e))
    cmp.update(a=os.path.abspath(args.a), b=os.path.abspath(args.b), label_a=args.label_a,
               label_b=args.label_b)
    md = to_markdown(cmp, args.label_a, args.label_b)
    write_md_and_json(args.out, md, cmp)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The report's "Field protocol" section (issue 23): ``evaluate --protocol=field`` results, i.e.
DVERGE / TRS's transfer grid (:mod:`tf_divtrain.field`), read from ``results.json`` alone.

Per target and eps, over **every** set of **every** surrogate (DVERGE's "all": an image counts
only if the target classifies it correctly on all of them): robust-to-all, next to the worst
single set (which set, on which surrogate) and robust-to-all-and-clean (TRS's rule); then the
paired statistic of every target against T_Base on the same images (McNemar, per eps and over all
eps, Holm-corrected over the cells like the Table 2 checks), the field run's reductions against
the peers' protocol (``results["field"]["reductions"]``, as ``field.reductions`` recorded them)
and, when the row also has the paper's evaluation, how much lower robust-to-all is under the
field protocol than under the paper's attacks at the eps both ran (paired on the same images).

Where: ``<row>/eval_field/results.json`` (:data:`FIELD_EVAL_DIR`), or a row's
``<row>/eval/results.json`` written with ``--protocol=field``. Free of TensorFlow: it never
imports :mod:`tf_divtrain.field` (which imports the attacks), only the results schema.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from tf_divtrain import results as results_lib
from tf_divtrain import stats as stats_lib
from tf_divtrain.report.common import ATTACK_NAMES, load_json, pct

FIELD_EVAL_DIR = "eval_field"
AUTOATTACK_DIR = "autoattack"  # analyze --analyses=autoattack (the pipeline's field stage)
BASE = "T_Base"
ALL = results_lib.ROBUST_ALL_KEY


def autoattack_results(results_dir: str, row: str) -> Optional[dict]:
    """The row's AutoAttack analysis.json (``<row>/autoattack/``, the pipeline's field stage), or None."""
    return load_json(os.path.join(results_dir, row, AUTOATTACK_DIR, "analysis.json"))


def is_field(results: Optional[dict]) -> bool:
    return bool(results) and results.get("protocol") == "field"


def field_results(results_dir: str, row: str) -> Optional[dict]:
    """The row's field-protocol results.json (module docstring), or None."""
    for sub in (FIELD_EVAL_DIR, "eval"):
        res = load_json(os.path.join(results_dir, row, sub, "results.json"))
        if is_field(res):
            return res
    return None


def _targets(results: dict) -> List[str]:
    """Target labels in the order of the first surrogate block."""
    return [r["label"] for r in results_lib.surrogate_blocks(results)[0]["rows"]
            if r.get("role") == "target"]


def _target_row(block: dict, label: str) -> Optional[dict]:
    return next((r for r in block["rows"] if r["label"] == label and r.get("role") == "target"), None)


def target_summary(results: dict, label: str) -> dict:
    """One target over every set of every surrogate block:

    ``{"clean", "worst": {eps: (accuracy, surrogate, set)}, "robust": {eps|all: mask or None},
    "robust_clean": {...}}``; the masks are per-example bool arrays (None when a block has no
    per-example results; then only ``worst`` is known)."""
    sets = list(results["attacks"])
    eps = [results_lib.eps_key(e) for e in results["eps"]]
    blocks = [(b["label"], _target_row(b, label)) for b in results_lib.surrogate_blocks(results)]
    blocks = [(s, r) for s, r in blocks if r is not None]
    worst, robust, robust_clean = {}, {}, {}
    clean = results_lib.per_example_mask(blocks[0][1]) if blocks else None
    every = []
    for e in eps:
        worst[e] = min(((r["attacks"][s][e], b, s) for b, r in blocks for s in sets),
                       key=lambda t: t[0])
        masks = [results_lib.per_example_mask(r, s, e) for _, r in blocks for s in sets]
        if clean is None or any(m is None or m.shape != clean.shape for m in masks):
            robust[e] = robust_clean[e] = None
            every = None
            continue
        robust[e] = np.logical_and.reduce(masks)
        robust_clean[e] = robust[e] & clean
        if every is not None:
            every.append(robust[e])
    if every:
        robust[ALL] = np.logical_and.reduce(every)
        robust_clean[ALL] = robust[ALL] & clean
    else:
        robust[ALL] = robust_clean[ALL] = None
    return {"clean": blocks[0][1]["clean"] if blocks else None, "worst": worst, "robust": robust,
            "robust_clean": robust_clean}


def _acc(mask) -> Optional[float]:
    return None if mask is None else float(np.mean(mask))


def _set_name(results: dict, surrogate: str, name: str) -> str:
    shown = ((results.get("field") or {}).get("sets", {}).get(name) or {}).get("display", name)
    return f"{surrogate}: {shown}" if len(results_lib.surrogate_blocks(results)) > 1 else shown


def field_table(results: dict, summaries: Dict[str, dict]) -> List[str]:
    eps = [results_lib.eps_key(e) for e in results["eps"]]
    head = ["TARGET", "CLEAN"] + [f"ε = {e}" for e in eps] + ["ALL ε"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summaries.items():
        cells = [label, pct(s["clean"])]
        for e in eps:
            acc, sur, name = s["worst"][e]
            cells.append(f"{pct(_acc(s['robust'][e]))} ({pct(_acc(s['robust_clean'][e]))}) / "
                         f"{pct(acc)} ({_set_name(results, sur, name)})")
        cells.append(f"{pct(_acc(s['robust'][ALL]))} ({pct(_acc(s['robust_clean'][ALL]))})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_against_base(results: dict, summaries: Dict[str, dict], base: str = BASE) -> List[str]:
    """Every other target's robust-to-all against ``base`` on the same images, per eps and over
    all eps: holds / does not hold, McNemar, Holm over those cells."""
    if base not in summaries:
        return [f"- Paired against {base}: not checked — {base} is not among the targets "
                f"({', '.join(summaries)})."]
    keys = [results_lib.eps_key(e) for e in results["eps"]] + [ALL]
    out = []
    for label, s in summaries.items():
        if label == base:
            continue
        cmps = []
        for k in keys:
            a, b = s["robust"][k], summaries[base]["robust"][k]
            cmps.append(None if a is None or b is None else stats_lib.paired_comparison(a, b))
        if any(c is None for c in cmps):
            out.append(f"- **{label} > {base}** on robust-to-all: not checked — no per-example "
                       f"results (re-run evaluate --protocol=field).")
            continue
        holm = stats_lib.holm_adjusted([c["p_value"] for c in cmps])
        oks = [c["acc_a"] > c["acc_b"] for c in cmps]
        held = sum(oks)
        sig = sum(ok and q < stats_lib.ALPHA for ok, q in zip(oks, holm))
        against = sum((not ok) and q < stats_lib.ALPHA for ok, q in zip(oks, holm))
        cells = [f"{'all ε' if k == ALL else 'ε ' + k}: {pct(c['acc_a'])} vs {pct(c['acc_b'])} "
                 f"{'holds' if ok else '**does not hold**'} ({stats_lib.describe(c)})"
                 for k, c, ok in zip(keys, cmps, oks)]
        out.append(f"- **{label} > {base}** on robust-to-all (field protocol): holds in {held} of "
                   f"{len(keys)} cells; significant after Holm's correction over them in {sig} that "
                   f"hold and {against} that do not. " + "; ".join(cells) + ".")
    return out


def against_paper(field: dict, paper: Optional[dict], summaries: Dict[str, dict]) -> List[str]:
    """Robust-to-all under the field protocol next to the paper's attacks (``paper``: the row's
    Table 2 results) at the eps both ran: the paper's robust-to-all over every attack of the
    surrogates both runs used (all of the paper's when they share none), paired on the first
    min(N) test images (both evaluate the first N)."""
    if not paper or is_field(paper):
        return []
    paper_eps = {results_lib.eps_key(p) for p in paper["eps"]}
    common = [results_lib.eps_key(e) for e in field["eps"] if results_lib.eps_key(e) in paper_eps]
    if not common:
        return [f"- Against the paper's attacks: no ε in common (paper "
                f"{', '.join(map(str, paper['eps']))}; field {', '.join(map(str, field['eps']))})."]
    ours = {b["label"] for b in results_lib.surrogate_blocks(field)}
    blocks = results_lib.surrogate_blocks(paper)
    blocks = [b for b in blocks if b["label"] in ours] or blocks
    parts = []
    for label, s in summaries.items():
        rows = [_target_row(b, label) for b in blocks]
        if any(r is None for r in rows):
            continue
        for e in common:
            masks = [results_lib.per_example_mask(r, a, e) for r in rows for a in paper["attacks"]]
            f = s["robust"][e]
            if f is None or any(m is None for m in masks):
                stored = [(r.get("robust_to_all") or {}).get(e) for r in rows]
                p_acc = stored[0] if len(rows) == 1 else None
                parts.append(f"{label} ε {e}: {pct(_acc(f))} vs {pct(p_acc)}")
                continue
            n = min([len(f)] + [len(m) for m in masks])
            c = stats_lib.paired_comparison(f[:n], np.logical_and.reduce([m[:n] for m in masks]))
            gap = 100 * (c["acc_b"] - c["acc_a"])
            how = f"{abs(gap):.1f} points " + ("lower" if gap > 0 else "higher" if gap < 0 else "apart")
            parts.append(f"{label} ε {e}: {pct(c['acc_a'])} vs {pct(c['acc_b'])}, "
                         f"{'the same' if gap == 0 else how} ({stats_lib.describe(c)}"
                         f"{'' if n == len(f) == len(masks[0]) else f', first {n} images'})")
    if not parts:
        return []
    names = ", ".join(ATTACK_NAMES.get(a, a) for a in paper["attacks"])
    return [f"- **Field protocol vs the paper's attacks** ({names}; robust-to-all, field vs paper, "
            f"on the same first images; the paper's over surrogate(s) "
            f"{', '.join(b['label'] for b in blocks)}): " + "; ".join(parts) + "."]


def field_section(results: Optional[dict], paper: Optional[dict] = None, level: str = "###",
                  base: str = BASE) -> List[str]:
    """The Markdown lines of the section (nothing when ``results`` is not a field run)."""
    if not is_field(results):
        return []
    f = results.get("field") or {}
    surrogates = [b["label"] for b in results_lib.surrogate_blocks(results)]
    per = len(results["attacks"])
    summaries = {t: target_summary(results, t) for t in _targets(results)}
    lines = [f"{level} Field protocol (DVERGE / TRS)", "",
             f"`evaluate --protocol=field`: {per} sets per ε on each of {len(surrogates)} "
             f"surrogate(s) ({', '.join(surrogates)}), {results['num_examples']} test images. Per "
             "ε: **robust to all** = correct on every set of every surrogate at that ε (DVERGE; in "
             "brackets also correct clean, TRS), then the **worst single set** (accuracy, which "
             "set); *ALL ε*: robust to every set at every ε. Accuracy %.", ""]
    lines += field_table(results, summaries) + [""]
    lines += paired_against_base(results, summaries, base)
    lines += against_paper(results, paper, summaries)
    sets = f.get("sets") or {}
    if sets:
        lines.append("- Sets: " + "; ".join(
            f"{s.get('display', k)} = {s['attack']} "
            + ", ".join(f"{o}={v}" for o, v in sorted(s.get("options", {}).items()))
            for k, s in sets.items()) + ".")
    red = f.get("reductions")
    lines.append("- Reductions and differences against DVERGE / TRS's protocol: "
                 + ("; ".join(red) if red else "none" if red is not None else
                    "not recorded (results written before field.reductions)") + ".")
    return lines + [""]


__all__ = ["AUTOATTACK_DIR", "FIELD_EVAL_DIR", "autoattack_results", "field_results", "field_section", "field_table", "is_field",
           "paired_against_base", "target_summary", "against_paper"]

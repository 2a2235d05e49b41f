"""The paper's claims checked on our numbers, cell by cell: the orderings of Table 2 and Fig. 4
with paired significance (:mod:`tf_divtrain.stats`), attacks that raise accuracy above clean, and
how far each target's cells are from the paper's."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from tf_divtrain import results as evaluation  # the results schema (no TensorFlow)
from tf_divtrain import stats as stats_lib
from tf_divtrain.results import eps_key
from tf_divtrain.report.analyses import gaas_check
from tf_divtrain.report.common import (ATTACK_NAMES, ATTACK_ORDER, NOT_RUN, PAPER_TABLE2,
                                       ROW_DATASET, TARGETS, pct, result_cells, target_rows)


def distance_from_paper(row: str, results: Optional[dict]) -> List[str]:
    """One line per target: how far our cells are from the paper's, ours - paper in percentage
    points (clean, then every attack cell at the paper's eps), on the main surrogate's rows."""
    from tf_divtrain.paper import TABLE2_EPS

    paper = PAPER_TABLE2.get(row, {})
    if not results or not paper:
        return []
    paper_eps = [eps_key(e) for e in TABLE2_EPS[ROW_DATASET.get(row, "mnist")]]
    ours = target_rows((results.get("by_surrogate") or [results])[0])
    parts = []
    for label in TARGETS:
        if label not in paper or label not in ours:
            continue
        clean, pairs = paper[label]
        r = ours[label]
        deltas = [100.0 * r["attacks"][a][e] - pairs[ATTACK_ORDER.index(a)][j]
                  for a in ATTACK_ORDER if a in r["attacks"]
                  for j, e in enumerate(paper_eps) if e in r["attacks"][a]]
        if not deltas:
            continue
        d = np.asarray(deltas)
        pp = lambda v: f"{round(float(v), 1) + 0.0:+.1f}"  # noqa: E731 (no "-0.0")
        parts.append(f"{label} clean {pp(100.0 * r['clean'] - clean)}, attacked cells mean "
                     f"|Δ| {np.abs(d).mean():.1f} ({len(d)} cells, {pp(d.min())} to {pp(d.max())})")
    if not parts:
        return []
    return ["Distance from the paper (ours − paper, percentage points, at the paper's eps): "
            + "; ".join(parts) + "."]


def coherence_check_extra(ens: dict, div: str, base: str) -> str:
    """The Fig. 4 check's qualifiers (issue 27): over how many defined examples, and the same
    check under the logit-margin gradients when the analysis has them."""
    cd, cb = ens[div]["coherence"], ens[base]["coherence"]
    out = ""
    if "vanishing" in cd and "vanishing" in cb:
        out += (f" Over the defined examples ({div} {cd['n']} of {cd['num_examples']}, {base} "
                f"{cb['n']} of {cb['num_examples']}).")
    md, mb = ens[div].get("coherence_margin") or {}, ens[base].get("coherence_margin") or {}
    if md.get("mean") is not None and mb.get("mean") is not None:
        out += (f" Logit-margin gradients: mean {md['mean']:.3f} vs {mb['mean']:.3f} — "
                f"{'holds' if md['mean'] < mb['mean'] else '**does not hold**'}.")
    return out


def ordering_checks(results: Optional[dict], analysis: Optional[dict]) -> List[str]:
    """Cell-by-cell statements of the paper's orderings; each line says holds / does not hold.
    A pair with a missing target is listed as not checked (never silently dropped)."""
    out = []
    ours = target_rows(results) if results else {}
    if not results:
        out.append(f"- **T_Div > T_Base**, **T_Ens+Div ≥ T_Ens** under attack: not checked — "
                   f"transfer evaluation {NOT_RUN}.")
    for better, worse, strict in (("T_Div", "T_Base", True), ("T_Ens+Div", "T_Ens", False)):
        rel = ">" if strict else "≥"
        if not results:
            continue
        if better not in ours or worse not in ours:
            missing = [t for t in (better, worse) if t not in ours]
            out.append(f"- **{better} {rel} {worse}** under attack: not checked — "
                       f"{', '.join(missing)} {NOT_RUN}.")
            continue
        held = total = 0
        sig_held = sig_failed = tested = 0
        cells, oks, p_values = [], [], []
        for a, e in result_cells(results):
            b, w = ours[better]["attacks"][a][e], ours[worse]["attacks"][a][e]
            ok = b > w if strict else b >= w
            held += ok
            total += 1
            oks.append(ok)
            cmp = evaluation.paired_cell(ours[better], ours[worse], a, e)
            if cmp is not None:
                tested += 1
                p_values.append(cmp["p_value"])
                sig = cmp["p_value"] < stats_lib.ALPHA
                sig_held += ok and sig
                sig_failed += (not ok) and sig
            cells.append(f"{ATTACK_NAMES[a]}@{e}: {pct(b)} vs {pct(w)} "
                         f"{'holds' if ok else '**does not hold**'}"
                         + (f" ({stats_lib.describe(cmp)})" if cmp is not None else ""))
        if tested == total:
            holm = [q < stats_lib.ALPHA for q in stats_lib.holm_adjusted(p_values)]
            holm_held = sum(ok and q for ok, q in zip(oks, holm))
            holm_failed = sum((not ok) and q for ok, q in zip(oks, holm))
            sig_text = (f" Paired on the same images (McNemar exact, two-sided, per cell, "
                        f"uncorrected): the difference is significant at p < {stats_lib.ALPHA:g} in "
                        f"{sig_held} of the {held} cells that hold and in {sig_failed} of the "
                        f"{total - held} that do not; after Holm's correction over the {total} "
                        f"cells: {holm_held} and {holm_failed}.")
        else:
            sig_text = " (No per-example results: re-run evaluate to test significance.)"
        out.append(f"- **{better} {rel} {worse}** under attack: holds in {held} of {total} cells."
                   + sig_text + " " + "; ".join(cells) + ".")
        cb, cw = ours[better]["clean"], ours[worse]["clean"]
        out.append(f"  Clean accuracy: {better} {pct(cb)} vs {worse} {pct(cw)} (the paper expects "
                   f"a small drop for the diverse ensemble).")
    ens = (analysis or {}).get("ensembles", {})
    coh = {k: v["coherence"].get("mean") for k, v in ens.items() if v.get("coherence")}
    gaas = {k: v["gaas"] for k, v in ens.items() if v.get("gaas")}
    for div, base in (("T_Div", "T_Base"), ("T_Ens+Div", "T_Ens")):
        if coh.get(div) is not None and coh.get(base) is not None:
            ok = coh[div] < coh[base]
            out.append(f"- **Lower coherence for {div} than {base}** (Fig. 4): mean "
                       f"{coh[div]:.3f} vs {coh[base]:.3f} — "
                       f"{'holds' if ok else '**does not hold**'}." + coherence_check_extra(ens, div, base))
        elif analysis is not None and (div in ours or base in ours or div in ens or base in ens):
            out.append(f"- **Lower coherence for {div} than {base}** (Fig. 4): not checked — "
                       f"coherence of {', '.join(t for t in (div, base) if coh.get(t) is None)} "
                       f"{NOT_RUN}.")
    for div, base in (("T_Div", "T_Base"), ("T_Ens+Div", "T_Ens")):
        if div in gaas and base in gaas:
            out.append(gaas_check(div, base, gaas[div], gaas[base]))
        elif div == "T_Div" and gaas:
            out.append(f"- **Fewer GAAS directions for {div} than {base}** (Fig. 5): not checked — "
                       f"GAAS of {', '.join(t for t in (div, base) if t not in gaas)} {NOT_RUN}.")
    return out


def above_clean_check(results: Optional[dict]) -> List[str]:
    """Every target cell whose accuracy under attack EXCEEDS the target's clean accuracy: the
    label-leaking signature (Kurakin et al. 2016, "Adversarial Machine Learning at Scale" §4.3:
    a model adversarially trained on one-step examples crafted with the true label learns to read
    the label from the perturbation). Each such cell is paired with clean accuracy on the same
    images (McNemar), so a 0.1-point excess within noise is told from a real one."""
    if not results:
        return []
    found = []
    for label, r in target_rows(results).items():
        for a, e in result_cells(results):
            acc = r["attacks"][a][e]
            if acc <= r["clean"]:
                continue
            clean = evaluation.per_example_mask(r)
            under = evaluation.per_example_mask(r, a, e)
            cmp = (stats_lib.paired_comparison(under, clean)
                   if clean is not None and under is not None else None)
            found.append(f"{label} {ATTACK_NAMES[a]}@{e}: {pct(acc)} vs {pct(r['clean'])} clean"
                         + (f" ({stats_lib.describe(cmp)})" if cmp is not None else ""))
    head = ("- **Accuracy under attack above clean accuracy** (the label-leaking signature, "
            "Kurakin et al. 2016; issue 12): ")
    if not found:
        return [head + "in no cell of any target."]
    return [head + f"{len(found)} cell(s): " + "; ".join(found) + "."]


def corrected_by_attack(results: Optional[dict]) -> List[str]:
    """Per image, the same signature: clean-MISclassified images a target classifies correctly
    under an attack. An untargeted attack crafted on another model fixes a few errors by chance (an
    unsure prediction flips under any perturbation; on the cpu-cifar rows the plain T_Base fixes
    15 of 272 under FGSM@0.09), so the reference is the targets never trained on adversarial
    examples: one that fixes many more of its clean errors under the one-step attacks than they do
    reads the true label from the perturbation (Kurakin et al. 2016) -- even when it loses more
    correct images than it fixes, so that its accuracy stays below clean and
    :func:`above_clean_check` stays silent."""
    if not results:
        return []
    parts, none = [], []
    for label, r in target_rows(results).items():
        clean = evaluation.per_example_mask(r)
        if clean is None:
            return []
        wrong = ~clean
        counts = []
        for a, e in result_cells(results):
            under = evaluation.per_example_mask(r, a, e)
            if under is None:
                return []
            fixed = int(np.sum(wrong & under))
            if fixed:
                counts.append(f"{ATTACK_NAMES[a]}@{e} {fixed}")
        if counts:
            parts.append(f"{label} ({int(wrong.sum())} clean errors): "
                         + ", ".join(counts))
        else:
            none.append(label)
    text = "; ".join(parts) if parts else "no target, in no cell"
    if parts and none:
        text += f"; none in any cell: {', '.join(none)}"
    return ["- **Clean errors the attack corrects** (images misclassified clean but classified "
            "correctly under attack). A few flip by chance, so compare the targets trained on "
            "adversarial examples with those that were not: many more under the one-step attacks "
            "is the per-image form of the same signature. " + text + "."]

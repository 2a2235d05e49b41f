"""Builds ``results/<preset>/REPORT.md`` from what run_all.sh produced.

``python -m tf_divtrain.report --preset=cpu --results_dir=results/cpu``

The ``cpu-methods`` preset (GAL next to ADP, DVERGE and TRS, several surrogates) gets its own report,
one comparison table: ``build_methods_report``.

Reads, per Table 2 row: the training runs' ``config.json`` / ``metrics.json`` (under ``work/``),
``<row>/eval/results.json`` (evaluate), ``<row>/analysis/analysis.json`` (analyze), the stage
timings ``stage_times.tsv``, and an optional hand-written ``notes.md`` (discussion). It states, cell
by cell, whether the paper's orderings hold. Every number comes from those files.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from typing import Dict, List, Optional, Sequence

from absl import app, flags, logging

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import cli_flags
from tf_divtrain import evaluation
from tf_divtrain import io_utils
from tf_divtrain import stats as stats_lib
from tf_divtrain.evaluation import eps_key as _eps_key

ROLES = (("surrogate", "S"), ("static", "static"), ("base", "T_Base"), ("div", "T_Div"),
         ("ens", "T_Ens"), ("ensdiv", "T_Ens+Div"))
TARGETS = ("T_Base", "T_Div", "T_Ens", "T_Ens+Div")
ATTACK_ORDER = attacks_lib.ATTACKS  # Table 2's column order
ATTACK_NAMES = attacks_lib.DISPLAY_NAMES
ROWS = {"mnist_conv3": "CONV-3 (MNIST)", "cifar10_conv4": "CONV-4 (CIFAR-10)",
        "cifar10_resnet20": "RESNET-20 (CIFAR-10)", "cifar10_mix": "MIX (CIFAR-10)"}

# The paper's Table 2 (accuracy %, "eps1 / eps2" pairs in ATTACK_ORDER), for side-by-side display.
PAPER_TABLE2 = {
    "mnist_conv3": {
        "T_Base": (99.4, [(91.4, 9.7), (92.0, 9.7), (86.1, 0.7), (85.7, 2.6), (92.3, 9.7)]),
        "T_Div": (99.2, [(97.1, 34.3), (97.8, 30.6), (97.6, 20.4), (96.9, 16.9), (97.1, 35.9)]),
        "T_Ens": (99.4, [(98.9, 61.3), (99.0, 42.5), (99.0, 56.3), (98.8, 45.9), (98.8, 44.8)]),
        "T_Ens+Div": (99.3, [(98.9, 73.7), (99.0, 79.3), (99.0, 87.0), (98.8, 61.4), (98.2, 71.3)]),
    },
    "cifar10_conv4": {
        "T_Base": (85.1, [(14.1, 7.8), (16.8, 3.2), (9.5, 2.8), (9.0, 7.4), (8.8, 5.9)]),
        "T_Div": (82.4, [(45.3, 14.7), (56.0, 15.1), (51.4, 5.6), (35.0, 7.5), (43.9, 11.6)]),
        "T_Ens": (82.9, [(64.6, 43.2), (70.5, 54.9), (69.4, 54.3), (59.9, 38.6), (62.1, 42.8)]),
        "T_Ens+Div": (80.5, [(68.5, 54.2), (72.0, 66.7), (72.4, 66.3), (66.9, 55.4), (66.9, 54.3)]),
    },
    "cifar10_resnet20": {
        "T_Base": (88.9, [(28.8, 13.1), (25.7, 7.1), (8.6, 3.2), (10.2, 6.3), (18.7, 10.2)]),
        "T_Div": (84.0, [(58.4, 32.4), (64.3, 23.9), (67.7, 44.2), (50.0, 11.7), (53.2, 25.4)]),
        "T_Ens": (87.9, [(70.9, 44.3), (77.2, 50.9), (79.6, 65.5), (66.5, 30.5), (65.9, 37.8)]),
        "T_Ens+Div": (84.7, [(74.9, 50.7), (78.1, 57.6), (79.7, 71.5), (74.1, 47.4), (71.3, 46.3)]),
    },
    "cifar10_mix": {
        "T_Base": (89.7, [(27.9, 9.6), (30.9, 6.1), (13.9, 3.1), (10.6, 5.9), (26.0, 7.6)]),
        "T_Div": (88.2, [(55.8, 23.2), (65.1, 25.0), (61.8, 19.7), (42.4, 7.1), (55.9, 22.2)]),
        "T_Ens": (87.4, [(72.6, 49.6), (76.9, 58.4), (77.1, 61.4), (66.9, 27.9), (70.0, 47.1)]),
        "T_Ens+Div": (86.4, [(73.4, 52.2), (77.9, 64.1), (77.2, 67.5), (69.2, 39.7), (71.8, 50.4)]),
    },
}
# The paper's training settings, to list every reduction a preset makes.
PAPER_EPOCHS = {"mnist_conv3": 10, "cifar10_conv4": 20, "cifar10_resnet20": 40, "cifar10_mix": 40}
PAPER_TEST_EXAMPLES = {"mnist": 10000, "cifar10": 10000}
ROW_DATASET = {"mnist_conv3": "mnist", "cifar10_conv4": "cifar10", "cifar10_resnet20": "cifar10",
               "cifar10_mix": "cifar10"}
TARGET_ROLES = {"T_Base": "base", "T_Div": "div", "T_Ens": "ens", "T_Ens+Div": "ensdiv"}
# Rows each run_all.sh preset is meant to produce: a planned row without outputs is shown as
# "not run". Other presets show only the rows that have outputs.
PRESET_ROWS = {"paper": tuple(ROWS), "mnist-paper": ("mnist_conv3",), "cpu": ("mnist_conv3",),
               "smoke": ("mnist_conv3",),
               "cpu-cifar": ("cifar10_conv4", "cifar10_resnet20", "cifar10_mix"),
               "smoke-cifar": ("cifar10_conv4",)}
# The paper's Fig. 5 orders (Section 4.4); 25 is not a Hadamard order (see hadamard_note).
PAPER_GAAS_K = (4, 25, 36, 64)
NOT_RUN = "not run"


def _load(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pct(v) -> str:
    return "—" if v is None else f"{100.0 * v:.1f}"


def _target_rows(results: dict) -> Dict[str, dict]:
    return {r["label"]: r for r in results["rows"] if r.get("role") == "target"}


def table2_side_by_side(row: str, results: Optional[dict]) -> str:
    """Our Table 2 row next to the paper's, one line each, same layout.

    When results.json has them: a ROBUST TO ALL column (correct under every attack, per eps and
    over all eps; the paper does not report it) and, with several surrogates (``by_surrogate``, e.g.
    an adaptive diverse one), one "ours vs <label>" line per surrogate. A target without results
    (or every target, when ``results`` is None) is shown as "not run".
    """
    if results:
        eps = [_eps_key(e) for e in results["eps"]]
        attacks = [a for a in ATTACK_ORDER if a in results["attacks"]]
        blocks = results.get("by_surrogate") or [{"label": "S", "rows": results["rows"]}]
    else:
        from tf_divtrain.evaluation import DEFAULT_EPS

        eps = [_eps_key(e) for e in DEFAULT_EPS[ROW_DATASET.get(row, "mnist")]]
        attacks = list(ATTACK_ORDER)
        blocks = []
    robust = any("robust_to_all" in r for b in blocks for r in b["rows"])
    head = (["TARGET", "source", "CLEAN"] + [ATTACK_NAMES[a] for a in attacks]
            + (["ROBUST TO ALL (all eps)"] if robust else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]

    def ours_line(label, source, r, bold=True):
        best = {e: min(r["attacks"][a][e] for a in attacks) for e in eps}
        cells = []
        for a in attacks:
            parts = [(f"**{_pct(r['attacks'][a][e])}**" if bold and r["attacks"][a][e] == best[e]
                      else _pct(r["attacks"][a][e])) for e in eps]
            cells.append(" / ".join(parts))
        if robust:
            rta = r.get("robust_to_all") or {}
            cells.append(" / ".join(_pct(rta.get(e)) for e in eps) + f" ({_pct(rta.get('all'))})")
        return "| " + " | ".join([label, source, _pct(r["clean"])] + cells) + " |"

    many = len(blocks) > 1  # then every "ours" line names its surrogate
    ours = [("ours vs " + b["label"] if many else "ours", _target_rows(b)) for b in blocks]
    paper = PAPER_TABLE2.get(row, {})
    for label in TARGETS:
        found = False
        for source, rows in ours:
            if label in rows:
                lines.append(ours_line(label, source, rows[label]))
                found = True
        if not found:
            lines.append("| " + " | ".join([label, "ours", NOT_RUN] + ["—"] * (len(attacks) + robust)) + " |")
        if label in paper:
            clean, pairs = paper[label]
            idx = [ATTACK_ORDER.index(a) for a in attacks]
            cells = [f"{pairs[i][0]} / {pairs[i][1]}" for i in idx] + (["—"] if robust else [])
            lines.append("| " + " | ".join([label, "paper", f"{clean}"] + cells) + " |")
    for b in blocks:
        for r in (r for r in b["rows"] if r.get("role") == "surrogate"):
            name = f"{b['label']} (white-box sanity)" if many else "S (white-box sanity)"
            lines.append(ours_line(name, "ours", r, bold=False))
            break
    return "\n".join(lines)


def ordering_checks(results: Optional[dict], analysis: Optional[dict]) -> List[str]:
    """Cell-by-cell statements of the paper's orderings; each line says holds / does not hold.
    A pair with a missing target is listed as not checked (never silently dropped)."""
    out = []
    ours = _target_rows(results) if results else {}
    eps = [_eps_key(e) for e in results["eps"]] if results else []
    attacks = [a for a in ATTACK_ORDER if a in results["attacks"]] if results else []
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
        cells = []
        for a in attacks:
            for e in eps:
                b, w = ours[better]["attacks"][a][e], ours[worse]["attacks"][a][e]
                ok = b > w if strict else b >= w
                held += ok
                total += 1
                cmp = _paired(ours[better], ours[worse], a, e)
                if cmp is not None:
                    tested += 1
                    sig = cmp["p_value"] < stats_lib.ALPHA
                    sig_held += ok and sig
                    sig_failed += (not ok) and sig
                cells.append(f"{ATTACK_NAMES[a]}@{e}: {_pct(b)} vs {_pct(w)} "
                             f"{'holds' if ok else '**does not hold**'}"
                             + (f" ({stats_lib.describe(cmp)})" if cmp is not None else ""))
        sig_text = (f" Paired on the same images (McNemar exact, two-sided, per cell, uncorrected): "
                    f"the difference is significant at p < {stats_lib.ALPHA:g} in {sig_held} of the "
                    f"{held} cells that hold and in {sig_failed} of the {total - held} that do not."
                    if tested == total else
                    " (No per-example results: re-run evaluate to test significance.)")
        out.append(f"- **{better} {rel} {worse}** under attack: holds in {held} of {total} cells."
                   + sig_text + " " + "; ".join(cells) + ".")
        cb, cw = ours[better]["clean"], ours[worse]["clean"]
        out.append(f"  Clean accuracy: {better} {_pct(cb)} vs {worse} {_pct(cw)} (the paper expects "
                   f"a small drop for the diverse ensemble).")
    ens = (analysis or {}).get("ensembles", {})
    coh = {k: v["coherence"].get("mean") for k, v in ens.items() if v.get("coherence")}
    gaas = {k: v["gaas"] for k, v in ens.items() if v.get("gaas")}
    for div, base in (("T_Div", "T_Base"), ("T_Ens+Div", "T_Ens")):
        if coh.get(div) is not None and coh.get(base) is not None:
            ok = coh[div] < coh[base]
            out.append(f"- **Lower coherence for {div} than {base}** (Fig. 4): mean "
                       f"{coh[div]:.3f} vs {coh[base]:.3f} — "
                       f"{'holds' if ok else '**does not hold**'}.")
        elif analysis is not None and (div in ours or base in ours or div in ens or base in ens):
            out.append(f"- **Lower coherence for {div} than {base}** (Fig. 4): not checked — "
                       f"coherence of {', '.join(t for t in (div, base) if coh.get(t) is None)} "
                       f"{NOT_RUN}.")
    for div, base in (("T_Div", "T_Base"), ("T_Ens+Div", "T_Ens")):
        if div in gaas and base in gaas:
            out.append(_gaas_check(div, base, gaas[div], gaas[base]))
        elif div == "T_Div" and gaas:
            out.append(f"- **Fewer GAAS directions for {div} than {base}** (Fig. 5): not checked — "
                       f"GAAS of {', '.join(t for t in (div, base) if t not in gaas)} {NOT_RUN}.")
    return out


def _paired(row_a: dict, row_b: dict, attack: str, eps: str) -> Optional[dict]:
    """Paired comparison of two targets' correctness on one cell, or None without per-example data."""
    ma = evaluation.per_example_mask(row_a, attack, eps)
    mb = evaluation.per_example_mask(row_b, attack, eps)
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    return stats_lib.paired_comparison(ma, mb)


def _gaas_check(div: str, base: str, gd: dict, gb: dict) -> str:
    """Fig. 5's ordering per (eps, k): P(all k directions adversarial) of ``div`` <= ``base``;
    ties are counted separately (at large k both are often 0); the mean number of adversarial
    directions (strictly fewer) is given as a tie-free companion."""
    cells, held, ties, fewer, total = [], 0, 0, 0, 0
    for e, per_k in gd["results"].items():
        for k, r in per_k.items():
            rb = gb["results"].get(e, {}).get(k)
            if rb is None or r.get("p_all") is None or rb.get("p_all") is None:
                cells.append(f"eps {e}, k={k}: not comparable (missing for {base})")
                continue
            ok = r["p_all"] <= rb["p_all"]
            tie = r["p_all"] == rb["p_all"]
            m_ok = (r.get("mean_num_adversarial") is not None and rb.get("mean_num_adversarial")
                    is not None and r["mean_num_adversarial"] < rb["mean_num_adversarial"])
            held += ok
            ties += tie
            fewer += m_ok
            total += 1
            cells.append(f"eps {e}, k={k}: {r['p_all']:.3f} vs {rb['p_all']:.3f} "
                         f"{'holds' + (' (tie)' if tie else '') if ok else '**does not hold**'}"
                         + (f", mean adv. directions {r['mean_num_adversarial']:.1f} vs "
                            f"{rb['mean_num_adversarial']:.1f}"
                            if r.get("mean_num_adversarial") is not None
                            and rb.get("mean_num_adversarial") is not None else ""))
    note = "" if div == "T_Div" else "; the paper's figure shows only T_Base and T_Div"
    return (f"- **Fewer GAAS directions for {div} than {base}** (Fig. 5{note}; probability that all "
            f"k directions are adversarial, ≤): holds in {held} of {total} cells ({ties} of them "
            f"ties); strictly fewer adversarial directions on average in {fewer} of {total}. "
            + "; ".join(cells) + ".")


def hadamard_note(ks: Sequence[int]) -> str:
    """How the paper's k = 25 is handled, with the regular-Hadamard property of every k we use
    re-checked on tf_divtrain.analysis's own matrices when the report is built."""
    import numpy as np

    from tf_divtrain import analysis as an

    checks = []
    for k in ks:
        h = an.regular_hadamard(int(k))
        ok = (set(np.unique(h).tolist()) <= {-1, 1}
              and np.array_equal(h @ h.T, int(k) * np.eye(int(k), dtype=h.dtype))
              and bool(np.all(h.sum(axis=1) == math.isqrt(int(k))))
              and math.isqrt(int(k)) ** 2 == int(k))
        checks.append(f"k = {k} {'passes' if ok else '**FAILS**'}")
    try:
        an.check_gaas_k(25)
        rejected = "**is accepted (unexpected)**"
    except an.AnalysisError:
        rejected = "raises an error"
    small = ", ".join(map(str, an.supported_hadamard_orders(100)))
    return ("**GAAS orders k and the paper's k = 25.** The paper (§4.4) uses k ∈ {4, 25, 36, 64} "
            "with \"a Regular Hadamard matrix of order k\". No Hadamard matrix of order 25 exists "
            "at all: for n > 2 a Hadamard matrix needs n divisible by 4, and 25 is odd. A *regular* "
            "one (every row sums to the same value, ±√n — GAAS needs this so that every direction "
            "has a positive inner product with sign(∇J)) additionally needs n to be a square, so "
            "n = 4u²: 4, 16, 36, 64, 100, … `tf_divtrain.analysis` constructs 4 = J − 2I, "
            "16 = H₄ ⊗ H₄, 36 = J − 2A of the Latin-square graph L₃(6) (strongly regular "
            "(36, 15, 6, 6)) and 64 = H₄ ⊗ H₁₆; up to order 100 it constructs exactly "
            f"{small}. We use k = {', '.join(map(str, ks))}: the paper's 4, 36 and 64, with 16 "
            "(the next regular order below 25) in place of 25. Checked when this report was "
            "built on the matrices the analysis uses (±1 entries, H Hᵀ = kI, every row sums to "
            f"+√k): {'; '.join(checks)}; `analysis.check_gaas_k(25)` {rejected}.")


def _run_metrics(work: str, role: str) -> Optional[dict]:
    """metrics.json of a training run: work/<row>/<role>/ or its committed copy <row>/train/<role>/."""
    row = os.path.basename(work.rstrip("/"))
    results_dir = os.path.dirname(os.path.dirname(work.rstrip("/")))
    return (_load(os.path.join(work, role, "metrics.json"))
            or _load(os.path.join(results_dir, row, "train", role, "metrics.json")))


def _training_table(work: str) -> List[str]:
    lines = ["| model | mode | members | steps | batch | clean acc (ensemble) | members' clean acc | "
             "GAL | coherence | mean cosine | img/s | train s |", "|" + "---|" * 12]
    for role, label in ROLES:
        m = _run_metrics(work, role)
        if not m:
            lines.append(f"| {label} | {NOT_RUN} |" + " — |" * 10)
            continue
        c, g = m["config"], m.get("test_gradient_stats") or {}
        fmt = lambda k: f"{g[k]:.3f}" if k in g else "—"  # noqa: E731
        lines.append(
            f"| {label} | {c['mode']} | {len(m['member_accuracy'])} | {m['steps']} | {c['batch_size']} | "
            f"{_pct(m['ensemble_accuracy'])} | {', '.join(_pct(a) for a in m['member_accuracy'])} | "
            f"{fmt('gal')} | {fmt('coherence')} | {fmt('mean_cosine')} | "
            f"{(m.get('images_per_sec_this_session') or 0):.0f} | {m['train_seconds_this_session']:.0f} |")
    return lines


def _all_metrics(work: str) -> Dict[str, dict]:
    """{label: metrics.json} of every training run of a row that exists (ROLES order)."""
    return {label: m for role, label in ROLES if (m := _run_metrics(work, role))}


def _reductions(row: str, work: str, results: Optional[dict], analysis: Optional[dict]) -> List[str]:
    out = []
    runs = _all_metrics(work)
    if runs:
        first = next(iter(runs.values()))
        c = first["config"]
        n_train = c.get("train_examples") or (50000 if c["dataset"] == "cifar10" else 60000)
        paper_ep = PAPER_EPOCHS.get(row)
        paper_txt = (f"the {paper_ep} epochs of our paper preset (the paper gives no epoch count for "
                     f"MIX; 40 is ResNet-20's)" if row == "cifar10_mix" else f"the paper's {paper_ep} epochs")
        lengths = {lbl: (m["steps"], m["config"]["batch_size"]) for lbl, m in runs.items()}
        reduced = any(m["config"].get("max_steps") for m in runs.values()) and paper_ep and any(
            st * bs / n_train < paper_ep - 1e-9 for st, bs in lengths.values())
        if reduced and len(set(lengths.values())) == 1:
            steps, bs = next(iter(lengths.values()))
            out.append(f"- Training length: {steps} steps of batch {bs} = {steps * bs / n_train:.2f} "
                       f"epochs per model instead of {paper_txt} (same for every model, so "
                       f"T_Base/T_Div and T_Ens/T_Ens+Div see the same number of steps).")
        elif reduced:
            per = ", ".join(f"{lbl} {st} steps of batch {bs} ({st * bs / n_train:.2f} epochs)"
                            for lbl, (st, bs) in lengths.items())
            tl = {lengths[t] for t in TARGETS if t in lengths}
            warn = ("" if len(tl) <= 1 else " **The targets trained different lengths: their "
                    "comparison is not like for like.**")
            out.append(f"- Training length instead of {paper_txt}: {per}.{warn}")
        precs = {lbl: m["config"].get("precision", "float32") for lbl, m in runs.items()}
        if set(precs.values()) != {"float32"}:
            which = ", ".join(f"{p} ({', '.join(l for l in precs if precs[l] == p)})"
                              for p in dict.fromkeys(precs.values()))
            out.append(f"- Training precision: {which}; the paper trained in float32. Evaluation, "
                       f"attacks and analyses ran in float32. The equivalence study "
                       f"(results/precision_study/REPORT.md) found no conclusion of the cpu preset "
                       f"changed by mixed_bfloat16.")
        if c.get("train_examples"):
            out.append(f"- Training set: first {c['train_examples']} examples instead of all.")
        sizes = sorted({len(m["member_accuracy"]) for lbl, m in runs.items() if lbl != "static"})
        if sizes and sizes != [5]:
            out.append(f"- Ensemble size {', '.join(map(str, sizes))} instead of 5.")
        missing = [t for t in TARGETS if t not in runs]
        if missing:
            extra = " and the static model" if "static" not in runs and "T_Ens" in missing else ""
            out.append(f"- Targets {NOT_RUN}: {', '.join(missing)}{extra} (their Table 2 lines "
                       f"show only the paper's numbers).")
    if results:
        full = PAPER_TEST_EXAMPLES.get(results["dataset"])
        if full and results["num_examples"] < full:
            out.append(f"- Transfer attacks: first {results['num_examples']} test images instead of "
                       f"the full test set ({full}).")
        left = [ATTACK_NAMES[a] for a in ATTACK_ORDER if a not in results["attacks"]]
        if left:
            out.append(f"- Attacks {NOT_RUN}: {', '.join(left)}.")
    if analysis:
        sub = analysis.get("subset_sizes", {})
        ran = analysis.get("analyses") or list(sub)
        names = {"coherence": "coherence", "gaas": "GAAS", "transfer": "transferability",
                 "whitebox": "white-box"}
        parts = [f"{names[a]} on {sub.get(a)} test images" for a in names if a in ran]
        skipped = [names[a] for a in names if a not in ran]
        out.append(f"- Analyses: {', '.join(parts)} (the paper does not state its subset sizes)"
                   + (f"; {NOT_RUN}: {', '.join(skipped)}" if skipped else "") + ".")
        st = analysis.get("settings", {})
        if "gaas" in ran and st.get("gaas_k"):
            out.append(f"- GAAS orders k = {', '.join(map(str, st['gaas_k']))} instead of the "
                       f"paper's {', '.join(map(str, PAPER_GAAS_K))} (no regular Hadamard matrix "
                       f"of order 25 exists; see the GAAS section), at eps "
                       f"{', '.join(f'{e:g}' for e in st.get('gaas_eps', []))}.")
    return out or ["- None: the paper's settings."]


def _coverage_table(rows: Sequence[str], results_dir: str) -> List[str]:
    """One line per row: which models were trained (steps), evaluated and analysed."""
    head = ["row"] + [lbl for _, lbl in ROLES] + ["Table 2 (images)", "analyses"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        w = os.path.join(results_dir, "work", row)
        cells = []
        for role, _ in ROLES:
            m = _run_metrics(w, role)
            cells.append(f"{m['steps']} steps" if m else NOT_RUN)
        res = _load(os.path.join(results_dir, row, "eval", "results.json"))
        an = _load(os.path.join(results_dir, row, "analysis", "analysis.json"))
        cells.append(f"{', '.join(sorted(_target_rows(res), key=TARGETS.index))} ({res['num_examples']})"
                     if res else NOT_RUN)
        cells.append(", ".join(an.get("analyses", [])) if an else NOT_RUN)
        lines.append("| " + " | ".join([ROWS[row]] + cells) + " |")
    return lines


def _analysis_sections(analysis: dict, rel: str) -> List[str]:
    out = []
    ens = analysis.get("ensembles", {})
    if any("coherence" in v for v in ens.values()):
        out += ["### Coherence of member input gradients (Fig. 4)", "",
                f"![coherence histogram]({rel}/coherence_hist.png)", "",
                "| ensemble | n | mean | median | q25 | q75 |", "|---|---|---|---|---|---|"]
        for label, v in ens.items():
            c = v.get("coherence")
            if c:
                out.append(f"| {label} | {c['n']} | {c['mean']:.3f} | {c['median']:.3f} | "
                           f"{c['q25']:.3f} | {c['q75']:.3f} |")
        out.append("")
    gaas = {k: v["gaas"] for k, v in ens.items() if v.get("gaas")}
    if gaas:
        any_g = next(iter(gaas.values()))
        ks = list(next(iter(any_g["results"].values())))
        out += ["### Gradient-aligned adversarial subspace (Fig. 5)", "",
                f"![GAAS]({rel}/gaas.png)", "", f"Definition: {any_g.get('definition', '')}", "",
                hadamard_note([int(k) for k in ks]), "",
                "| ensemble | correct / examples | eps | " + " | ".join(f"k={k}" for k in ks) + " |",
                "|---|---|---|" + "---|" * len(ks)]

        def cell(r):
            if r is None or r.get("p_all") is None:
                return "—"
            return f"{r['p_all']:.3f} (mean {r['mean_num_adversarial']:.1f} adv.)"

        for label, g in gaas.items():
            for e, per_k in g["results"].items():
                out.append(f"| {label} | {g.get('num_correct', '?')} / {g.get('num_examples', '?')} "
                           f"| {e} | " + " | ".join(cell(per_k.get(k)) for k in ks) + " |")
        out.append("")
    tms = {k: v["transfer"] for k, v in ens.items() if v.get("transfer")}
    if tms:
        out += ["### Transferability between members", ""]
        first = next(iter(tms.values()))
        out.append(f"{first.get('definition', '')} PGD, eps {first['eps']}, {first['nb_iter']} "
                   f"iterations. Lower off-diagonal values = less transfer inside the ensemble.")
        out.append("")
        for label, tm in tms.items():
            mod = tm.get("mean_off_diagonal")
            mod = ("n/a: no example that two members both classify correctly" if mod is None
                   else f"{mod:.3f}")
            out.append(f"**{label}** (mean off-diagonal {mod}): "
                       f"![transfer {label}]({rel}/transfer_{_safe(label)}.png)")
            out.append("")
            n = len(tm["matrix"])
            out.append("| crafted on \\ evaluated on | " + " | ".join(f"m{j}" for j in range(n)) + " |")
            out.append("|---|" + "---|" * n)
            for i, r in enumerate(tm["matrix"]):
                out.append(f"| m{i} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in r) + " |")
            out.append("")
    wbs = {k: v["whitebox"] for k, v in ens.items() if v.get("whitebox")}
    if wbs:
        first = next(iter(wbs.values()))
        eps_w = list(first["adversarial_accuracy"])
        two = "adversarial_accuracy_prediction_ce" in first
        out += ["### White-box check (each target attacked directly)", "",
                f"PGD-{first['nb_iter']} with random start (step {first['step_factor']:g}·ε/iters) on "
                "(a) the average member CE — the paper's attack objective" +
                (" — and (b) the CE of the ensemble's prediction, −log mean softmax. Misaligned "
                 "member gradients can cancel in (a), so (b) is the stronger check for diverse "
                 "ensembles" if two else "") +
                ". Diversity Training claims only black-box robustness: near-clean worst-case "
                "accuracy would signal gradient masking.", ""]
        cols = [f"(a) PGD@{e}" for e in eps_w] + ([f"(b) PGD@{e}" for e in eps_w] if two else [])
        out += ["| ensemble | clean | " + " | ".join(cols) + " | masking suspected |",
                "|---|---|" + "---|" * (len(cols) + 1)]
        for label, wb in wbs.items():
            vals = [wb["adversarial_accuracy"][e] for e in eps_w]
            if two:
                vals += [wb["adversarial_accuracy_prediction_ce"][e] for e in eps_w]
            flag = ("**yes** (ε " + ", ".join(wb.get("masking_eps", [])) + ")"
                    if wb["gradient_masking_suspected"] else "no")
            out.append(f"| {label} | {_pct(wb['clean_accuracy'])} | " +
                       " | ".join(_pct(v) for v in vals) + f" | {flag} |")
        out.append("")
    if analysis.get("warnings"):
        out += ["Warnings from the analysis:", ""] + [f"- {w}" for w in analysis["warnings"]] + [""]
    return out


def _safe(label: str) -> str:
    from tf_divtrain.analysis import safe_label

    return safe_label(label)


def _stage_table(results_dir: str) -> List[str]:
    path = os.path.join(results_dir, "stage_times.tsv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = [l.rstrip("\n").split("\t") for l in f][1:]
    # A stage re-run after its outputs were removed appears twice: report its latest run.
    latest = {r[0]: r for r in rows}
    rows = [r for r in rows if latest[r[0]] is r]
    out = ["| stage | seconds | status | command |", "|---|---|---|---|"]
    total = 0
    for name, secs, status, cmd in rows:
        total += int(secs) if status == "ok" else 0
        out.append(f"| {name} | {secs} | {status} | `{cmd}` |")
    out.append(f"| **total (ok stages)** | {total} ({total / 60:.1f} min) | | |")
    return out


def _versions() -> str:
    import numpy as np
    import tensorflow as tf

    parts = [f"Python {platform.python_version()}", f"TensorFlow {tf.__version__}",
             f"NumPy {np.__version__}"]
    for mod in ("keras", "cleverhans", "matplotlib"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001 -- a version string is best effort
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts.append(f"CPU {cpu}, {os.cpu_count()} cores")
    return ", ".join(parts)


def _row_outputs(results_dir: str, row: str):
    w = os.path.join(results_dir, "work", row)
    results = _load(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = _load(os.path.join(results_dir, row, "analysis", "analysis.json"))
    return w, results, analysis, bool(_all_metrics(w) or results or analysis)


def build_report(preset: str, results_dir: str) -> str:
    if preset in METHODS_PRESETS:
        return build_methods_report(preset, results_dir)
    lines = [f"# Diversity Training reproduction — preset `{preset}`", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"`python -m tf_divtrain.report` from the files run_all.sh wrote; every number below "
             f"is read from those files.", "", f"Software and machine: {_versions()}.", ""]
    notes = os.path.join(results_dir, "notes.md")
    planned = PRESET_ROWS.get(preset, ())
    rows = [r for r in ROWS if r in planned or _row_outputs(results_dir, r)[3]]
    if len(rows) > 1 or any(not _row_outputs(results_dir, r)[3] for r in rows):
        lines += ["## Coverage", "", "Steps each model trained, targets and test images of the "
                  f"transfer evaluation, analyses run; \"{NOT_RUN}\" = no output found.", ""]
        lines += _coverage_table(rows, results_dir) + [""]
    for row in rows:
        w, results, analysis, ran = _row_outputs(results_dir, row)
        lines += [f"## {ROWS[row]}", ""]
        if not ran:
            lines += [f"**{NOT_RUN.capitalize()}**: no training run, evaluation or analysis of this "
                      f"row was found (`work/{row}/`, `{row}/eval/`, `{row}/analysis/`). The paper's "
                      "numbers for reference:", "", table2_side_by_side(row, None), ""]
            continue
        lines += ["### Reductions against the paper", ""]
        lines += _reductions(row, w, results, analysis) + [""]
        lines += ["### Training runs", ""] + _training_table(w) + [""]
        lines += ["GAL / coherence / mean cosine: input-gradient statistics of the members on the "
                  "first min(500, eval_examples) test images after training (inference mode).", ""]
        lines += ["### Table 2 row: accuracy (%) under transfer attacks, ours next to the paper's", ""]
        if results:
            lines += [f"eps = {' / '.join(_eps_key(e) for e in results['eps'])}; attacks crafted on "
                      f"the surrogate S ({results['num_examples']} test images, seed {results['seed']}); "
                      "bold = most successful attack per eps for our rows.", "",
                      table2_side_by_side(row, results), ""]
            cr = results.get("crafting", {})
            if cr:
                lines += ["Crafting speed on the surrogate: " + "; ".join(
                    f"{ATTACK_NAMES.get(a, a)}@{e}: {v['images_per_sec']:.0f} img/s"
                    + (" (first crafting run; reused from the cache here)" if v.get("cached") else "")
                    for a, per in cr.items() for e, v in per.items() if v.get("images_per_sec")) + ".", ""]
        else:
            lines += [f"Transfer evaluation {NOT_RUN}; the paper's numbers for reference:", "",
                      table2_side_by_side(row, None), ""]
        lines += ["### Do the paper's orderings hold?", ""]
        lines += ordering_checks(results, analysis) + [""]
        if analysis:
            lines += _analysis_sections(analysis, f"{row}/analysis")
        else:
            lines += [f"Analyses (coherence, GAAS, transferability, white-box): {NOT_RUN}.", ""]
    if os.path.isfile(notes):
        with open(notes) as f:
            lines += ["## Discussion", "", f.read().strip(), ""]
    st = _stage_table(results_dir)
    if st:
        lines += ["## Stages: commands and wall time", ""] + st + [""]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# The cpu-methods preset: GAL next to the peer methods (issue 14), several surrogates.

METHODS_PRESETS = ("cpu-methods",)
METHODS_ROW = "mnist_conv3"
# (work dir name, label, what it is); the order of the table.
METHOD_TARGETS = (("base", "T_Base", "baseline (CE only)"), ("div", "T_Div", "GAL, Diversity Training"),
                  ("adp", "T_ADP", "ADP, Pang et al. 2019"), ("dverge", "T_DVERGE", "DVERGE, Yang et al. 2020"),
                  ("trs", "T_TRS", "TRS, Yang et al. 2021"))
METHOD_SURROGATES = (("s3", "S3", "baseline, 3 members"), ("s5", "S5", "baseline, 5 members"),
                     ("s8", "S8", "baseline, 8 members"),
                     ("sdiv", "S_div", "GAL-trained, 5 members (adaptive attacker)"))
# A 15-minute load average above this many times the core count when a training finished: the
# machine was shared with other jobs (one training alone keeps the load near the core count).
SHARED_LOAD_FACTOR = 1.5


def _loadavg(results_dir: str, row: str, name: str) -> Optional[List[float]]:
    path = os.path.join(results_dir, row, "train", name, "loadavg.txt")
    try:
        with open(path) as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def _step_cost(m: Optional[dict], load: Optional[List[float]]) -> str:
    """Seconds per training step of the last session (batch / images per second), with the load."""
    if not m or not m.get("images_per_sec_this_session"):
        return NOT_RUN
    bs = m["config"]["batch_size"]
    sec = bs / m["images_per_sec_this_session"]
    session_steps = round(m.get("train_seconds_this_session", 0.0) / sec) if sec else 0
    note = [] if session_steps >= m["steps"] else [f"last session: {session_steps} of {m['steps']} steps"]
    if load:
        shared = load[2] > SHARED_LOAD_FACTOR * (os.cpu_count() or 1)
        note.append(f"load {load[2]:.1f}{', shared' if shared else ''}")
    return f"{sec:.2f}" + (f" ({'; '.join(note)})" if note else "")


def _eps_pair(d: Optional[dict], eps: Sequence[str]) -> str:
    if not d:
        return NOT_RUN
    return " / ".join(_pct(d.get(e)) for e in eps)


def _method_settings(m: dict) -> str:
    """The resolved hyper-parameters of a method run (defaults + its method_params)."""
    c = m["config"]
    if c.get("mode") in ("baseline",):
        return "CE only"
    if c.get("mode") == "div":
        return f"λ = {c.get('gal_lambda')}, D_noise ε = {c.get('noise_eps')}"
    try:
        from tf_divtrain import methods

        cfg = methods.config_from_string(c["mode"], c.get("method_params", ""))
    except (KeyError, ValueError) as e:
        return f"unreadable ({e})"
    import dataclasses

    return ", ".join(f"{k} = {v}" for k, v in dataclasses.asdict(cfg).items())


def methods_table(results_dir: str, row: str = METHODS_ROW) -> List[str]:
    """One line per (target, surrogate): clean accuracy, the Table 2 cells, robust-to-all, and the
    target's coherence, member transferability, white-box PGD and training cost (repeated on each of
    its lines). Anything missing is "not run"."""
    w = os.path.join(results_dir, "work", row)
    results = _load(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = _load(os.path.join(results_dir, row, "analysis", "analysis.json")) or {}
    ens = analysis.get("ensembles", {})
    from tf_divtrain.evaluation import DEFAULT_EPS, surrogate_blocks

    if results:
        eps = [_eps_key(e) for e in results["eps"]]
        attacks = [a for a in ATTACK_ORDER if a in results["attacks"]]
        blocks = [(b["label"], _target_rows(b)) for b in surrogate_blocks(results)]
    else:
        eps = [_eps_key(e) for e in DEFAULT_EPS["mnist"]]
        attacks, blocks = list(ATTACK_ORDER), []
    planned = [lbl for _, lbl, _ in METHOD_SURROGATES]
    labels = planned + [lbl for lbl, _ in blocks if lbl not in planned]
    wb_eps = [_eps_key(e) for e in analysis.get("settings", {}).get("whitebox_eps", [])] or eps
    head = (["target", "method", "surrogate", "clean"] + [f"{ATTACK_NAMES[a]} ({' / '.join(eps)})" for a in attacks]
            + [f"robust to all ({' / '.join(eps)}; all)", "coherence", "member transfer",
               f"white-box PGD ({' / '.join(wb_eps)})", "s / step"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label, what in METHOD_TARGETS:
        m = _run_metrics(w, name)
        a = ens.get(label, {})
        coh = a.get("coherence", {}).get("mean") if a.get("coherence") else None
        tr = a.get("transfer") or {}
        wb = a.get("whitebox") or {}
        tail = [f"{coh:.3f}" if coh is not None else NOT_RUN,
                (f"{tr['mean_off_diagonal']:.3f}" if tr.get("mean_off_diagonal") is not None
                 else ("n/a" if tr else NOT_RUN)),
                _eps_pair(wb.get("worst_case_accuracy") or wb.get("adversarial_accuracy"), wb_eps),
                _step_cost(m, _loadavg(results_dir, row, name))]
        # Clean accuracy on the evaluation's images (the same in every block), else metrics.json's.
        evaluated = [rows[label] for _, rows in blocks if label in rows]
        clean = evaluated[0]["clean"] if evaluated else (m["ensemble_accuracy"] if m else None)
        for s_label in labels:
            r = dict(blocks).get(s_label, {}).get(label)
            cells = ([_pct(clean) if clean is not None else NOT_RUN]
                     + ([_eps_pair(r["attacks"].get(at), eps) for at in attacks] if r
                        else [NOT_RUN] * len(attacks)))
            rta = (r or {}).get("robust_to_all")
            cells.append(f"{_eps_pair(rta, eps)} ({_pct(rta.get('all'))})" if rta else NOT_RUN)
            lines.append("| " + " | ".join([label, what, s_label] + cells + tail) + " |")
    return lines


def _methods_training_table(results_dir: str, row: str) -> List[str]:
    w = os.path.join(results_dir, "work", row)
    lines = ["| model | role | mode | members | seed | steps | batch | clean acc | GAL | coherence | "
             "s / step | settings |", "|" + "---|" * 12]
    for name, label, what in METHOD_TARGETS + METHOD_SURROGATES:
        m = _run_metrics(w, name)
        role = "target" if any(name == n for n, _, _ in METHOD_TARGETS) else f"surrogate: {what}"
        if not m:
            lines.append(f"| {label} | {role} | {NOT_RUN} |" + " — |" * 9)
            continue
        c, g = m["config"], m.get("test_gradient_stats") or {}
        fmt = lambda k: f"{g[k]:.3f}" if k in g else "—"  # noqa: E731
        cells = [label, role, c["mode"], len(m["member_accuracy"]), c.get("seed"), m["steps"],
                 c["batch_size"], _pct(m["ensemble_accuracy"]), fmt("gal"), fmt("coherence"),
                 _step_cost(m, _loadavg(results_dir, row, name)), _method_settings(m)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def _methods_setup(results_dir: str, row: str) -> List[str]:
    w = os.path.join(results_dir, "work", row)
    runs = {label: m for name, label, _ in METHOD_TARGETS + METHOD_SURROGATES if (m := _run_metrics(w, name))}
    results = _load(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = _load(os.path.join(results_dir, row, "analysis", "analysis.json"))
    out = []
    if runs:
        lengths = sorted({(m["steps"], m["config"]["batch_size"]) for m in runs.values()})
        c = next(iter(runs.values()))["config"]
        n_train = c.get("train_examples") or 60000
        out.append("- Training: " + "; ".join(f"{st} steps of batch {bs} ({st * bs / n_train:.2f} epochs)"
                                             for st, bs in lengths)
                   + f" of MNIST, Conv-3 members, Adam lr {c['learning_rate']:g}; the paper (and the "
                   "flagfiles) train 10 epochs."
                   + (" **The models trained different lengths.**" if len(lengths) > 1 else ""))
        seeds = {runs[lbl]["config"].get("seed") for _, lbl, _ in METHOD_TARGETS if lbl in runs}
        out.append(f"- Targets: every trained target starts from the same seed-{seeds.pop()} initial "
                   "weights." if len(seeds) == 1 else
                   f"- Targets: **different seeds ({sorted(seeds, key=str)}), so different initial "
                   "weights**.")
        trs_m = runs.get("T_TRS")
        if trs_m:
            tc = trs_m["config"]
            spe = max(1, n_train // tc["batch_size"])
            seen = -(-trs_m["steps"] // spe)
            span = max(tc["epochs"], seen)
            try:
                from tf_divtrain import methods

                cfg = methods.config_from_string("trs", tc.get("method_params", ""))
                radii = sorted({round(cfg.smooth_eps(e, span), 4) for e in range(seen)})
                out.append(f"- TRS's PGD radius ramps per epoch over --epochs={tc['epochs']}; these "
                           f"{trs_m['steps']} steps cover epoch(s) 0-{seen - 1}, so the radius was "
                           f"{', '.join(map(str, radii))} (of {cfg.init_eps} → {cfg.adv_eps}).")
            except ValueError:
                pass
    else:
        out.append(f"- Training: {NOT_RUN}.")
    if results:
        out.append(f"- Transfer attacks: the five Table 2 attacks at ε = "
                   f"{' / '.join(_eps_key(e) for e in results['eps'])} on the first "
                   f"{results['num_examples']} test images, crafted on each surrogate (one block each).")
    else:
        out.append(f"- Transfer evaluation: {NOT_RUN}.")
    if analysis:
        sub, st = analysis.get("subset_sizes", {}), analysis.get("settings", {})
        out.append(f"- Analyses: coherence on {sub.get('coherence', '—')} test images; member "
                   f"transferability on {sub.get('transfer', '—')} (PGD ε {st.get('transfer_eps', '—')}, "
                   f"{st.get('transfer_iters', '—')} iterations); white-box PGD on "
                   f"{sub.get('whitebox', '—')} ({st.get('whitebox_iters', '—')} iterations).")
    else:
        out.append(f"- Analyses (coherence, member transferability, white-box PGD): {NOT_RUN}.")
    return out


def build_methods_report(preset: str, results_dir: str) -> str:
    """``REPORT.md`` of the cpu-methods preset: one comparison table (``methods_table``)."""
    row = METHODS_ROW
    cores = os.cpu_count() or 1
    lines = [f"# GAL next to ADP, DVERGE and TRS — preset `{preset}`", "",
             f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"`python -m tf_divtrain.report` from the files run_all.sh wrote; every number below is "
             f"read from those files; \"{NOT_RUN}\" = no output found.", "",
             f"Software and machine: {_versions()}.", "", "## Setup", ""]
    lines += _methods_setup(results_dir, row) + [""]
    lines += ["## Comparison (accuracy %, MNIST Conv-3, 5 members)", "",
              "Each target has one line per surrogate (S3 / S5 / S8: baseline ensembles of 3, 5, 8 "
              "members with their own seeds; S_div: a GAL-trained 5-member ensemble, an attacker who "
              "uses the defense itself). *clean*: accuracy on the evaluation's test images; attack "
              "columns: accuracy under the transfer attack at each ε (Table 2's cells); *robust to "
              "all*: correct under every attack at that ε (and under all of them at every ε). The last "
              "four columns describe the target itself and repeat on each of its lines: *coherence* "
              "(Eq 7, mean over test images, lower = more diverse input gradients), *member transfer* "
              "(mean off-diagonal of the member-to-member PGD transfer matrix, lower = members fooled "
              "less by each other's adversarial examples), *white-box PGD* (the worse of PGD on the "
              "average member CE and on the ensemble prediction's CE), and *s / step*: wall seconds per "
              "training step (batch / images per second of the last training session, so it includes "
              "the loop's logging and checkpoints) measured on this machine "
              f"({cores} cores), with the 15-minute load average when the training finished — "
              f"\"shared\" when it exceeded {SHARED_LOAD_FACTOR:g} × the core count, i.e. other jobs "
              "ran alongside and the time is inflated.", ""]
    lines += methods_table(results_dir, row) + [""]
    lines += ["## Training runs", ""] + _methods_training_table(results_dir, row) + [""]
    lines += ["GAL / coherence: input-gradient statistics of the members on the first 500 test images "
              "after training (metrics.json). Settings: each run's resolved hyper-parameters "
              "(authors' defaults + its --method_params).", ""]
    lines += ["## What differs from the authors' setups", "",
              "- ADP, DVERGE and TRS train on {D′} (this package's augmented clean images, like "
              "T_Base; T_Div on {D′, D_noise} as in the paper), with the same optimiser (Adam), batch, "
              "ensemble size and number of steps as T_Base and T_Div; the authors' optimisers, "
              "schedules, ensemble sizes and training lengths are not reproduced.",
              "- DVERGE trains from scratch (the authors start from a pre-trained baseline by "
              "default); its distillation target for each image is another image of the same batch "
              "(a seeded derangement) instead of a second, independently shuffled batch; the layer "
              "is drawn per epoch from Conv-3's pre-activation features and logits.",
              "- TRS and DVERGE run their inner PGD / distillation with the members in inference mode.",
              "- The formulas, defaults and every other deviation are listed in the docstrings of "
              "`tf_divtrain/methods/{adp,trs,dverge}.py` and `tf_divtrain/methods/objective.py`.", ""]
    notes = os.path.join(results_dir, "notes.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            lines += ["## Discussion", "", f.read().strip(), ""]
    st = _stage_table(results_dir)
    if st:
        lines += ["## Stages: commands and wall time", ""] + st + [""]
    return "\n".join(lines).rstrip() + "\n"


FLAGS = flags.FLAGS


def define_flags(fv=FLAGS):
    """Defined by ``run()``, not at import: importing this module must not add required flags to
    a process that parses its own (tests, notebooks, other CLIs)."""
    flags.DEFINE_string("preset", "cpu", "Preset name (for the title).", flag_values=fv)
    flags.DEFINE_string("results_dir", None, "results/<preset> directory written by run_all.sh.",
                        flag_values=fv)
    flags.mark_flag_as_required("results_dir", flag_values=fv)


def main(argv, fv: flags.FlagValues = None):
    """Writes <results_dir>/REPORT.md for the flags in ``fv`` (default: the global FLAGS)."""
    fv = fv if fv is not None else FLAGS
    if len(argv) > 1:
        cli_flags.fail(f"unexpected arguments {argv[1:]}")
    if not os.path.isdir(fv.results_dir):
        cli_flags.fail(f"{fv.results_dir} does not exist; run run_all.sh first.")
    text = build_report(fv.preset, fv.results_dir)
    path = os.path.join(fv.results_dir, "REPORT.md")
    io_utils.atomic_write_text(path, text)
    logging.info("wrote %s", path)
    return 0


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()

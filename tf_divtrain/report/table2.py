"""The Table 2 report: our rows next to the paper's, every reduction listed, the paper's orderings
checked cell by cell (:mod:`tf_divtrain.report.checks`)."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from tf_divtrain.results import attack_options_text, eps_key
from tf_divtrain.report.analyses import analysis_sections, autoattack_section
from tf_divtrain.report.checks import (  # noqa: F401 (re-exported)
    above_clean_check, coherence_check_extra, corrected_by_attack, distance_from_paper,
    ordering_checks)
from tf_divtrain.report.field import autoattack_results, field_results, field_section, is_field
from tf_divtrain.report.common import (ATTACK_NAMES, ATTACK_ORDER, NOT_RUN, PAPER_EPOCHS,
                                       PAPER_GAAS_K, PAPER_TABLE2, PAPER_TEST_EXAMPLES, PRESET_ROWS,
                                       ROLES, ROW_DATASET, ROWS, TARGETS, all_metrics, footer,
                                       header, load_json, pct, run_metrics,
                                       target_rows)


def table2_side_by_side(row: str, results: Optional[dict]) -> str:
    """Our Table 2 row next to the paper's, one line each, same layout.

    When results.json has them: a ROBUST TO ALL column (correct under every attack, per eps and
    over all eps; the paper does not report it) and, with several surrogates (``by_surrogate``, e.g.
    an adaptive diverse one), one "ours vs <label>" line per surrogate. A target without results
    (or every target, when ``results`` is None) is shown as "not run".
    """
    if results:
        eps = [eps_key(e) for e in results["eps"]]
        attacks = [a for a in ATTACK_ORDER if a in results["attacks"]]
        blocks = results.get("by_surrogate") or [{"label": "S", "rows": results["rows"]}]
    else:
        from tf_divtrain.paper import TABLE2_EPS as DEFAULT_EPS

        eps = [eps_key(e) for e in DEFAULT_EPS[ROW_DATASET.get(row, "mnist")]]
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
            parts = [(f"**{pct(r['attacks'][a][e])}**" if bold and r["attacks"][a][e] == best[e]
                      else pct(r["attacks"][a][e])) for e in eps]
            cells.append(" / ".join(parts))
        if robust:
            rta = r.get("robust_to_all") or {}
            cells.append(" / ".join(pct(rta.get(e)) for e in eps) + f" ({pct(rta.get('all'))})")
        return "| " + " | ".join([label, source, pct(r["clean"])] + cells) + " |"

    many = len(blocks) > 1  # then every "ours" line names its surrogate
    ours = [("ours vs " + b["label"] if many else "ours", target_rows(b)) for b in blocks]
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


def member_table(results_dir: str, row: str) -> List[str]:
    """``<row>/eval/member_accuracy.json`` (``tf_divtrain.experiments.member_accuracy``, the ``members_<row>``
    stage): per target and cell, the ensemble's accuracy next to its members' mean. The gap is what
    averaging the members adds; where an ordering fails it tells weaker members from less
    diversity. Nothing when the stage has not run."""
    res = load_json(os.path.join(results_dir, row, "eval", "member_accuracy.json"))
    if not res or not res.get("targets"):
        return []
    cells = list(next(iter(res["targets"].values()))["cells"])
    head = ["target", "clean"] + [f"{ATTACK_NAMES.get(c.split('@')[0], c)} {c.split('@')[-1]}"
                                  for c in cells]
    lines = ["### Member by member", "",
             f"Accuracy % of the ensemble / the mean of its members, on the evaluation's own "
             f"{res['num_examples']:,} images and examples (`tf_divtrain.experiments.member_accuracy`; each "
             f"member and the fooled / corrected images per cell: "
             f"[member_accuracy.md]({row}/eval/member_accuracy.md)).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, b in res["targets"].items():
        vals = [b["clean"]] + [b["cells"][c] for c in cells]
        lines.append(f"| {t} | " + " | ".join(f"{pct(v['ensemble'])} / {pct(v['mean_member'])}"
                                             for v in vals) + " |")
    return lines + [""]


def training_table(work: str) -> List[str]:
    lines = ["| model | mode | members | steps | batch | clean acc (ensemble) | members' clean acc | "
             "GAL | coherence | mean cosine | img/s | train s |", "|" + "---|" * 12]
    resumed = False
    for role, label in ROLES:
        m = run_metrics(work, role)
        if not m:
            lines.append(f"| {label} | {NOT_RUN} |" + " — |" * 10)
            continue
        c, g = m["config"], m.get("test_gradient_stats") or {}
        fmt = lambda k: f"{g[k]:.3f}" if g.get(k) is not None else "—"  # noqa: E731
        vanish = (f" ({g['vanishing_examples']} of {g['examples']} vanishing)"
                  if g.get("vanishing_examples") else "")
        lines.append(
            f"| {label} | {c['mode']} | {len(m['member_accuracy'])} | {m['steps']} | {c['batch_size']} | "
            f"{pct(m['ensemble_accuracy'])} | {', '.join(pct(a) for a in m['member_accuracy'])} | "
            f"{fmt('gal')} | {fmt('coherence')}{vanish} | {fmt('mean_cosine')} | "
            f"{(m.get('images_per_sec_this_session') or 0):.0f} | {train_seconds_text(m)} |")
        resumed = resumed or m.get("train_sessions") != 1
    if resumed:
        lines += ["", "train s: training time over every session of a run (a resumed run: "
                      "\"over k sessions\"); \"last session\" where the run predates that record "
                      "(its earlier sessions' time is not known to metrics.json). img/s: the last "
                      "session's."]
    return lines


def train_seconds_text(m: dict) -> str:
    """The training time of a run: all its sessions' (``train_seconds_total``), or the last
    session's where metrics.json has no total (written before it was recorded, or resumed from
    a checkpoint without a record)."""
    total, n = m.get("train_seconds_total"), m.get("train_sessions")
    if total is None:
        return f"{m['train_seconds_this_session']:.0f} (last session)"
    return f"{total:.0f}" + (f" over {n} sessions" if n and n > 1 else "")


def reductions(row: str, work: str, results: Optional[dict], analysis: Optional[dict]) -> List[str]:
    out = []
    runs = all_metrics(work)
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
                       f"(results/studies/precision_study/REPORT.md) found no conclusion of the cpu preset "
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
        opts = attack_options_text(results, ATTACK_NAMES)
        if opts:
            out.append(f"- Attack settings instead of the paper's: {opts}.")
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


def coverage_table(rows: Sequence[str], results_dir: str) -> List[str]:
    """One line per row: which models were trained (steps), evaluated and analysed."""
    head = ["row"] + [lbl for _, lbl in ROLES] + ["Table 2 (images)", "analyses"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        w = os.path.join(results_dir, "work", row)
        cells = []
        for role, _ in ROLES:
            m = run_metrics(w, role)
            cells.append(f"{m['steps']} steps" if m else NOT_RUN)
        res = load_json(os.path.join(results_dir, row, "eval", "results.json"))
        an = load_json(os.path.join(results_dir, row, "analysis", "analysis.json"))
        cells.append(f"{', '.join(sorted(target_rows(res), key=TARGETS.index))} ({res['num_examples']})"
                     if res else NOT_RUN)
        cells.append(", ".join(an.get("analyses", [])) if an else NOT_RUN)
        lines.append("| " + " | ".join([ROWS[row]] + cells) + " |")
    return lines


def row_outputs(results_dir: str, row: str):
    w = os.path.join(results_dir, "work", row)
    results = load_json(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = load_json(os.path.join(results_dir, row, "analysis", "analysis.json"))
    ran = (all_metrics(w) or results or analysis or field_results(results_dir, row)
           or autoattack_results(results_dir, row))
    return w, results, analysis, bool(ran)


def build_table2_report(preset: str, results_dir: str) -> str:
    """``REPORT.md`` of a Table 2 preset: per row, reductions, training runs, Table 2 next to the
    paper's, the orderings cell by cell, the analyses; then notes.md and the stage timings."""
    lines = header(f"Diversity Training reproduction — preset `{preset}`")
    planned = PRESET_ROWS.get(preset, ())
    rows = [r for r in ROWS if r in planned or row_outputs(results_dir, r)[3]]
    if len(rows) > 1 or any(not row_outputs(results_dir, r)[3] for r in rows):
        lines += ["## Coverage", "", "Steps each model trained, targets and test images of the "
                  f"transfer evaluation, analyses run; \"{NOT_RUN}\" = no output found.", ""]
        lines += coverage_table(rows, results_dir) + [""]
    for row in rows:
        w, results, analysis, ran = row_outputs(results_dir, row)
        field = field_results(results_dir, row)
        if is_field(results):  # <row>/eval/ holds a --protocol=field run: no Table 2 cells
            results = None
        lines += [f"## {ROWS[row]}", ""]
        if not ran:
            lines += [f"**{NOT_RUN.capitalize()}**: no training run, evaluation or analysis of this "
                      f"row was found (`work/{row}/`, `{row}/eval/`, `{row}/analysis/`). The paper's "
                      "numbers for reference:", "", table2_side_by_side(row, None), ""]
            continue
        lines += ["### Reductions against the paper", ""]
        lines += reductions(row, w, results, analysis) + [""]
        lines += ["### Training runs", ""] + training_table(w) + [""]
        lines += ["GAL / coherence / mean cosine: input-gradient statistics of the members on the "
                  "first min(500, eval_examples) test images after training (inference mode); "
                  "coherence and mean cosine scale-free over the examples with a defined member "
                  "pair (vanishing examples counted when there are any).", ""]
        lines += ["### Table 2 row: accuracy (%) under transfer attacks, ours next to the paper's", ""]
        if results:
            lines += [f"eps = {' / '.join(eps_key(e) for e in results['eps'])}; attacks crafted on "
                      f"the surrogate S ({results['num_examples']} test images, seed {results['seed']}); "
                      "bold = most successful attack per eps for our rows.", "",
                      table2_side_by_side(row, results), ""]
            dist = distance_from_paper(row, results)
            lines += dist + ([""] if dist else [])
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
        lines += (ordering_checks(results, analysis) + above_clean_check(results)
                  + corrected_by_attack(results) + [""])
        lines += member_table(results_dir, row)
        lines += field_section(field, results)
        lines += autoattack_section(autoattack_results(results_dir, row))
        if analysis:
            lines += analysis_sections(analysis, f"{row}/analysis")
        else:
            lines += [f"Analyses (coherence, GAAS, transferability, white-box): {NOT_RUN}.", ""]
    lines += footer(results_dir)
    return "\n".join(lines).rstrip() + "\n"

"""The ``cpu-methods`` report (issue 14): GAL next to ADP, DVERGE and TRS under several surrogates,
one comparison table."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from tf_divtrain import results as evaluation  # the results schema (no TensorFlow)
from tf_divtrain import stats as stats_lib
from tf_divtrain.results import eps_key
from tf_divtrain.report.common import (ATTACK_NAMES, ATTACK_ORDER, NOT_RUN, footer, header,
                                       load_json, pct, run_metrics, target_rows)
from tf_divtrain.report.analyses import autoattack_section
from tf_divtrain.report.field import autoattack_results, field_results, field_section


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
    return " / ".join(pct(d.get(e)) for e in eps)


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
    results = load_json(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = load_json(os.path.join(results_dir, row, "analysis", "analysis.json")) or {}
    ens = analysis.get("ensembles", {})
    from tf_divtrain.paper import TABLE2_EPS as DEFAULT_EPS
    from tf_divtrain.results import surrogate_blocks

    if results:
        eps = [eps_key(e) for e in results["eps"]]
        attacks = [a for a in ATTACK_ORDER if a in results["attacks"]]
        blocks = [(b["label"], target_rows(b)) for b in surrogate_blocks(results)]
    else:
        eps = [eps_key(e) for e in DEFAULT_EPS["mnist"]]
        attacks, blocks = list(ATTACK_ORDER), []
    planned = [lbl for _, lbl, _ in METHOD_SURROGATES]
    labels = planned + [lbl for lbl, _ in blocks if lbl not in planned]
    wb_eps = [eps_key(e) for e in analysis.get("settings", {}).get("whitebox_eps", [])] or eps
    head = (["target", "method", "surrogate", "clean"] + [f"{ATTACK_NAMES[a]} ({' / '.join(eps)})" for a in attacks]
            + [f"robust to all ({' / '.join(eps)}; all)", "coherence", "member transfer",
               f"white-box PGD ({' / '.join(wb_eps)})", "s / step"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label, what in METHOD_TARGETS:
        m = run_metrics(w, name)
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
            cells = ([pct(clean) if clean is not None else NOT_RUN]
                     + ([_eps_pair(r["attacks"].get(at), eps) for at in attacks] if r
                        else [NOT_RUN] * len(attacks)))
            rta = (r or {}).get("robust_to_all")
            cells.append(f"{_eps_pair(rta, eps)} ({pct(rta.get('all'))})" if rta else NOT_RUN)
            lines.append("| " + " | ".join([label, what, s_label] + cells + tail) + " |")
    return lines


# Pairs the paired-comparison table tests: every method against the baseline, the peers against GAL.
PAIRED_BASELINES = (("T_Base", ("T_Div", "T_ADP", "T_DVERGE", "T_TRS")),
                    ("T_Div", ("T_ADP", "T_DVERGE", "T_TRS")))


def _cell_masks(row: dict, attacks: Sequence[str], eps: Sequence[str]):
    """{(attack, eps): per-example correctness} of a results row, or None without per-example data."""
    masks = {(a, e): evaluation.per_example_mask(row, a, e) for a in attacks for e in eps}
    return None if any(m is None for m in masks.values()) else masks


def paired_table(results_dir: str, row: str = METHODS_ROW) -> List[str]:
    """Per surrogate, each method against T_Base (and the peers against T_Div) on the same images:
    in how many Table 2 cells it is more accurate, in how many the difference is significant either
    way (McNemar exact, p < 0.05, per cell), and robust-to-all over every cell, paired."""
    results = load_json(os.path.join(results_dir, row, "eval", "results.json"))
    if not results:
        return [f"Paired comparisons: {NOT_RUN} (no transfer evaluation)."]
    eps = [eps_key(e) for e in results["eps"]]
    attacks = [a for a in ATTACK_ORDER if a in results["attacks"]]
    head = ["surrogate", "target", "against", "more accurate in", "significantly more accurate",
            "significantly less accurate", "robust to all, every eps (difference, p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missing = set()
    for block in evaluation.surrogate_blocks(results):
        rows = target_rows(block)
        for ref, others in PAIRED_BASELINES:
            ref_m = _cell_masks(rows[ref], attacks, eps) if ref in rows else None
            for label in others:
                m = _cell_masks(rows[label], attacks, eps) if label in rows else None
                if m is None or ref_m is None:
                    missing.update(t for t, x in ((ref, ref_m), (label, m)) if x is None)
                    continue
                cmps = [stats_lib.paired_comparison(m[c], ref_m[c]) for c in m]
                more = sum(c["diff"] > 0 for c in cmps)
                sig_more = sum(c["diff"] > 0 and c["p_value"] < stats_lib.ALPHA for c in cmps)
                sig_less = sum(c["diff"] < 0 and c["p_value"] < stats_lib.ALPHA for c in cmps)
                rta = stats_lib.paired_comparison(np.logical_and.reduce(list(m.values())),
                                                  np.logical_and.reduce(list(ref_m.values())))
                lines.append(f"| {block['label']} | {label} | {ref} | {more} of {len(cmps)} | {sig_more} | "
                             f"{sig_less} | {100 * rta['diff']:+.1f} pp, p = {rta['p_value']:.2g} |")
    gap = (f"no per-example results for {', '.join(sorted(missing))} (not evaluated, or evaluated "
           f"before per-example storage: re-run evaluate)" if missing else "")
    if len(lines) == 2:
        return [f"Paired comparisons: {NOT_RUN}; {gap or 'no targets evaluated'}."]
    return lines + (["", f"Not compared: {gap}."] if gap else [])


# tf_divtrain.experiments.method_steps's mode of each target (work dir name -> training mode).
_BENCH_MODE = {"base": "baseline"}


def step_cost_table(results_dir: str, row: str = METHODS_ROW) -> List[str]:
    """Every target's training-step cost from the preset's interleaved benchmark
    (``<row>/method_steps.json``, written by ``tf_divtrain.experiments.method_steps``): median s / step and
    the ratios to the baseline and GAL steps, all timed at one load on the same batches."""
    bench = load_json(os.path.join(results_dir, row, "method_steps.json"))
    if not bench:
        return [f"Step cost benchmark: {NOT_RUN} (`bash run_all.sh --only=benchmark cpu-methods`)."]
    modes = bench.get("modes", {})
    load = lambda k: " / ".join(f"{v:.1f}" for v in bench.get(k, []))  # noqa: E731
    f = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"`tf_divtrain.experiments.method_steps`, {bench.get('timestamp_utc', '—')} UTC: "
             f"{bench['members']} members, batch {bench['batch_size']}, {bench['precision']}, "
             f"{bench['cores']} cores; the median of {bench['reps']} steps per mode, the modes "
             f"interleaved on the same batches (load average 1 / 5 / 15 min before {load('load_average_before')}, "
             f"after {load('load_average_after')}).", "",
             "| target | mode | s / step | images / s | × baseline | × GAL |", "|---|---|---|---|---|---|"]
    for name, label, _ in METHOD_TARGETS:
        mode = _BENCH_MODE.get(name, name)
        r = modes.get(mode)
        if r is None:
            lines.append(f"| {label} | {mode} | {NOT_RUN} | — | — | — |")
            continue
        lines.append(f"| {label} | {mode} | {f(r['median_step_s'])} | {r['images_per_s']:.0f} | "
                     f"{f(r.get('over_baseline'))} | {f(r.get('over_div'))} |")
    return lines


def _methods_training_table(results_dir: str, row: str) -> List[str]:
    w = os.path.join(results_dir, "work", row)
    lines = ["| model | role | mode | members | seed | steps | batch | clean acc | GAL | coherence | "
             "s / step | settings |", "|" + "---|" * 12]
    for name, label, what in METHOD_TARGETS + METHOD_SURROGATES:
        m = run_metrics(w, name)
        role = "target" if any(name == n for n, _, _ in METHOD_TARGETS) else f"surrogate: {what}"
        if not m:
            lines.append(f"| {label} | {role} | {NOT_RUN} |" + " — |" * 9)
            continue
        c, g = m["config"], m.get("test_gradient_stats") or {}
        fmt = lambda k: f"{g[k]:.3f}" if g.get(k) is not None else "—"  # noqa: E731
        cells = [label, role, c["mode"], len(m["member_accuracy"]), c.get("seed"), m["steps"],
                 c["batch_size"], pct(m["ensemble_accuracy"]), fmt("gal"), fmt("coherence"),
                 _step_cost(m, _loadavg(results_dir, row, name)), _method_settings(m)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def _methods_setup(results_dir: str, row: str) -> List[str]:
    w = os.path.join(results_dir, "work", row)
    runs = {label: m for name, label, _ in METHOD_TARGETS + METHOD_SURROGATES if (m := run_metrics(w, name))}
    results = load_json(os.path.join(results_dir, row, "eval", "results.json"))
    analysis = load_json(os.path.join(results_dir, row, "analysis", "analysis.json"))
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
                   f"{' / '.join(eps_key(e) for e in results['eps'])} on the first "
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


def objective_table(results_dir: str, row: str = METHODS_ROW) -> List[str]:
    """The attacker's objective: ``<row>/adaptive_loss/comparison.json`` (written by
    ``tf_divtrain.experiments.compare_evals``) summarised per surrogate and row -- robust-to-all accuracy
    under the prediction-CE attacks next to the paper's mean-member-CE attacks, and the number of
    cells in which either objective fooled the row significantly more."""
    cmp = load_json(os.path.join(results_dir, row, "adaptive_loss", "comparison.json"))
    if not cmp:
        return [f"Attack-objective comparison: {NOT_RUN} (`bash run_all.sh --only=evaluate "
                f"cpu-methods`)."]
    eps = cmp["eps"]
    attacks = ", ".join(dict.fromkeys(ATTACK_NAMES.get(a, a) for a, _ in cmp["cells"]))
    lines = [f"The attacks {attacks} crafted again on the same {cmp['num_examples']} images with "
             f"`--attack_loss=prediction_ce` (CE of the ensemble's averaged-softmax prediction) "
             f"instead of the paper's mean member CE. *Robust to all*: correct under every one of "
             f"these attacks at that ε, prediction CE / mean member CE. *Stronger*: cells in which "
             f"that objective leaves the row significantly less accurate (McNemar, p < "
             f"{cmp['alpha']}, of {len(cmp['cells'])}). Cell by cell: "
             f"[adaptive_loss/comparison.md]({row}/adaptive_loss/comparison.md).", "",
             "| surrogate | row | " + " | ".join(f"robust to all {e}" for e in eps)
             + " | prediction CE stronger | mean member CE stronger |",
             "|---|---|" + "---|" * len(eps) + "---|---|"]
    for b in cmp["blocks"]:
        for r in b["rows"]:
            label = r["label"] if r["role"] == "target" else f"*{r['label']}*"
            rob = " | ".join(f"{pct(r['robust_to_shared'][e]['acc_a'])} / "
                             f"{pct(r['robust_to_shared'][e]['acc_b'])}" for e in eps)
            lines.append(f"| {b['surrogate']} | {label} | {rob} | {r['a_stronger']} | "
                         f"{r['b_stronger']} |")
    return lines


def build_methods_report(preset: str, results_dir: str) -> str:
    """``REPORT.md`` of the cpu-methods preset: one comparison table (``methods_table``)."""
    row = METHODS_ROW
    cores = os.cpu_count() or 1
    lines = header(f"GAL next to ADP, DVERGE and TRS — preset `{preset}`",
                   f"; \"{NOT_RUN}\" = no output found") + ["## Setup", ""]
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
    lines += ["## Training cost per step", "",
              "The *s / step* column above comes from each training run and depends on the load it had; "
              "this benchmark times every method at one load, so its ratios are the comparable figure.", ""]
    lines += step_cost_table(results_dir, row) + [""]
    lines += ["## Paired comparisons on the same images", "",
              "Accuracy differences between two targets measured on the same adversarial examples, "
              "tested per cell with McNemar's exact test (two-sided, p < 0.05, not corrected for the "
              "ten cells; `tf_divtrain/stats.py`). A method counts as better than its reference only "
              "where the difference is significant; *robust to all, every eps*: the difference in "
              "robust-to-all accuracy over all ten cells, paired the same way.", ""]
    lines += paired_table(results_dir, row) + [""]
    lines += field_section(field_results(results_dir, row),
                           load_json(os.path.join(results_dir, row, "eval", "results.json")), "##")
    lines += autoattack_section(autoattack_results(results_dir, row), "##")
    lines += ["## The attacker's objective", "",
              "The Table 2 attacks maximise the mean of the members' CE (§4.1). On a GAL-trained "
              "surrogate the members' gradients point apart and that mean partly cancels; the CE of "
              "the ensemble's prediction weights each member by its remaining confidence in the true "
              "label instead.", ""]
    lines += objective_table(results_dir, row) + [""]
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
    lines += footer(results_dir)
    return "\n".join(lines).rstrip() + "\n"

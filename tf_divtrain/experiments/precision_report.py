"""Report of the float32 vs mixed_bfloat16 equivalence study (issue 10; ``python -m tf_divtrain.pipeline precision-study``).

    python -m tf_divtrain.experiments.precision_report [--results=results/studies/precision_study]

Reads the per-run ``train/<name>/metrics.json`` and ``eval_surrogate_<precision>/results.json`` and
writes ``REPORT.md`` beside them. Every number and every verdict is computed from those files:

* precision effect: |float32 - mixed_bfloat16| per Table-2 cell (same seed, same surrogate);
* run-to-run noise: |seed 0 - seed 1| per cell, both mixed_bfloat16 (same surrogate);
* orderings: T_Div > T_Base in every cell, and lower coherence, for each precision / seed / surrogate.

The verdict "no conclusion changes" needs, against each surrogate, the cell-by-cell T_Div > T_Base
pattern of float32 and mixed_bfloat16 (same seed) to agree and the largest precision effect to stay
within the largest seed-to-seed difference, and T_Div's coherence below T_Base's in every run. It is
written to ``verdict.json``; the exit code is 0 when it passes, 3 when it does not.
"""

from __future__ import annotations

import argparse
import json
import os

from tf_divtrain.pipeline import clock

ATTACKS = ("fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw")
NAMES = {"fgsm": "FGSM", "rfgsm": "R-FGSM", "ifgsm": "I-FGSM", "mifgsm": "MI-FGSM", "pgd_cw": "PGD-CW"}
VARIANTS = (("float32", "float32", ""), ("mixed_bfloat16", "mixed_bfloat16", ""),
            ("mixed_bfloat16 seed 1", "mixed_bfloat16", "_seed1"))


def _load(path):
    from tf_divtrain.results import read_json

    return read_json(path)


def cells(row, eps):
    return [row["attacks"][a][e] for a in ATTACKS for e in eps]


def build(res: str) -> str:
    train = {n: _load(os.path.join(res, "train", n, "metrics.json"))
             for n in sorted(os.listdir(os.path.join(res, "train")))}
    secs = {}
    tsv = os.path.join(res, "train_seconds.tsv")  # the study's first run (a bash driver) wrote this
    if os.path.isfile(tsv):
        for line in open(tsv):
            name, s = line.split()
            secs[name] = int(s)
    for run in clock.stage_runs(res):  # the pipeline's stage log: train_<name> runs
        if run.stage.startswith("train_") and run.status == "ok":
            secs[run.stage[len("train_"):]] = run.seconds
    evals = {}
    for s in ("float32", "mixed_bfloat16"):
        p = os.path.join(res, f"eval_surrogate_{s}", "results.json")
        if os.path.isfile(p):
            evals[s] = _load(p)
    out = ["# float32 vs mixed_bfloat16: equivalence study (issue 10)", "",
           "MNIST Conv-3 x 5, the `cpu` preset's settings (flags/mnist_conv3_*.cfg, 500 steps of batch 128 "
           "per model): the surrogate, T_Base and T_Div trained in float32 and in mixed_bfloat16 with the "
           "same seeds, plus T_Base and T_Div with a second seed in mixed_bfloat16 to measure run-to-run "
           "noise. Every target is evaluated (in float32) on the first 1,000 MNIST test images against "
           "both surrogates; attacks are crafted in float32. Made by `python -m tf_divtrain.pipeline precision-study` and "
           "`benchmarks/precision_report.py` from the JSON files beside this report.", "",
           "## Training", "",
           "| run | precision | seed | steps | clean acc. | test coherence | test GAL | train s (wall, this machine) |",
           "|---|---|---|---|---|---|---|---|"]
    for n, m in train.items():
        st = m.get("test_gradient_stats") or {}
        cfg = m["config"]
        out.append(f"| {n} | {cfg.get('precision', 'float32')} | {cfg['seed']} | {m['steps']} | "
                   f"{100 * m['ensemble_accuracy']:.1f} | {st.get('coherence', float('nan')):.3f} | "
                   f"{st.get('gal', float('nan')):.3f} | {secs.get(n, 'n/a')} |")
    out += ["", "Train seconds are wall time of the session that finished each run (a run resumed "
            "from a checkpoint counts only its last session) on a shared 2-core machine (other jobs "
            "ran beside them): not comparable across rows; `benchmarks/bench.py` measures step-time "
            "ratios.", ""]
    verdicts = []
    for sur, r in evals.items():
        eps = list(r["rows"][0]["attacks"][ATTACKS[0]].keys())
        rows = {row["label"]: row for row in r["rows"]}
        out += [f"## Table 2 cells against the {sur} surrogate", "",
                "| target | clean | " + " | ".join(f"{NAMES[a]} {e}" for a in ATTACKS for e in eps) + " |",
                "|---|---|" + "---|" * (len(ATTACKS) * len(eps))]
        for label, row in rows.items():
            out.append(f"| {label} | {100 * row['clean']:.1f} | "
                       + " | ".join(f"{100 * v:.1f}" for v in cells(row, eps)) + " |")
        prec_diff, noise = [], []
        for t in ("base", "div"):
            a32, a16, a16s = (rows.get(f"{t}_{p}{sfx}") for _, p, sfx in VARIANTS)
            if a32 and a16:
                prec_diff += [abs(x - y) for x, y in zip(cells(a32, eps), cells(a16, eps))]
            if a16 and a16s:
                noise += [abs(x - y) for x, y in zip(cells(a16, eps), cells(a16s, eps))]
        out += ["", "| T_Div > T_Base | cells holding (of %d) |" % (len(ATTACKS) * len(eps)), "|---|---|"]
        holds = {}
        for title, p, sfx in VARIANTS:
            b, d = rows.get(f"base_{p}{sfx}"), rows.get(f"div_{p}{sfx}")
            if b and d:
                holds[title] = [dv > bv for dv, bv in zip(cells(d, eps), cells(b, eps))]
                out.append(f"| {title} | {sum(holds[title])} |")
        # The precision verdict compares float32 with mixed_bfloat16 at the same seed; a cell whose
        # ordering differs between seeds is run-to-run noise and is reported, not held against bf16.
        same_order = (holds.get("float32") == holds.get("mixed_bfloat16")
                      if "float32" in holds and "mixed_bfloat16" in holds else None)
        seed_order = (holds.get("mixed_bfloat16") == holds.get("mixed_bfloat16 seed 1")
                      if "mixed_bfloat16 seed 1" in holds and "mixed_bfloat16" in holds else None)
        if prec_diff and noise:
            out += ["", f"Largest |float32 - mixed_bfloat16| over the {len(prec_diff)} target cells: "
                    f"**{100 * max(prec_diff):.1f} pp** (mean {100 * sum(prec_diff) / len(prec_diff):.1f}); "
                    f"largest |seed 0 - seed 1| (mixed_bfloat16): **{100 * max(noise):.1f} pp** "
                    f"(mean {100 * sum(noise) / len(noise):.1f}). The cell-by-cell T_Div > T_Base pattern is "
                    + ("identical" if same_order else "NOT identical") + " in float32 and mixed_bfloat16 "
                    "(seed 0), and " + ("identical" if seed_order else "NOT identical")
                    + " between mixed_bfloat16 seeds 0 and 1.", ""]
            verdicts.append(bool(same_order) and max(prec_diff) <= max(noise))
    coh = {}
    for _, p, sfx in VARIANTS:
        b, d = train.get(f"base_{p}{sfx}"), train.get(f"div_{p}{sfx}")
        if b and d:
            coh[p + sfx] = d["test_gradient_stats"]["coherence"] < b["test_gradient_stats"]["coherence"]
    out += ["## Verdict", "",
            f"- T_Div has lower test coherence than T_Base: {coh}",
            f"- Per surrogate, orderings identical and precision effect within seed noise: {verdicts}"]
    passed = bool(verdicts and all(verdicts) and coh and all(coh.values()))
    with open(os.path.join(res, "verdict.json"), "w") as f:
        json.dump({"no_conclusion_changes": passed, "per_surrogate": verdicts,
                   "lower_coherence": coh}, f, indent=1)
    if passed:
        out.append("- **No conclusion changes with mixed_bfloat16**: presets use `--precision=auto` "
                   "(mixed_bfloat16 where the CPU/GPU runs bfloat16 natively, else float32).")
    else:
        out.append("- **A conclusion changes (or runs are missing)**: presets keep float32.")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results/studies/precision_study")
    a = p.parse_args()
    text = build(a.results)
    with open(os.path.join(a.results, "REPORT.md"), "w") as f:
        f.write(text)
    print(text)
    with open(os.path.join(a.results, "verdict.json")) as f:
        return 0 if json.load(f)["no_conclusion_changes"] else 3


if __name__ == "__main__":
    raise SystemExit(main())

"""REPORT.md of the D_adv ablation (issue 12; ``experiments/ens_adv_ablation.sh``).

    python -m tf_divtrain.experiments.ablation_report --results=results/studies/ens_ablation

Every number and verdict comes from ``eval/results.json`` and ``train/<variant>/metrics.json``:
per variant the clean accuracy, the ten Table-2 cells, test coherence, and the label-leaking
signature (a one-step attack scoring above clean accuracy); then T_Ens+Div >= T_Ens cell by cell
for each D_adv recipe, compared like with like (same label source and D_adv per step).
"""

from __future__ import annotations

import argparse
import os

from tf_divtrain import evaluation, paper, stats
from tf_divtrain.io_utils import read_json

ATTACKS = paper.TABLE2_ATTACKS
NAMES = paper.ATTACK_NAMES
ONE_STEP = ("fgsm", "rfgsm")
RECIPES = (("predicted labels, D_adv = 1/2 of the batch (new default; Kurakin / Tramer)", "pred_half"),
           ("true labels, D_adv = 1/2", "true_half"),
           ("predicted labels, equal thirds for T_Ens+Div", "pred_third"),
           ("true labels, equal thirds for T_Ens+Div (the old default)", "true_third"))


def _load(p):
    return read_json(p)


def build(res: str) -> str:
    r = _load(os.path.join(res, "eval", "results.json"))
    rows = {row["label"]: row for row in r["rows"] if row["role"] == "target"}
    eps = list(next(iter(rows.values()))["attacks"][ATTACKS[0]].keys())
    train = {}
    for v in rows:
        p = os.path.join(res, "train", v, "metrics.json")
        if os.path.isfile(p):
            train[v] = _load(p)
    cells = lambda row: [row["attacks"][a][e] for a in ATTACKS for e in eps]
    out = ["# T_Ens / T_Ens+Div: how D_adv is built (issue 12 ablation)", "",
           f"MNIST Conv-3 x 5, {r['num_examples']} test images, transfer attacks from the `cpu` preset's "
           "surrogate (the same cached adversarial examples for every variant). Each variant trains the "
           "same number of steps from seed 0; only the D_adv recipe differs. `ens_*` = T_Ens "
           "(mode ens_adv), `ensdiv_*` = T_Ens+Div (ens_adv_div). Made by "
           "`experiments/ens_adv_ablation.sh` and `experiments/ablation_report.py`.", "",
           "| variant | adv labels | adv share | steps | clean | "
           + " | ".join(f"{NAMES[a]} {e}" for a in ATTACKS for e in eps) + " | coherence | above clean |",
           "|---|---|---|---|---|" + "---|" * (len(ATTACKS) * len(eps)) + "---|---|"]
    leaks = {}
    for v, row in rows.items():
        m = train.get(v, {})
        cfg = m.get("config", {})
        above = [f"{NAMES[a]} {e}" for a in ATTACKS for e in eps if row["attacks"][a][e] > row["clean"]]
        leaks[v] = [c for c in above if c.split()[0] in ("FGSM", "R-FGSM")]
        coh = (m.get("test_gradient_stats") or {}).get("coherence")
        out.append(f"| {v} | {cfg.get('adv_labels', '?')} | {cfg.get('adv_share', '?')} | {m.get('steps', '?')} | "
                   f"{100 * row['clean']:.1f} | " + " | ".join(f"{100 * c:.1f}" for c in cells(row))
                   + f" | {'n/a' if coh is None else f'{coh:.3f}'} | {', '.join(above) or 'none'} |")
    out += ["", "## T_Ens+Div >= T_Ens, cell by cell, per D_adv recipe", "",
            "Like with like: T_Ens+Div against the T_Ens trained with the same label source (T_Ens has "
            "two sources, so its D_adv share is 1/2 in every recipe).", "",
            "Paired on the same images: a cell counts as *significant* when McNemar's exact test "
            "(two-sided, per cell, not corrected for ten cells; `tf_divtrain/stats.py`) gives p < 0.05.",
            "",
            "| recipe | T_Ens | T_Ens+Div | cells holding | of which significant | cells failing | "
            "failures significant |", "|---|---|---|---|---|---|---|"]
    for title, key in RECIPES:
        ens = rows.get("ens_" + key.replace("third", "half"))
        ed = rows.get("ensdiv_" + key)
        if not (ens and ed):
            continue
        fails = [f"{NAMES[a]} {e}" for a in ATTACKS for e in eps
                 if ed["attacks"][a][e] < ens["attacks"][a][e]]
        sig = {(a, e): evaluation.paired_cell(ed, ens, a, e) for a in ATTACKS for e in eps}
        sig = {k: None if c is None else c["p_value"] for k, c in sig.items()}
        if any(p is None for p in sig.values()):
            sig_held = sig_failed = "n/a (no per-example results)"
        else:
            sig_held = sum(ed["attacks"][a][e] >= ens["attacks"][a][e] and p < stats.ALPHA
                           for (a, e), p in sig.items())
            failed = [f"{NAMES[a]} {e} (p = {p:.2g})" for (a, e), p in sig.items()
                      if ed["attacks"][a][e] < ens["attacks"][a][e] and p < stats.ALPHA]
            sig_failed = f"{len(failed)}" + (f": {', '.join(failed)}" if failed else "")
        out.append(f"| {title} | ens_{key.replace('third', 'half')} | ensdiv_{key} | "
                   f"{len(ATTACKS) * len(eps) - len(fails)} / {len(ATTACKS) * len(eps)} | {sig_held} | "
                   f"{', '.join(fails) or 'none'} | {sig_failed} |")
    out += ["", "## Label-leaking signature", "",
            "A target that scores higher on one-step (FGSM, R-FGSM) transfer examples than on clean images "
            "has learned to read the perturbation (Kurakin et al. 2016, label leaking).", ""]
    for v, cs in leaks.items():
        ps = []
        for c in cs:  # above clean: paired against the same target's clean correctness
            a = next(k for k, n in NAMES.items() if n == c.split()[0])
            adv, clean = (evaluation.per_example_mask(rows[v], a, c.split()[1]),
                          evaluation.per_example_mask(rows[v]))
            ps.append(c if adv is None or clean is None else
                      f"{c} ({stats.describe(stats.paired_comparison(adv, clean))})")
        out.append(f"- {v}: " + (f"**above clean** under {', '.join(ps)}" if cs else "no one-step cell above clean"))
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results/studies/ens_ablation")
    a = p.parse_args()
    text = build(a.results)
    notes = os.path.join(a.results, "notes.md")
    if os.path.isfile(notes):
        text += "\n" + open(notes).read()
    with open(os.path.join(a.results, "REPORT.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

"""tf_divtrain.experiments.compare_evals: cell-by-cell comparison of two evaluations, against hand counts."""

import json

import numpy as np
import pytest

from tf_divtrain import stats

from tf_divtrain.experiments import compare_evals


def row(label, masks, role="target"):
    """A results.json row from hand-chosen per-example correctness {(attack, eps): [0/1...]}."""
    n = len(next(iter(masks.values())))
    pe = {"n": n, "encoding": stats.ENCODING, "clean": stats.encode_mask(np.ones(n, bool)),
          "attacks": {}}
    acc = {}
    for (a, e), m in masks.items():
        pe["attacks"].setdefault(a, {})[e] = stats.encode_mask(np.array(m, bool))
        acc.setdefault(a, {})[e] = float(np.mean(m))
    return {"label": label, "role": role, "clean": 1.0, "attacks": acc, "per_example": pe}


def results(rows, attacks, fingerprint="f1", **over):
    block = {"label": "S5", "surrogate": {"label": "S5", "fingerprint": fingerprint}, "rows": rows,
             "crafting": {}}
    r = {"schema_version": 2, "dataset": "mnist", "num_examples": 6, "seed": 0, "batch_size": 250,
         "crafting_precision": "float32", "eps": [0.1, 0.3], "attacks": attacks,
         "by_surrogate": [block], "surrogate": block["surrogate"], "rows": rows, "crafting": {}}
    r.update(over)
    return r


A_MASKS = {("fgsm", "0.1"): [1, 1, 0, 0, 0, 0], ("fgsm", "0.3"): [1, 0, 0, 0, 0, 0]}
B_MASKS = {("fgsm", "0.1"): [1, 1, 1, 1, 1, 1], ("fgsm", "0.3"): [1, 1, 1, 0, 0, 0],
           ("pgd_cw", "0.1"): [0, 0, 0, 0, 0, 0], ("pgd_cw", "0.3"): [0, 0, 0, 0, 0, 0]}


def test_compare_cells_and_robust_against_hand_counts(tmp_path):
    a = results([row("T_Div", A_MASKS), row("S5 (white-box)", A_MASKS, "surrogate")], ["fgsm"])
    b = results([row("T_Div", B_MASKS), row("T_Other", B_MASKS),
                 row("S5 (white-box)", B_MASKS, "surrogate")], ["fgsm", "pgd_cw"])
    cmp = compare_evals.compare(a, b)
    assert cmp["cells"] == [["fgsm", "0.1"], ["fgsm", "0.3"]]  # only the shared attack
    rows = cmp["blocks"][0]["rows"]
    assert [r["label"] for r in rows] == ["T_Div", "S5 (white-box)"]  # only the shared rows
    c01, c03 = rows[0]["cells"]
    # eps 0.1: A correct on 2 of 6, B on 6 of 6 -> 4 discordant, all B-only
    assert (c01["acc_a"], c01["acc_b"], c01["only_a"], c01["only_b"]) == (2 / 6, 1.0, 0, 4)
    assert c01["diff"] == pytest.approx(-4 / 6)
    assert c01["p_value"] == pytest.approx(2 * 0.5 ** 4)  # exact binomial, two-sided
    assert (c03["only_a"], c03["only_b"]) == (0, 2) and c03["p_value"] == pytest.approx(0.5)
    # robust to all shared cells (fgsm at both eps): A [1,0,0,0,0,0], B [1,1,1,0,0,0]
    assert rows[0]["robust_to_shared"]["all"]["acc_a"] == pytest.approx(1 / 6)
    assert rows[0]["robust_to_shared"]["all"]["acc_b"] == pytest.approx(3 / 6)
    assert rows[0]["a_stronger"] == 0 and rows[0]["b_stronger"] == 0  # 4 pairs: p = 0.125
    md = compare_evals.to_markdown(cmp, "new", "paper")
    assert "| T_Div | 33.3 / 100.0 (-66.7, p=0.12) | 16.7 / 50.0 (-33.3, p=0.5) |" in md
    # the CLI writes both files
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert compare_evals.main([f"--a={pa}", f"--b={pb}", f"--out={tmp_path / 'out' / 'cmp'}"]) == 0
    assert json.loads((tmp_path / "out" / "cmp.json").read_text())["blocks"][0]["surrogate"] == "S5"
    assert (tmp_path / "out" / "cmp.md").read_text() == md.replace("new (A) vs paper", "A (A) vs B")


def test_compare_refuses_unlike_evaluations():
    a = results([row("T_Div", A_MASKS)], ["fgsm"])
    with pytest.raises(compare_evals.CompareError, match="differ in num_examples"):
        compare_evals.compare(a, results([row("T_Div", B_MASKS)], ["fgsm"], num_examples=7))
    with pytest.raises(compare_evals.CompareError, match="different model.*f1 vs f2"):
        compare_evals.compare(a, results([row("T_Div", B_MASKS)], ["fgsm"], fingerprint="f2"))
    with pytest.raises(compare_evals.CompareError, match="no .attack, eps. cell"):
        compare_evals.compare(a, results([row("T_Div", B_MASKS)], ["pgd_cw"]))
    no_pe = row("T_Div", B_MASKS)
    del no_pe["per_example"]
    with pytest.raises(compare_evals.CompareError, match="no per-example result.*re-run"):
        compare_evals.compare(a, results([no_pe], ["fgsm"]))


def test_methods_report_summarises_the_comparison(tmp_path):
    from tf_divtrain.report import methods as methods_report

    assert "not run" in methods_report.objective_table(str(tmp_path))[0]
    a = results([row("T_Div", A_MASKS), row("S5 (white-box)", A_MASKS, "surrogate")], ["fgsm"])
    b = results([row("T_Div", B_MASKS), row("S5 (white-box)", B_MASKS, "surrogate")], ["fgsm", "pgd_cw"])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    out = tmp_path / "mnist_conv3" / "adaptive_loss" / "comparison"
    assert compare_evals.main([f"--a={pa}", f"--b={pb}", f"--out={out}"]) == 0
    lines = methods_report.objective_table(str(tmp_path))
    assert "The attacks FGSM crafted again on the same 6 images" in lines[0]
    assert lines[2] == "| surrogate | row | robust to all 0.1 | robust to all 0.3 | prediction CE stronger | mean member CE stronger |"
    # robust to all at 0.1 = the FGSM@0.1 cell: A 2/6, B 6/6; at 0.3: A 1/6, B 3/6
    assert lines[4] == "| S5 | T_Div | 33.3 / 100.0 | 16.7 / 50.0 | 0 | 0 |"
    assert lines[5] == "| S5 | *S5 (white-box)* | 33.3 / 100.0 | 16.7 / 50.0 | 0 | 0 |"

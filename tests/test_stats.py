"""Paired significance (tf_divtrain.stats) against independent computations."""

import math
from fractions import Fraction

import numpy as np
import pytest

from tf_divtrain import evaluation, report, stats


def test_mask_roundtrip_and_errors():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1000, 1003):
        m = rng.random(n) < 0.4
        text = stats.encode_mask(m)
        assert len(text) == 4 * math.ceil(math.ceil(n / 8) / 3)  # base64 of ceil(n/8) bytes
        np.testing.assert_array_equal(stats.decode_mask(text, n), m)
    with pytest.raises(stats.StatsError, match="expected 10 examples"):
        stats.decode_mask(stats.encode_mask(np.ones(20, bool)), 10)
    with pytest.raises(stats.StatsError, match="not valid"):
        stats.decode_mask("%%%", 3)
    with pytest.raises(stats.StatsError, match="1-D"):
        stats.encode_mask(np.ones((2, 2), bool))


def _exact_two_sided(b: int, c: int) -> float:
    """Independent: doubled smaller binomial tail in exact rational arithmetic, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(Fraction(math.comb(n, k), 2 ** n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_exact_against_rational_enumeration():
    for b in range(0, 25):
        for c in range(0, 25):
            assert stats.mcnemar_exact_p(b, c) == pytest.approx(_exact_two_sided(b, c), rel=1e-9, abs=1e-15)
    assert stats.mcnemar_exact_p(0, 10) == pytest.approx(2 / 1024)  # 2 * 0.5**10
    with pytest.raises(stats.StatsError):
        stats.mcnemar_exact_p(-1, 2)


def test_paired_comparison_hand_case_and_interval():
    a = np.array([1, 1, 0, 0, 1, 1, 1, 0], bool)
    b = np.array([1, 0, 1, 0, 0, 0, 1, 0], bool)
    r = stats.paired_comparison(a, b)
    assert (r["only_a"], r["only_b"], r["n"]) == (3, 1, 8)
    assert r["diff"] == pytest.approx(a.mean() - b.mean()) == pytest.approx(0.25)
    assert r["p_value"] == pytest.approx(_exact_two_sided(3, 1))  # 2 * 5/16 = 0.625
    d_i = a.astype(float) - b.astype(float)  # independent: per-example differences
    se = np.std(d_i) / np.sqrt(len(d_i))  # population std / sqrt(n) = the paired Wald s.e.
    assert r["ci95"][0] == pytest.approx(d_i.mean() - 1.959964 * se, abs=1e-6)
    assert r["ci95"][1] == pytest.approx(d_i.mean() + 1.959964 * se, abs=1e-6)
    same = stats.paired_comparison(a, a)
    assert same["p_value"] == 1.0 and same["ci95"] == (0.0, 0.0)
    with pytest.raises(stats.StatsError, match="one length"):
        stats.paired_comparison(a, b[:5])


def test_false_positive_rate_under_the_null():
    """Two models equally good, errors independent: p < 0.05 in at most ~5 % of tables."""
    rng = np.random.default_rng(1)
    hits = sum(stats.paired_comparison(rng.random(300) < 0.6, rng.random(300) < 0.6)["p_value"] < 0.05
               for _ in range(400))
    assert hits / 400 <= 0.08


def _row(label, clean, cells):
    """A results row with per-example data; ``cells`` = {(attack, eps): bool array}."""
    n = len(clean)
    row = {"label": label, "role": "target", "clean": float(np.mean(clean)), "attacks": {},
           "per_example": {"n": n, "encoding": stats.ENCODING, "clean": stats.encode_mask(clean),
                           "attacks": {}}}
    for (a, e), m in cells.items():
        row["attacks"].setdefault(a, {})[e] = float(np.mean(m))
        row["per_example"]["attacks"].setdefault(a, {})[e] = stats.encode_mask(m)
    return row


def test_report_ordering_checks_state_significance():
    n = 200
    good = np.ones(n, bool)
    weak = np.zeros(n, bool)
    weak[:100] = True
    near = good.copy()
    near[:1] = False  # one image fewer than `good`
    rows = [_row("T_Base", good, {("fgsm", "0.1"): weak, ("fgsm", "0.3"): weak}),
            _row("T_Div", good, {("fgsm", "0.1"): good, ("fgsm", "0.3"): near}),
            _row("T_Ens", good, {("fgsm", "0.1"): good, ("fgsm", "0.3"): good}),
            _row("T_Ens+Div", good, {("fgsm", "0.1"): good, ("fgsm", "0.3"): near})]
    res = {"eps": [0.1, 0.3], "attacks": ["fgsm"], "rows": rows}
    np.testing.assert_array_equal(evaluation.per_example_mask(rows[1], "fgsm", "0.3"), near)
    np.testing.assert_array_equal(evaluation.per_example_mask(rows[0]), good)
    text = "\n".join(report.ordering_checks(res, None))
    assert "**T_Div > T_Base** under attack: holds in 2 of 2 cells." in text
    assert ("significant at p < 0.05 in 2 of the 2 cells that hold and in 0 of the 0 that do not; "
            "after Holm's correction over the 2 cells: 2 and 0.") in text
    assert "**T_Ens+Div ≥ T_Ens** under attack: holds in 1 of 2 cells." in text
    assert "in 0 of the 1 cells that hold and in 0 of the 1 that do not" in text
    assert "FGSM@0.3: 99.5 vs 100.0 **does not hold** (+0/−1 images, McNemar p = 1, within noise)" in text
    # results written before per-example storage: the check still runs and says why no test
    for r in rows:
        del r["per_example"]
    assert evaluation.per_example_mask(rows[0], "fgsm", "0.1") is None
    text = "\n".join(report.ordering_checks(res, None))
    assert "holds in 2 of 2 cells. (No per-example results" in text


def test_report_lists_cells_above_clean_accuracy():
    from tf_divtrain.report import table2

    n = 400
    clean = np.ones(n, bool)
    clean[:40] = False  # 90.0 % clean
    leak = np.ones(n, bool)
    leak[:4] = False  # 99.0 % under FGSM@0.1: 36 images right only under attack
    same = clean.copy()
    same[100] = False
    same[0] = True  # 90.0 %: equal, not above
    rows = [_row("T_Ens", clean, {("fgsm", "0.1"): leak, ("fgsm", "0.3"): same}),
            _row("T_Base", clean, {("fgsm", "0.1"): same, ("fgsm", "0.3"): same})]
    res = {"eps": [0.1, 0.3], "attacks": ["fgsm"], "rows": rows}
    (line,) = table2.above_clean_check(res)
    assert "1 cell(s): T_Ens FGSM@0.1: 99.0 vs 90.0 clean (+36/−0 images" in line
    assert "significant" in line and "T_Base" not in line and "FGSM@0.3" not in line
    rows[0] = _row("T_Ens", clean, {("fgsm", "0.1"): same, ("fgsm", "0.3"): same})
    assert table2.above_clean_check(dict(res, rows=rows)) == [
        "- **Accuracy under attack above clean accuracy** (the label-leaking signature, Kurakin et "
        "al. 2016; issue 12): in no cell of any target."]
    assert table2.above_clean_check(None) == []


def test_methods_report_paired_table(tmp_path):
    n = 100
    half = np.zeros(n, bool)
    half[:50] = True
    every = np.ones(n, bool)
    cells = lambda m: {(a, e): m for a in ("fgsm", "ifgsm") for e in ("0.1", "0.3")}  # noqa: E731
    rows = [_row("T_Base", every, cells(half)), _row("T_Div", every, cells(every)),
            _row("T_ADP", every, cells(half))]
    rows.append({k: v for k, v in _row("T_TRS", every, cells(every)).items() if k != "per_example"})
    res = {"eps": [0.1, 0.3], "attacks": ["fgsm", "ifgsm"], "rows": rows, "dataset": "mnist",
           "num_examples": n, "seed": 0,
           "by_surrogate": [{"label": "S5", "surrogate": {}, "rows": rows, "crafting": {}}]}
    d = tmp_path / "mnist_conv3" / "eval"
    d.mkdir(parents=True)
    (d / "results.json").write_text(__import__("json").dumps(res))
    from tf_divtrain.report import methods

    lines = methods.paired_table(str(tmp_path))
    assert "| S5 | T_Div | T_Base | 4 of 4 | 4 | 0 | +50.0 pp, p = 1.8e-15 |" in lines  # 2 * 0.5**50
    assert "| S5 | T_ADP | T_Base | 0 of 4 | 0 | 0 | +0.0 pp, p = 1 |" in lines
    assert "| S5 | T_ADP | T_Div | 0 of 4 | 0 | 4 | -50.0 pp, p = 1.8e-15 |" in lines
    assert not any("T_TRS |" in l for l in lines) and not any("T_DVERGE |" in l for l in lines)
    assert lines[-1].startswith("Not compared: no per-example results for T_DVERGE, T_TRS")
    assert "## Paired comparisons on the same images" in report.build_report("cpu-methods", str(tmp_path))


def test_ablation_report_counts_significant_cells(tmp_path):
    import json

    from tf_divtrain.experiments import ablation_report as ab
    n = 200

    def correct(k):  # the last k images right
        m = np.zeros(n, bool)
        m[n - k:] = True
        return m

    every, most, fewer, most_minus_one = correct(200), correct(160), correct(120), correct(159)
    ens_cells = {(a, e): most for a in ab.ATTACKS for e in ("0.1", "0.3")}
    ens = _row("ens_pred_half", most, {**ens_cells, ("fgsm", "0.1"): every})
    ensdiv = _row("ensdiv_pred_half", every, {**ens_cells, ("fgsm", "0.1"): every, ("rfgsm", "0.1"): every,
                                              ("fgsm", "0.3"): fewer, ("ifgsm", "0.3"): most_minus_one})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(
        {"num_examples": n, "rows": [ens, ensdiv]}))
    text = ab.build(str(tmp_path))
    # R-FGSM 0.1 holds significantly, the other holding cells are ties; FGSM 0.3 fails significantly
    # (40 discordant images, p = 2 * 0.5**40), I-FGSM 0.3 by one image (p = 1)
    assert "| 8 / 10 | 1 | FGSM 0.3, I-FGSM 0.3 | 1: FGSM 0.3 (p = 1.8e-12) |" in text
    assert "- ensdiv_pred_half: no one-step cell above clean" in text
    # ens_pred_half scores 100 % under FGSM 0.1 against 80 % clean: a significant "above clean"
    assert "- ens_pred_half: **above clean** under FGSM 0.1 (+40/−0 images, McNemar p = 1.8e-12, significant)" in text


def _fisher_enumerated(a, n_a, b, n_b):
    """Independent: sum the hypergeometric probabilities (exact rationals) of every table with the
    same margins that is at most as likely as the observed one."""
    total, hits = n_a + n_b, a + b
    prob = lambda x: Fraction(math.comb(n_a, x) * math.comb(n_b, hits - x), math.comb(total, hits))  # noqa: E731
    obs = prob(a)
    lo, hi = max(0, hits - n_b), min(hits, n_a)
    return float(sum(prob(x) for x in range(lo, hi + 1) if prob(x) <= obs * (1 + Fraction(1, 10**7))))


def test_fisher_exact_against_hypergeometric_enumeration():
    for a, n_a, b, n_b in ((17, 57, 28, 65), (6, 57, 18, 65), (50, 61, 42, 60), (0, 10, 10, 10),
                           (3, 5, 3, 5), (0, 1, 0, 1), (9, 61, 14, 60)):
        assert stats.fisher_exact_p(a, n_a, b, n_b) == pytest.approx(_fisher_enumerated(a, n_a, b, n_b), rel=1e-9)
    with pytest.raises(stats.StatsError):
        stats.fisher_exact_p(5, 4, 1, 2)


def test_gaas_check_states_fisher_per_cell():
    from tf_divtrain.report.analyses import gaas_check

    gd = {"num_correct": 57, "results": {"0.03": {"16": {"p_all": 6 / 57, "mean_num_adversarial": 2.8}}}}
    gb = {"num_correct": 65, "results": {"0.03": {"16": {"p_all": 18 / 65, "mean_num_adversarial": 4.8}}}}
    line = gaas_check("T_Div", "T_Base", gd, gb)
    assert f"(6/57 vs 18/65, Fisher p = {_fisher_enumerated(6, 57, 18, 65):.2g}) holds" in line
    assert "differ significantly (Fisher exact" in line and "in 1 of 1." in line


def test_transfer_rates_of_coherence_at_init():
    """experiments/coherence_at_init.py: fooled fraction among T_Base's clean-correct images."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "coherence_at_init.py")
    spec = importlib.util.spec_from_file_location("coherence_at_init", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    clean = np.array([1, 1, 1, 1, 0, 0], bool)
    adv = np.array([1, 0, 0, 0, 1, 0], bool)  # 3 of the 4 clean-correct fooled; image 4 is ignored
    row = _row("T_Base", clean, {("fgsm", "0.1"): adv, ("fgsm", "0.3"): np.zeros(6, bool)})
    rates = mod.transfer_rates({"rows": [row]})
    assert rates == {"fgsm@0.1": pytest.approx(0.75), "fgsm@0.3": pytest.approx(1.0)}


def test_report_counts_clean_errors_the_attack_corrects():
    from tf_divtrain.report import table2

    n = 300
    clean = np.ones(n, bool)
    clean[:30] = False  # 30 clean errors
    fixes = clean.copy()
    fixes[:12] = True  # 12 of them right under FGSM@0.1 ...
    fixes[100:140] = False  # ... while 40 correct images are fooled: accuracy stays below clean
    rows = [_row("T_Ens", clean, {("fgsm", "0.1"): fixes, ("fgsm", "0.3"): clean & (np.arange(n) > 50)}),
            _row("T_Base", clean, {("fgsm", "0.1"): clean, ("fgsm", "0.3"): clean})]
    res = {"eps": [0.1, 0.3], "attacks": ["fgsm"], "rows": rows}
    assert table2.above_clean_check(res)[0].endswith("in no cell of any target.")  # silent here
    (line,) = table2.corrected_by_attack(res)
    assert line.endswith(" signature. T_Ens (30 clean errors): FGSM@0.1 12; none in any cell: T_Base.")
    rows[0] = _row("T_Ens", clean, {("fgsm", "0.1"): clean, ("fgsm", "0.3"): clean})
    assert table2.corrected_by_attack(dict(res, rows=rows))[0].endswith(" signature. no target, in no cell.")
    assert table2.corrected_by_attack(None) == []
    del rows[0]["per_example"]
    assert table2.corrected_by_attack(dict(res, rows=rows)) == []  # old results: no per-image data


def test_report_member_table(tmp_path):
    import json

    from tf_divtrain.report import table2

    assert table2.member_table(str(tmp_path), "mnist_conv3") == []  # stage not run: nothing
    ev = tmp_path / "mnist_conv3" / "eval"
    ev.mkdir(parents=True)
    cell = {"ensemble": 0.986, "mean_member": 0.977, "members": [0.97, 0.984], "fooled": 64, "corrected": 5}
    (ev / "member_accuracy.json").write_text(json.dumps({"num_examples": 10000, "targets": {
        "T_Ens+Div": {"clean": {"ensemble": 0.992, "mean_member": 0.986, "members": [0.98, 0.992],
                                "errors": 82}, "cells": {"fgsm@0.1": cell}}}}))
    lines = table2.member_table(str(tmp_path), "mnist_conv3")
    assert "| target | clean | FGSM 0.1 |" in lines
    assert "| T_Ens+Div | 99.2 / 98.6 | 98.6 / 97.7 |" in lines
    assert any("10,000 images" in l and "member_accuracy.md" in l for l in lines)


def test_holm_adjusted_against_hand_steps():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(0.06, 2*0.03), max(.., 1*0.5)
    got = stats.holm_adjusted([0.03, 0.01, 0.5, 0.02])
    np.testing.assert_allclose(got, [0.06, 0.04, 0.5, 0.06])
    # monotone step-down: a later, smaller product is raised to the running maximum; capped at 1
    np.testing.assert_allclose(stats.holm_adjusted([0.04, 0.045]), [0.08, 0.08])
    np.testing.assert_allclose(stats.holm_adjusted([0.6, 0.9]), [1.0, 1.0])
    # against Bonferroni (never more conservative) and the raw p (never less)
    rng = np.random.default_rng(3)
    p = rng.random(10) ** 3
    adj = np.array(stats.holm_adjusted(p))
    assert np.all(adj >= p - 1e-15) and np.all(adj <= np.minimum(1, 10 * p) + 1e-15)
    assert stats.holm_adjusted([]) == []
    for bad in ([0.1, 1.5], [[0.1]], [float("nan")]):
        with pytest.raises(stats.StatsError, match="p-values in"):
            stats.holm_adjusted(bad)

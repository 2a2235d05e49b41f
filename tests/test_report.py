"""The report: REPORT.md from a preset's files, the paper's numbers beside ours, each ordering
tested cell by cell; rendered from hand-made results so every number can be checked."""

import json
import os

from tf_divtrain import report
from tf_divtrain import results as results_lib

from fakes import _block, _cifar_results, _comparison, _field_results, _gaas, _metrics, _mnist_metrics, _results  # noqa: F401


def test_ordering_checks_state_each_cell():
    res = _results({"T_Base": (0.99, {"fgsm": (0.9, 0.1), "ifgsm": (0.8, 0.05)}),
                    "T_Div": (0.98, {"fgsm": (0.95, 0.3), "ifgsm": (0.7, 0.2)}),
                    "T_Ens": (0.99, {"fgsm": (0.97, 0.5), "ifgsm": (0.97, 0.4)}),
                    "T_Ens+Div": (0.99, {"fgsm": (0.97, 0.6), "ifgsm": (0.96, 0.5)})})
    lines = report.ordering_checks(res, {"ensembles": {"T_Base": {"coherence": {"mean": 0.8}},
                                                       "T_Div": {"coherence": {"mean": 0.3}}}})
    div = next(l for l in lines if l.startswith("- **T_Div > T_Base**"))
    assert "holds in 3 of 4 cells" in div and "I-FGSM@0.1: 70.0 vs 80.0 **does not hold**" in div
    ens = next(l for l in lines if l.startswith("- **T_Ens+Div ≥ T_Ens**"))
    assert "holds in 3 of 4 cells" in ens  # equal counts as holding for the >= ordering
    assert any("Lower coherence for T_Div than T_Base" in l and "holds" in l for l in lines)


def test_report_renders_cifar_rows_missing_targets_and_k25_note(tmp_path):
    res = tmp_path / "cpu-cifar"
    w = res / "work"
    for role, mode in (("surrogate", "baseline"), ("static", "baseline"), ("base", "baseline"),
                       ("div", "div"), ("ens", "ens_adv"), ("ensdiv", "ens_adv_div")):
        d = w / "cifar10_conv4" / role
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(mode, 120, 1 if role == "static" else 5)))
    for role, mode in (("surrogate", "baseline"), ("base", "baseline"), ("div", "div")):
        d = w / "cifar10_resnet20" / role
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(mode, 60, model="resnet20")))
    for row, labels in (("cifar10_conv4", ["T_Base", "T_Div", "T_Ens", "T_Ens+Div"]),
                        ("cifar10_resnet20", ["T_Base", "T_Div"])):
        (res / row / "eval").mkdir(parents=True)
        (res / row / "eval" / "results.json").write_text(json.dumps(_cifar_results(labels)))
    coh = {"n": 500, "mean": 0.5, "median": 0.5, "q25": 0.4, "q75": 0.6}
    an = {"analyses": ["coherence", "gaas", "transfer"],
          "subset_sizes": {"coherence": 500, "gaas": 100, "transfer": 100},
          "settings": {"gaas_k": [4, 16, 36, 64], "gaas_eps": [0.03, 0.06, 0.09]},
          "ensembles": {"T_Base": {"coherence": dict(coh, mean=0.8), "gaas": _gaas(0.2),
                                   # short CIFAR runs: no example two members both get right
                                   "transfer": {"definition": "d", "eps": 0.09, "nb_iter": 10,
                                                "mean_off_diagonal": None,
                                                "matrix": [[None, None], [None, 1.0]]}},
                        "T_Div": {"coherence": dict(coh, mean=0.1), "gaas": _gaas(0.0)},
                        "T_Ens": {"coherence": coh, "gaas": _gaas(0.1)},
                        "T_Ens+Div": {"coherence": coh, "gaas": _gaas(0.1)}}}
    (res / "cifar10_conv4" / "analysis").mkdir(parents=True)
    (res / "cifar10_conv4" / "analysis" / "analysis.json").write_text(json.dumps(an))
    text = report.build_report("cpu-cifar", str(res))
    # Every planned row is present; MIX (no outputs at all) renders as not run with the paper's row.
    for needle in ("## CONV-4 (CIFAR-10)", "## RESNET-20 (CIFAR-10)", "## MIX (CIFAR-10)", "## Coverage"):
        assert needle in text, needle
    mix = text[text.index("## MIX (CIFAR-10)"):]
    assert "**Not run**" in mix and "| T_Base | paper | 89.7 |" in mix and "| T_Div | paper | 88.2 |" in mix
    assert "| MIX (CIFAR-10) | not run | not run | not run | not run | not run | not run | not run | not run |" in text
    resnet = text[text.index("## RESNET-20 (CIFAR-10)"):text.index("## MIX (CIFAR-10)")]
    for needle in ("| T_Ens | ours | not run |", "| T_Ens+Div | ours | not run |",
                   "| T_Base | paper | 88.9 |", "| T_Div | paper | 84.0 |",
                   "Targets not run: T_Ens, T_Ens+Div and the static model",
                   "**T_Ens+Div ≥ T_Ens** under attack: not checked — T_Ens+Div, T_Ens not run",
                   "**T_Div > T_Base** under attack: holds in 10 of 10 cells",
                   "60 steps of batch 128 = 0.15 epochs per model instead of the paper's 40 epochs",
                   "Analyses (coherence, GAAS, transferability, white-box): not run"):
        assert needle in resnet, needle
    conv4 = text[text.index("## CONV-4 (CIFAR-10)"):text.index("## RESNET-20 (CIFAR-10)")]
    for needle in ("| T_Base | paper | 85.1 |", "| T_Div | paper | 82.4 |",
                   "120 steps of batch 128 = 0.31 epochs per model instead of the paper's 20 epochs",
                   "GAAS orders k = 4, 16, 36, 64 instead of the paper's 4, 25, 36, 64",
                   "No Hadamard matrix of order 25 exists", "k = 36 passes", "k = 64 passes",
                   "`analysis.check_gaas_k(25)` raises an error", "up to order 100 it constructs exactly 4, 16, 36, 64",
                   "holds in 12 of 12 cells (0 of them ties)", "**T_Ens+Div ≥ T_Ens** under attack: holds",
                   "Lower coherence for T_Div than T_Base** (Fig. 4): mean 0.100 vs 0.800 — holds",
                   "| T_Base | 50 / 100 | 0.03 |", "transferability on 100 test images",
                   "not run: white-box", "mean off-diagonal n/a: no example that two members"):
        assert needle in conv4, needle
    # T_Ens vs T_Ens+Div GAAS: equal everywhere -> every cell is a tie, reported as such.
    assert "Fewer GAAS directions for T_Ens+Div than T_Ens" in conv4 and "(12 of them ties)" in conv4


def test_report_flags_targets_of_different_lengths(tmp_path):
    w = tmp_path / "r" / "work" / "cifar10_conv4"
    for role, steps in (("surrogate", 100), ("base", 100), ("div", 80)):
        (w / role).mkdir(parents=True)
        (w / role / "metrics.json").write_text(json.dumps(_metrics("baseline", steps)))
    text = report.build_report("cpu-cifar", str(tmp_path / "r"))
    assert "The targets trained different lengths" in text


def test_report_states_the_training_precision(tmp_path):
    w = tmp_path / "r" / "work" / "cifar10_conv4"
    for role, prec in (("surrogate", "float32"), ("base", "mixed_bfloat16"), ("div", "mixed_bfloat16")):
        (w / role).mkdir(parents=True)
        m = _metrics("baseline", 100)
        m["config"]["precision"] = prec
        (w / role / "metrics.json").write_text(json.dumps(m))
    text = report.build_report("cpu-cifar", str(tmp_path / "r"))
    assert "- Training precision: float32 (S), mixed_bfloat16 (T_Base, T_Div)" in text
    for role in ("base", "div"):
        m = json.loads((w / role / "metrics.json").read_text())
        m["config"]["precision"] = "float32"
        (w / role / "metrics.json").write_text(json.dumps(m))
    assert "Training precision" not in report.build_report("cpu-cifar", str(tmp_path / "r"))


def test_methods_report_one_table_with_not_run_cells(tmp_path):
    res = tmp_path / "cpu-methods"
    w = res / "work" / "mnist_conv3"
    runs = {"base": _mnist_metrics("baseline", ips=160.0), "div": _mnist_metrics("div", ips=48.0),
            "adp": _mnist_metrics("adp", params="alpha=2,beta=0.5"),
            "trs": _mnist_metrics("trs", ips=16.0, seconds=4000.0, params="init_eps=0.1,adv_eps=0.2"),
            "s3": _mnist_metrics("baseline", members=3, seed=13), "s5": _mnist_metrics("baseline", seed=10)}
    for name, m in runs.items():  # DVERGE, S8 and S_div were not trained
        (w / name).mkdir(parents=True)
        (w / name / "metrics.json").write_text(json.dumps(m))
    train = res / "mnist_conv3" / "train"
    for name, load in (("base", "0.9 1.1 1.8 2/300 1"), ("trs", "4.1 4.0 3.9 3/300 1")):
        (train / name).mkdir(parents=True)
        (train / name / "loadavg.txt").write_text(load)
    (res / "mnist_conv3" / "eval").mkdir(parents=True)
    blocks = [_block("S3", ["T_Base", "T_Div", "T_ADP", "T_TRS"]), _block("S5", ["T_Base", "T_Div", "T_ADP", "T_TRS"], 0.6)]
    results = {"eps": [0.1, 0.3], "attacks": ["fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw"],
               "rows": blocks[0]["rows"], "by_surrogate": blocks, "dataset": "mnist", "num_examples": 1000, "seed": 0}
    (res / "mnist_conv3" / "eval" / "results.json").write_text(json.dumps(results))
    an = {"analyses": ["coherence", "transfer", "whitebox"],
          "subset_sizes": {"coherence": 500, "transfer": 100, "whitebox": 100},
          "settings": {"transfer_eps": 0.3, "transfer_iters": 10, "whitebox_eps": [0.1, 0.3], "whitebox_iters": 20},
          "ensembles": {"T_Base": {"coherence": {"mean": 0.807}, "transfer": {"mean_off_diagonal": 0.995},
                                   "whitebox": {"worst_case_accuracy": {"0.1": 0.3, "0.3": 0.0}}},
                        "T_Div": {"coherence": {"mean": 0.041}, "transfer": {"mean_off_diagonal": 0.51},
                                  "whitebox": {"worst_case_accuracy": {"0.1": 0.78, "0.3": 0.01}}}}}
    (res / "mnist_conv3" / "analysis").mkdir(parents=True)
    (res / "mnist_conv3" / "analysis" / "analysis.json").write_text(json.dumps(an))
    bench = {"members": 5, "batch_size": 128, "precision": "mixed_bfloat16", "cores": 2, "reps": 8,
             "load_average_before": [1.0, 1.1, 1.2], "load_average_after": [2.0, 1.5, 1.3],
             "timestamp_utc": "2026-01-01 00:00:00",
             "modes": {m: {"median_step_s": s_, "images_per_s": 128 / s_, "over_baseline": s_ / 0.25,
                           "over_div": s_ / 0.5} for m, s_ in (("baseline", 0.25), ("div", 0.5), ("trs", 2.0))}}
    (res / "mnist_conv3" / "method_steps.json").write_text(json.dumps(bench))
    text = report.build_report("cpu-methods", str(res))
    cost = text[text.index("## Training cost per step"):text.index("## Paired comparisons")]
    for needle in ("| T_Base | baseline | 0.25 | 512 | 1.00 | 0.50 |", "| T_Div | div | 0.50 | 256 | 2.00 | 1.00 |",
                   "| T_TRS | trs | 2.00 | 64 | 8.00 | 4.00 |", "| T_ADP | adp | not run |",
                   "before 1.0 / 1.1 / 1.2, after 2.0 / 1.5 / 1.3"):
        assert needle in cost, (needle, cost)
    table = _comparison(text)
    line = lambda t, s: next(l for l in table if l.startswith(f"| {t} |") and f"| {s} |" in l)  # noqa: E731
    assert len([l for l in table if "| S3 |" in l]) == 5 and len(table) == 5 * 4  # 5 targets x 4 surrogates
    base = line("T_Base", "S3")
    for needle in ("| 99.0 |", "| 50.0 / 5.0 |", "| 40.0 / 2.0 (0.0) |", "| 0.807 | 0.995 | 30.0 / 0.0 |",
                   "| 0.80 (load 1.8) |"):
        assert needle in base, (needle, base)
    assert "| 60.0 / 6.0 |" in line("T_Base", "S5")
    trs_line = line("T_TRS", "S3")  # 4th target of the block: +0.03
    assert "| 53.0 / 8.0 |" in trs_line and "| 43.0 / 2.0 (3.0) |" in trs_line
    # Analyses not run for TRS; its cost: 128 / 16 img/s = 8 s/step, 500 steps in 4000 s, load 3.9 on
    # this machine's cores (shared if > 1.5 x cores).
    assert "| not run | not run | not run / not run |" not in trs_line
    assert trs_line.count("not run") == 3 and "| 8.00 (load 3.9" in trs_line
    shared = 3.9 > 1.5 * (os.cpu_count() or 1)
    assert ("shared)" in trs_line) == shared
    # DVERGE: nothing at all; S8 / S_div: no evaluation blocks -> every cell "not run".
    dv = line("T_DVERGE", "S5")
    assert dv.count("not run") == 1 + 5 + 1 + 3 + 1, dv
    s8 = line("T_Div", "S8")
    assert "| 99.0 |" in s8 and s8.count("not run") == 6  # clean: the evaluation's (same for every block)
    for needle in ("# GAL next to ADP, DVERGE and TRS", "500 steps of batch 128 (1.07 epochs)",
                   "radius was 0.1, 0.11 (of 0.1 → 0.2)", "same seed-0 initial weights", "first 1000 test images",
                   "coherence on 500 test images", "| S8 | surrogate: baseline, 8 members | not run |",
                   "alpha = 2.0, beta = 0.5", "init_eps = 0.1, adv_eps = 0.2", "trains from scratch",
                   "λ = 0.5, D_noise ε = 0.3", "| S3 | surrogate: baseline, 3 members | baseline | 3 | 13 |"):
        assert needle in text, needle


def test_methods_report_with_nothing_run(tmp_path):
    (tmp_path / "r").mkdir()
    text = report.build_report("cpu-methods", str(tmp_path / "r"))
    table = _comparison(text)
    assert len(table) == 20 and all(l.count("not run") == 11 for l in table), table[0]
    assert "Transfer evaluation: not run" in text and "Training: not run" in text
    assert "Step cost benchmark: not run" in text


def test_distance_from_the_paper_in_percentage_points():
    # MNIST row, eps 0.1 / 0.3 = the paper's; paper T_Base: clean 99.4, FGSM 91.4 / 9.7, I-FGSM 86.1 / 0.7
    # and T_Div: clean 99.2, FGSM 97.1 / 34.3, I-FGSM 97.6 / 20.4 (Table 2).
    res = _results({"T_Base": (0.99, {"fgsm": (0.9, 0.1), "ifgsm": (0.8, 0.05)}),
                    "T_Div": (0.992, {"fgsm": (0.95, 0.3), "ifgsm": (0.7, 0.2)})})
    (line,) = report.table2.distance_from_paper("mnist_conv3", res)
    base = [90 - 91.4, 10 - 9.7, 80 - 86.1, 5 - 0.7]  # ours - paper, pp
    div = [95 - 97.1, 30 - 34.3, 70 - 97.6, 20 - 20.4]
    assert (f"T_Base clean -0.4, attacked cells mean |Δ| {sum(map(abs, base)) / 4:.1f} "
            f"(4 cells, -6.1 to +4.3)") in line
    assert f"T_Div clean +0.0, attacked cells mean |Δ| {sum(map(abs, div)) / 4:.1f} (4 cells, -27.6 to -0.4)" in line
    assert "T_Ens" not in line  # no results for it: no entry
    res["eps"] = [0.05, 0.2]  # not the paper's eps: nothing to compare
    for r in res["rows"]:
        r["attacks"] = {a: {"0.05": v["0.1"], "0.2": v["0.3"]} for a, v in r["attacks"].items()}
    assert report.table2.distance_from_paper("mnist_conv3", res) == []
    assert report.table2.distance_from_paper("no_such_row", res) == []


# ----------------------------------------------------------------------------------------------
# Issue 23: the "Field protocol" section (evaluate --protocol=field), from hand-made masks of 8
# images; every number below is worked out from them by hand.

_ALL1, _NONE = "11111111", "00000000"
FIELD = {
    "T_Base": {"clean": "11111110",
               "S3": {"mpgd_ce_r0": {"0.1": "11110000", "0.3": "10000000"},
                      "mdi2fgsm_ce": {"0.1": "11101000", "0.3": "10000000"}},
               "S5": {"mpgd_ce_r0": {"0.1": "11111000", "0.3": "10000000"},
                      "mdi2fgsm_ce": {"0.1": "11011000", "0.3": "10000000"}}},
    "T_Div": {"clean": _ALL1,
              "S3": {"mpgd_ce_r0": {"0.1": _ALL1, "0.3": "11111100"},
                     "mdi2fgsm_ce": {"0.1": _ALL1, "0.3": "11111110"}},
              "S5": {"mpgd_ce_r0": {"0.1": _ALL1, "0.3": "11111101"},
                     "mdi2fgsm_ce": {"0.1": "11111110", "0.3": "11111100"}}},
    "T_ADP": {"clean": "01111111",
              "S3": {"mpgd_ce_r0": {"0.1": "01000000", "0.3": _NONE},
                     "mdi2fgsm_ce": {"0.1": "01000000", "0.3": _NONE}},
              "S5": {"mpgd_ce_r0": {"0.1": "11000000", "0.3": "00000001"},
                     "mdi2fgsm_ce": {"0.1": "11000000", "0.3": "00000001"}}},
}
# The paper protocol on the same 8 images (one surrogate S, FGSM and I-FGSM).
PAPER = {"T_Base": {"clean": "11111110", "S": {"fgsm": {"0.1": "11110000", "0.3": "11000000"},
                                                "ifgsm": {"0.1": "11100000", "0.3": "10000000"}}},
         "T_Div": {"clean": _ALL1, "S": {"fgsm": {"0.1": _ALL1, "0.3": _ALL1},
                                         "ifgsm": {"0.1": _ALL1, "0.3": "11111110"}}}}


def _paper_results(spec=PAPER):
    res = _field_results(spec, sets=("fgsm", "ifgsm"))
    del res["protocol"], res["field"]
    return res


def test_field_section_robust_to_all_worst_set_paired_and_reductions():
    from tf_divtrain.report import field

    lines = field.field_section(_field_results(FIELD), _paper_results())
    text = "\n".join(lines)
    assert lines[0] == "### Field protocol (DVERGE / TRS)"
    assert "2 sets per ε on each of 2 surrogate(s) (S3, S5), 8 test images" in text
    table = [l for l in lines if l.startswith("| T_")]
    # Robust to all = AND over the 4 sets of both surrogates (in brackets: also clean) / worst set.
    assert table == [
        "| T_Base | 87.5 | 25.0 (25.0) / 50.0 (S3: M-PGD CE r0) | 12.5 (12.5) / 12.5 (S3: M-PGD CE r0) | 12.5 (12.5) |",
        "| T_Div | 100.0 | 87.5 (87.5) / 87.5 (S5: M-DI²-FGSM CE) | 75.0 (75.0) / 75.0 (S3: M-PGD CE r0) | 75.0 (75.0) |",
        "| T_ADP | 87.5 | 12.5 (12.5) / 12.5 (S3: M-PGD CE r0) | 0.0 (0.0) / 0.0 (S3: M-PGD CE r0) | 0.0 (0.0) |"]
    div = next(l for l in lines if l.startswith("- **T_Div > T_Base**"))
    assert "holds in 3 of 3 cells" in div and "in 0 that hold and 0 that do not" in div  # p = 1/16
    assert "ε 0.1: 87.5 vs 25.0 holds (+5/−0 images, McNemar p = 0.062, within noise)" in div
    assert "all ε: 75.0 vs 12.5 holds (+5/−0 images" in div
    adp = next(l for l in lines if l.startswith("- **T_ADP > T_Base**"))
    assert "holds in 0 of 3 cells" in adp and "ε 0.1: 12.5 vs 25.0 **does not hold** (+0/−1 images" in adp
    vs_paper = next(l for l in lines if l.startswith("- **Field protocol vs the paper's attacks** (FGSM, I-FGSM;"))
    # T_Base: paper robust-to-all at 0.1 = 11110000 & 11100000 = 37.5 %; field 25.0 %.
    assert "T_Base ε 0.1: 25.0 vs 37.5, 12.5 points lower (+0/−1 images" in vs_paper
    assert "T_Div ε 0.3: 75.0 vs 87.5, 12.5 points lower" in vs_paper
    assert "T_Base ε 0.3: 12.5 vs 12.5, the same (+0/−0 images" in vs_paper
    # A field run weaker than the paper's attacks (e.g. a few steps) is said to be higher, not
    # "-X points lower": T_Base's paper robust-to-all at 0.1 (37.5 %) against the field's T_Div masks.
    weaker = {"T_Base": FIELD["T_Div"]}
    vs = field.against_paper(_field_results(weaker), _paper_results(),
                             {"T_Base": field.target_summary(_field_results(weaker), "T_Base")})
    assert "T_Base ε 0.1: 87.5 vs 37.5, 50.0 points higher (+4/−0 images" in vs[0]
    assert "the paper's over surrogate(s) S)" in vs_paper  # no surrogate in common: all of its
    several = {t: {"clean": v["clean"], **{sur: v["S"] for sur in ("S3", "S_div", "S5")}}
               for t, v in PAPER.items()}
    vs = field.against_paper(_field_results(FIELD), _paper_results(several),
                             {"T_Base": field.target_summary(_field_results(FIELD), "T_Base")})
    assert "the paper's over surrogate(s) S3, S5)" in vs[0]  # the surrogates both runs used
    assert "- Sets: M-PGD CE r0 = mpgd loss=ce, nb_iter=5; M-DI²-FGSM CE = mdi2fgsm loss=ce, nb_iter=5." in lines
    assert lines[-2] == ("- Reductions and differences against DVERGE / TRS's protocol: 8 test images "
                         "(DVERGE / TRS: 1000).")
    assert field.field_section(_paper_results()) == []  # a paper-protocol file: no section


def test_field_section_without_per_example_results_or_t_base():
    from tf_divtrain.report import field

    res = _field_results({k: v for k, v in FIELD.items() if k != "T_Base"})
    for b in res["by_surrogate"]:
        for r in b["rows"]:
            r.pop("per_example", None)
    lines = field.field_section(res)
    assert "| T_Div | 100.0 | — (—) / 87.5 (S5: M-DI²-FGSM CE) | — (—) / 75.0 (S3: M-PGD CE r0) | — (—) |" in lines
    assert any("Paired against T_Base: not checked — T_Base is not among the targets" in l for l in lines)


def test_reports_get_the_field_section_when_a_row_has_field_results(tmp_path):
    res = tmp_path / "cpu"
    (res / "mnist_conv3" / "eval").mkdir(parents=True)
    text = report.build_report("cpu", str(res))
    assert "Field protocol" not in text  # nothing to report
    (res / "mnist_conv3" / "eval" / "results.json").write_text(json.dumps(_paper_results()))
    (res / "mnist_conv3" / "eval_field").mkdir()
    (res / "mnist_conv3" / "eval_field" / "results.json").write_text(json.dumps(_field_results(FIELD)))
    text = report.build_report("cpu", str(res))
    section = text[text.index("### Field protocol (DVERGE / TRS)"):]
    assert "| T_Div | 100.0 | 87.5 (87.5)" in section and "T_Base ε 0.1: 25.0 vs 37.5" in section
    assert "| T_Base | ours | 87.5 |" in text  # the paper-protocol Table 2 line is still there
    methods = report.build_report("cpu-methods", str(res))
    assert "## Field protocol (DVERGE / TRS)" in methods and "- **T_ADP > T_Base**" in methods


def _aa_entry(clean, after_ce, after_dlr, n=8):
    import numpy as np

    from tf_divtrain import stats

    return {"library": "adversarial-robustness-toolbox 1.20.1", "attacks": ["apgd-ce", "apgd-dlr"],
            "max_iter": 100, "restarts": 1, "n": n, "clean_accuracy": clean,
            "robust_accuracy": {"0.1": after_dlr[1]},
            "after_attack": {"0.1": {"apgd-ce": after_ce, "apgd-dlr": after_dlr[1]}},
            "per_example": {"0.1": stats.encode_mask(np.array(after_dlr[0], bool))}}


def test_autoattack_section_table_and_paired_cells_against_t_base(tmp_path):
    """The AutoAttack section (issue 23) from an analysis.json: accuracy after each ART attack, and
    each target against T_Base on the same images. Masks by hand: T_Div robust on images 0-3,
    T_Base on 0 and 4: T_Div alone on 1, 2, 3, T_Base alone on 4 -> 3 / 1 discordant, McNemar
    exact p = 2 * P(Bin(4, 1/2) <= 1) = 0.625 (one cell: Holm leaves it)."""
    import numpy as np

    from tf_divtrain.report import analyses

    analysis = {"ensembles": {
        "T_Base": {"autoattack": _aa_entry(1.0, 0.5, ([1, 0, 0, 0, 1, 0, 0, 0], 0.25))},
        "T_Div": {"autoattack": _aa_entry(0.875, 0.625, ([1, 1, 1, 1, 0, 0, 0, 0], 0.5))}}}
    lines = analyses.autoattack_section(analysis)
    text = "\n".join(lines)
    assert lines[0] == "### White-box AutoAttack (ART)"
    assert "adversarial-robustness-toolbox 1.20.1: APGD-CE then APGD-DLR (100 iterations" in text
    assert "| ensemble | clean | after APGD-CE @0.1 | after APGD-DLR @0.1 |" in text
    assert "| T_Base | 100.0 | 50.0 | 25.0 |" in text and "| T_Div | 87.5 | 62.5 | 50.0 |" in text
    assert ("- T_Div vs T_Base @0.1: 50.0 vs 25.0, higher (+25.0 pp, 3 / 1 images robust for one only, "
            "Holm p = 0.62)." in text)
    assert analyses.autoattack_section({"ensembles": {"T_Base": {"whitebox": {}}}}) == []
    assert analyses.autoattack_section(None) == []
    # the methods report reads <row>/autoattack/analysis.json (the pipeline's field stage)
    res = tmp_path / "cpu-methods"
    (res / "mnist_conv3" / "autoattack").mkdir(parents=True)
    (res / "mnist_conv3" / "autoattack" / "analysis.json").write_text(json.dumps(analysis))
    text = report.build_report("cpu-methods", str(res))
    assert "## White-box AutoAttack (ART)" in text and "| T_Div | 87.5 | 62.5 | 50.0 |" in text
    (res.parent / "cpu" / "mnist_conv3" / "autoattack").mkdir(parents=True)
    (res.parent / "cpu" / "mnist_conv3" / "autoattack" / "analysis.json").write_text(json.dumps(analysis))
    assert "### White-box AutoAttack (ART)" in report.build_report("cpu", str(res.parent / "cpu"))


def test_attack_options_text_lists_changes_only_for_the_paper_protocol():
    names = {"fgsm": "FGSM", "pgd_cw": "PGD-CW"}
    r = {"attack_options": {"fgsm": {}, "pgd_cw": {"nb_iter": 3, "confidence": 0.0}}}
    assert results_lib.attack_options_text(r, names) == "PGD-CW confidence=0.0, nb_iter=3"
    assert results_lib.attack_options_text({"attack_options": {"fgsm": {}}}, names) == ""
    assert results_lib.attack_options_text(dict(r, field={"sets": {}}), names) == ""


def test_training_table_states_the_whole_runs_time_over_its_sessions(tmp_path):
    """train s: the total over every session where metrics.json records it, else the last
    session's, marked as such."""
    from tf_divtrain.report import table2

    w = tmp_path / "work"
    runs = {"surrogate": dict(_metrics("baseline", 7800), train_seconds_total=12345.4, train_sessions=3),
            "base": dict(_metrics("baseline", 7800), train_seconds_total=99.6, train_sessions=1),
            "div": _metrics("div", 7800)}  # written before the total was recorded
    for role, m in runs.items():
        (w / role).mkdir(parents=True)
        (w / role / "metrics.json").write_text(json.dumps(m))
    lines = table2.training_table(str(w))
    row = {l.split(" | ")[0][2:]: l for l in lines if l.startswith("| ")}
    assert row["S"].endswith("| 12345 over 3 sessions |")
    assert row["T_Base"].endswith("| 100 |")
    assert row["T_Div"].endswith("| 10 (last session) |")
    assert any(l.startswith("train s: training time over every session") for l in lines)

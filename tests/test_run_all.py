"""run_all.sh end to end on the smoke preset (every stage, tiny settings), plus the report logic."""

import os
import subprocess
import sys

import pytest

from tf_divtrain import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, data_dir):
    env = dict(os.environ, TF_DIVTRAIN_DATA=data_dir, RESULTS_ROOT=str(tmp_path),
               PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(["bash", os.path.join(REPO, "run_all.sh"), *args], env=env,
                          capture_output=True, text=True, cwd=REPO)


def test_help_and_bad_arguments(tmp_path, data_dir):
    r = _run(["--help"], tmp_path, data_dir)
    assert r.returncode == 0 and "Presets:" in r.stdout and "smoke" in r.stdout
    r = _run(["gpu-please"], tmp_path, data_dir)
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_smoke_preset_end_to_end_and_resume(tmp_path, data_dir):
    r = _run(["smoke"], tmp_path, data_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = tmp_path / "smoke"
    for f in ("mnist_conv3/eval/results.json", "mnist_conv3/eval/table2.md",
              "mnist_conv3/eval/results.csv", "mnist_conv3/analysis/analysis.json",
              "mnist_conv3/analysis/coherence_hist.png", "mnist_conv3/analysis/gaas.png",
              "REPORT.md", "stage_times.tsv", "logs/train_mnist_conv3_div.log"):
        assert (res / f).exists(), f
    text = (res / "REPORT.md").read_text()
    for needle in ("| T_Div | ours |", "| T_Div | paper | 99.2 |", "T_Div > T_Base", "Coherence",
                   "Ensemble size 3 instead of 5", "train_mnist_conv3_ensdiv"):
        assert needle in text, needle
    # Weights stay out of the results that get committed: they live under work/ (git-ignored).
    assert (res / "work" / "mnist_conv3" / "div" / "saved_model" / "saved_model.pb").exists()
    again = _run(["smoke"], tmp_path, data_dir)
    assert again.returncode == 0
    assert again.stdout.count("done already") == 8  # 6 trainings + evaluate + analyze skipped


def _results(acc):
    """A results dict in evaluation's schema; acc: label -> (clean, {attack: (a1, a2)})."""
    rows = [{"label": k, "role": "target", "clean": c,
             "attacks": {a: {"0.1": v[0], "0.3": v[1]} for a, v in att.items()}}
            for k, (c, att) in acc.items()]
    return {"eps": [0.1, 0.3], "attacks": ["fgsm", "ifgsm"], "rows": rows, "dataset": "mnist",
            "num_examples": 10, "seed": 0}


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

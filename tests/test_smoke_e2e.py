"""The one end-to-end preset run of the suite: ``run_all.sh smoke`` (every stage on tiny settings),
then the same command again, which finds every stage up to date. Its own file, so the two test
workers can run it beside the rest (it is the suite's longest test)."""

import pytest

from fakes import run_all_sh as _run


@pytest.mark.e2e
@pytest.mark.first
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
                   "Ensemble size 2 instead of 5", "train_mnist_conv3_ensdiv",
                   "Attack settings instead of the paper's: I-FGSM nb_iter=2; MI-FGSM nb_iter=2; "
                   "PGD-CW nb_iter=3."):
        assert needle in text, needle
    # Weights stay out of the results that get committed: they live under work/ (git-ignored).
    assert (res / "work" / "mnist_conv3" / "div" / "saved_model" / "saved_model.pb").exists()
    again = _run(["smoke"], tmp_path, data_dir)
    assert again.returncode == 0
    assert again.stdout.count("done already") == 8  # 6 trainings + evaluate + analyze skipped
    assert "members_mnist_conv3" not in r.stdout  # MEMBERS_STAGE=0 in the smoke presets

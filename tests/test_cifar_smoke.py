"""CIFAR-10 smoke path (issue 11): what the MNIST tests cannot catch.

* A MIX-like ensemble (ResNet-20 + Conv-4 + Conv-3) takes one GAL step on a real CIFAR-10 batch
  (3 channels, D' with flips, D_noise): BatchNorm runs under the nested tape and updates its moving
  statistics exactly once, every member of every architecture moves, the step is finite.
* ``run_all.sh smoke-cifar`` runs the CIFAR Conv-4 row end to end (train with flips and D_noise
  -> transfer attacks at eps 0.03/0.09 -> coherence + GAAS at a CIFAR eps -> report, which must
  show the targets this preset does not train as "not run") on tiny settings.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf
import pytest

from tf_divtrain import data, models, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mix_like_gal_step_on_cifar_batch_norm_under_nested_tape(data_dir):
    ds = data.load_dataset("cifar10", data_dir, train_size=256, test_size=16)
    cfg = training.TrainConfig(dataset="cifar10", model="resnet20,conv4,conv3", mode="div",
                               batch_size=16, seed=3)
    tr = training.Trainer(cfg, ds.input_shape, ds.num_classes)
    x, y = next(iter(data.train_stream(ds.x_train, ds.y_train, "cifar10", 16, tr.sources, 0.09, 3)))
    assert x.shape == (16, 32, 32, 3) and tr.sources == ("aug", "noise")
    resnet = tr.ensemble.members[0]
    bn = next(layer for layer in resnet.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert bn.momentum == models.BN_MOMENTUM
    # BatchNorm's input on this batch, with the weights before the step.
    probe = keras.Model(resnet.input, bn.input)
    mu = tf.reduce_mean(probe(x, training=True), axis=[0, 1, 2]).numpy()
    before = [[v.numpy().copy() for v in m.trainable_variables] for m in tr.ensemble.members]
    out = {k: v.numpy() for k, v in tr.train_step(x, y).items()}
    assert all(np.all(np.isfinite(v)) for v in out.values()), out
    assert out["gal"] > 0 and 0 < out["coherence"] <= 1.0 + 1e-6
    # One update of the moving mean from its initial zeros: (1 - momentum) * batch mean. A second
    # forward in training mode (e.g. a separate CE pass) would give (1 - momentum^2) * mean.
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1.0 - models.BN_MOMENTUM) * mu,
                               rtol=1e-3, atol=1e-6)
    for m, old in zip(tr.ensemble.members, before):
        moved = [not np.allclose(a, v.numpy()) for a, v in zip(old, m.trainable_variables)]
        assert sum(moved) >= 0.9 * len(moved), (m.name, sum(moved), len(moved))


def test_gaas_at_a_cifar_eps_on_cifar_images(data_dir):
    """GAAS on 32 x 32 x 3 inputs at the paper's CIFAR eps: the blocks split 3,072 dims (what the
    smoke-cifar run checks end to end, here in-process)."""
    from tf_divtrain import analysis

    ds = data.load_dataset("cifar10", data_dir, train_size=16, test_size=16)
    ens = models.build_ensemble("conv4", ds.input_shape, 10, 2, seed=1)
    g = analysis.gaas_analysis(ens, ds.x_test, ds.y_test, ks=(4, 16), eps_list=(0.03,), batch_size=16)
    assert set(g["results"]) == {"0.03"} and set(g["results"]["0.03"]) == {"4", "16"}
    assert g["results"]["0.03"]["16"]["dims_per_block"] == 32 * 32 * 3 // 16
    assert g["num_correct"] == sum(g["results"]["0.03"]["4"]["count_histogram"])


# Slow: the in-process tests here (a CIFAR GAL step, GAAS at a CIFAR eps), the field protocol's
# CIFAR-shaped evaluation (test_field_protocol), the cpu-cifar / cifar-paper dry runs (their
# commands) and the report's CIFAR rendering (test_report) cover what this run checks; the
# suite's one end-to-end preset run is the MNIST smoke preset (test_smoke_e2e).
@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_cifar_preset_end_to_end(tmp_path, data_dir):
    env = dict(os.environ, TF_DIVTRAIN_DATA=data_dir, RESULTS_ROOT=str(tmp_path),
               PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["bash", os.path.join(REPO, "run_all.sh"), "smoke-cifar"], env=env,
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = tmp_path / "smoke-cifar"
    row = res / "cifar10_conv4"
    results = json.loads((row / "eval" / "results.json").read_text())
    assert results["dataset"] == "cifar10" and [float(e) for e in results["eps"]] == [0.03, 0.09]
    assert {r["label"] for r in results["rows"] if r["role"] == "target"} == {"T_Base", "T_Div"}
    assert set(results["attacks"]) == {"fgsm", "pgd_cw"}
    an = json.loads((row / "analysis" / "analysis.json").read_text())
    assert an["settings"]["gaas_eps"] == [0.03] and an["settings"]["gaas_k"] == [4, 16]
    assert an["ensembles"]["T_Div"]["gaas"]["results"]["0.03"]["16"]["dims_per_block"] == 32 * 32 * 3 // 16
    assert set(an["ensembles"]) == {"T_Base", "T_Div"}
    assert (row / "analysis" / "gaas.png").exists() and (row / "analysis" / "coherence_hist.png").exists()
    cfg = json.loads((row / "train" / "div" / "config.json").read_text())
    assert cfg["dataset"] == "cifar10" and cfg["model"] == "conv4" and cfg["mode"] == "div"
    # Only the roles the preset asked for were trained.
    assert not (res / "work" / "cifar10_conv4" / "ens").exists()
    text = (res / "REPORT.md").read_text()
    for needle in ("## CONV-4 (CIFAR-10)", "| T_Div | paper | 82.4 |", "| T_Ens | ours | not run |",
                   "Targets not run: T_Ens, T_Ens+Div and the static model",
                   "**T_Ens+Div ≥ T_Ens** under attack: not checked", "the paper's k = 25",
                   "Fewer GAAS directions for T_Div than T_Base"):
        assert needle in text, needle

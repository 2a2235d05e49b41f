"""The curated public API (lazy), the EnsembleLike protocol, and the runnable example."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    return cli_env(**extra)


@pytest.mark.e2e
def test_import_is_lazy():
    code = ("import sys, tf_divtrain as td; assert 'tensorflow' not in sys.modules, 'eager TF'; "
            "td.coherence; assert 'tensorflow' in sys.modules; print(len(td.__all__))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_every_public_name_resolves():
    import tf_divtrain as td

    for name in td.__all__:
        assert getattr(td, name) is not None, name
    assert "DiversityEnsemble" in dir(td)
    try:
        td.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("unknown names must raise AttributeError")


def test_ensemble_like_and_attacks_on_a_user_ensemble(mnist):
    import keras

    import tf_divtrain as td
    from tf_divtrain import export

    members = [keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
               for _ in range(2)]
    ens = td.DiversityEnsemble(members)
    for obj in (ens, td.build_ensemble("conv3", (28, 28, 1), 10, 2)):
        assert isinstance(obj, td.EnsembleLike)
    assert issubclass(export.LoadedEnsemble, td.EnsembleLike)
    x, y = mnist.x_test[:16], mnist.y_test[:16]
    adv = td.make_attack("fgsm", ens, 0.1)(x, y).numpy()
    assert np.abs(adv - x).max() <= 0.1 + 1e-6 and np.abs(adv - x).max() > 0
    assert td.coherence_values(ens, x, y).shape == (16,)


@pytest.mark.e2e
def test_example_runs(data_dir):
    r = subprocess.run([sys.executable, os.path.join(REPO, "examples", "diversity_fit_mnist.py"),
                        "--train_examples=512", "--test_examples=128", "--epochs=1"],
                       env=_env(TF_DIVTRAIN_DATA=data_dir), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("lambda=")]
    assert len(lines) == 2 and "clean accuracy" in lines[0] and "mean coherence" in lines[1], r.stdout

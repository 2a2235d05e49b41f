"""The AutoAttack-style white-box check through ART (issue 23): the wrapper is the ensemble's
prediction, the composition follows AutoAttack's per-image rule, a missing ART is a clear error."""

import sys

import keras
import numpy as np
import pytest

from tf_divtrain import attacks, models, stats
from tf_divtrain.analysis import autoattack as aa

@pytest.fixture(scope="module")
def trained(mnist):
    pytest.importorskip("art")  # the '.[eval]' extra
    keras.utils.set_random_seed(0)
    members = []
    for s in (1, 2):
        m = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(s))])
        m.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(mnist.x_train[s * 1000:(s + 2) * 1000], mnist.y_train[s * 1000:(s + 2) * 1000],
              batch_size=100, epochs=2, verbose=0)
        members.append(m)
    return models.Ensemble(members)


def test_wrapper_is_the_ensemble_prediction(trained, mnist):
    x = mnist.x_test[:8]
    logp = aa.log_prediction(trained)(x).numpy()
    np.testing.assert_allclose(np.exp(logp), trained.probabilities(x).numpy(), rtol=1e-5, atol=1e-7)
    # compiled (the default, what ART calls) = eager, the straightforward path, values and gradients
    import tensorflow as tf

    xt = tf.constant(x)
    grads = []
    for compiled in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            out = aa.log_prediction(trained, compiled=compiled)(xt)
            loss = tf.reduce_sum(out[:, 3])
        grads.append((out.numpy(), tape.gradient(loss, xt).numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-7)
    assert np.abs(grads[0][1]).max() > 0
    clf = aa.art_classifier(trained, (28, 28, 1), 10)
    np.testing.assert_array_equal(clf.predict(x).argmax(1), trained.probabilities(x).numpy().argmax(1))


def test_autoattack_composition_and_strength(trained, mnist):
    x, y = mnist.x_test[:40], mnist.y_test[:40]
    eps = 0.1
    res = aa.autoattack_check(trained, x, y, [eps], max_iter=10, batch_size=40, seed=1)
    rob = stats.decode_mask(res["per_example"]["0.1"], 40)
    assert res["robust_accuracy"]["0.1"] == pytest.approx(rob.mean())
    steps = res["after_attack"]["0.1"]
    assert res["clean_accuracy"] >= steps["apgd-ce"] >= steps["apgd-dlr"] == res["robust_accuracy"]["0.1"]
    # the robust set is inside each component's own robust set (per-image AND)
    alone = aa.autoattack_check(trained, x, y, [eps], attacks=["apgd-dlr"], max_iter=10, batch_size=40, seed=1)
    assert np.all(rob <= stats.decode_mask(alone["per_example"]["0.1"], 40))
    # at least as strong as FGSM on the prediction's CE, at the same eps
    fg = attacks.fgsm(trained, x, y, eps, loss="prediction_ce")
    assert res["robust_accuracy"]["0.1"] <= np.mean(trained.probabilities(fg).numpy().argmax(1) == y)
    assert res["clean_accuracy"] > 0.6 and res["robust_accuracy"]["0.1"] < res["clean_accuracy"]


def test_missing_art_is_a_clear_error(monkeypatch):
    from tf_divtrain import analysis

    monkeypatch.setitem(sys.modules, "art", None)
    with pytest.raises(aa.AutoAttackUnavailable, match=r"pip install -e '\.\[eval\]'"):
        aa.require_art()
    with pytest.raises(analysis.AnalysisError, match="adversarial-robustness-toolbox"):
        analysis.check_analyses(["whitebox", "autoattack"])  # before any work
    assert analysis.check_analyses(["whitebox"]) == ["whitebox"]

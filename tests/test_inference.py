"""inference.py, the one inference path: predictions against NumPy, the compiled function reused,
and every consumer (training's accuracies, evaluation's correct mask, the analyses' predictions)
on the same numbers as the straightforward computation."""

import gc

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import analysis, evaluation, inference, models


@pytest.fixture(scope="module")
def ens(tiny_cnn):
    return models.Ensemble([tiny_cnn(1, strides=3), tiny_cnn(11, strides=3), tiny_cnn(21, strides=3)])


@pytest.fixture(scope="module")
def xy(mnist):
    return mnist.x_test[:70], mnist.y_test[:70]


def _numpy_predictions(ens, x):
    z = np.stack([m(x, training=False).numpy() for m in ens.members], axis=1).astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p.mean(1).argmax(-1), z.argmax(-1)


def test_predict_equals_numpy_at_any_batch_size(ens, xy):
    x, y = xy
    want_ens, want_members = _numpy_predictions(ens, x)
    for bs in (70, 32, 1):
        got_ens, got_members = inference.predict(ens, x, batch_size=bs)
        np.testing.assert_array_equal(got_ens, want_ens)
        np.testing.assert_array_equal(got_members, want_members)
    np.testing.assert_array_equal(inference.correct_mask(ens, x, y), want_ens == y)
    acc = inference.accuracies(ens, x, y, batch_size=32)
    assert acc["ensemble_accuracy"] == pytest.approx(float(np.mean(want_ens == y)))
    assert acc["member_accuracy"] == pytest.approx([float(np.mean(want_members[:, i] == y))
                                                    for i in range(3)])
    np.testing.assert_allclose(inference.member_logits(ens, x, batch_size=32),
                               ens.member_logits(x).numpy(), rtol=1e-6, atol=1e-6)


def test_the_compiled_function_is_traced_once_per_ensemble_and_freed_with_it(xy, tiny_cnn):
    x, _ = xy
    e = models.Ensemble([tiny_cnn(2), tiny_cnn(12)])
    fn = inference.cached_logits_fn(e, x.shape[1:])
    for bs in (70, 25, 3):
        inference.predict(e, x, batch_size=bs)
    assert inference.cached_logits_fn(e, x.shape[1:]) is fn
    assert fn.experimental_get_tracing_count() == 1
    n = len(inference._CACHE)
    del e, fn
    gc.collect()
    assert len(inference._CACHE) == n - 1


def test_every_consumer_agrees_with_the_ensembles_own_probabilities(ens, xy):
    """The straightforward path: argmax of the ensemble's own ``probabilities``."""
    x, y = xy
    want = np.argmax(ens.probabilities(tf.constant(x)).numpy(), -1)
    np.testing.assert_array_equal(evaluation.correct_mask(ens, x, y, batch_size=32), want == y)
    got_ens, got_members = analysis.predictions(ens, x, batch_size=32)
    np.testing.assert_array_equal(got_ens, want)
    np.testing.assert_array_equal(got_members, np.argmax(ens.member_logits(x).numpy(), -1))

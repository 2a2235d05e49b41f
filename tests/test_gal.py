"""GAL maths (Eqs 6-9) against NumPy, finite differences and separate tape calls."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import gal, models


def _np_cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _np_reference(g):
    """Eq 6-8 per example with plain Python loops: g [B, N, D]."""
    gal_v, coh, pairs_all = [], [], []
    for row in g:
        pairs = [_np_cos(row[a], row[b]) for a, b in itertools.combinations(range(len(row)), 2)]
        pairs_all.append(pairs)
        gal_v.append(np.log(np.sum(np.exp(pairs))))
        coh.append(max(pairs))
    return np.array(gal_v), np.array(coh), np.array(pairs_all)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_cosine_coherence_gal_against_numpy(n):
    g = np.random.RandomState(n).randn(7, n, 50)
    g[0, 1] = 0.0  # a zero gradient must give cosine 0, no NaN/Inf
    ref_gal, ref_coh, ref_pairs = _np_reference(g)
    t = tf.constant(g, tf.float64)
    np.testing.assert_allclose(gal.pair_cosines(t).numpy(), ref_pairs, atol=1e-10)
    np.testing.assert_allclose(gal.gradient_alignment_loss(t).numpy(), ref_gal, atol=1e-10)
    np.testing.assert_allclose(gal.coherence(t).numpy(), ref_coh, atol=1e-10)
    full = gal.pairwise_cosine(t).numpy()
    np.testing.assert_allclose(full, np.swapaxes(full, 1, 2), atol=1e-12)
    if n == 2:  # GAL of a single pair is that pair's cosine similarity
        np.testing.assert_allclose(gal.gradient_alignment_loss(t).numpy(), ref_pairs[:, 0], atol=1e-10)


def test_gal_is_stable_and_zero_safe_under_differentiation():
    g = tf.Variable(np.zeros((2, 3, 10)), dtype=tf.float64)
    with tf.GradientTape() as tape:
        v = tf.reduce_sum(gal.gradient_alignment_loss(g))
    d = tape.gradient(v, g).numpy()
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(gal.gradient_alignment_loss(g).numpy(), np.log(3.0))
    big = tf.constant(np.random.RandomState(0).randn(2, 3, 10) * 1e30)
    assert np.all(np.isfinite(gal.gradient_alignment_loss(big).numpy()))


def test_div_loss_is_eq9():
    ce = tf.constant([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    g = tf.constant([0.2, -0.4])
    np.testing.assert_allclose(gal.div_loss_per_example(ce, g, 0.5).numpy(), [2.1, 0.3], rtol=1e-6)


def _tiny_members(n, dtype="float64"):
    """Tiny dense nets in float64 so central differences are accurate."""
    out = []
    for i in range(n):
        init = keras.initializers.GlorotUniform(seed=i)
        inp = keras.Input((28, 28, 1), dtype=dtype)
        h = keras.layers.Flatten(dtype=dtype)(inp)
        h = keras.layers.Dense(16, kernel_initializer=init, dtype=dtype)(h)
        h = keras.layers.LeakyReLU(0.2, dtype=dtype)(h)
        out.append(keras.Model(inp, keras.layers.Dense(10, kernel_initializer=init, dtype=dtype)(h)))
    return out


def test_member_input_gradients_match_central_differences(mnist_batch):
    members = _tiny_members(3)
    x = mnist_batch[0][:4].astype(np.float64)
    y = mnist_batch[1][:4]
    grads, logits, ce = gal.member_input_gradients(members, tf.constant(x), tf.constant(y))
    assert grads.shape == (4, 3, 784) and logits.shape == (4, 3, 10) and ce.shape == (4, 3)
    def cce(labels, logits):  # float64 throughout (keras losses would cast to float32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.constant(labels), logits)

    rng = np.random.RandomState(0)
    h = 1e-6
    for i, m in enumerate(members):
        for d in rng.choice(784, 12, replace=False):
            xp, xm = x.copy(), x.copy()
            xp.reshape(4, -1)[:, d] += h
            xm.reshape(4, -1)[:, d] -= h
            fd = (cce(y, m(xp)).numpy() - cce(y, m(xm)).numpy()) / (2 * h)  # per example
            np.testing.assert_allclose(grads.numpy()[:, i, d], fd, rtol=1e-5, atol=1e-8)


def test_one_pass_equals_separate_tapes(mnist_batch):
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=4)
    x, y = tf.constant(mnist_batch[0][:16]), tf.constant(mnist_batch[1][:16])
    grads, _, ce = gal.member_input_gradients(ens.members, x, y)
    for i, m in enumerate(ens.members):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, m(x)))
        sep = tape.gradient(loss, x).numpy().reshape(16, -1)
        np.testing.assert_allclose(grads.numpy()[:, i], sep, rtol=1e-4, atol=1e-7)


def test_leaky_relu_gives_nonzero_finite_gal_parameter_gradient(mnist_batch):
    """Paper §3.4: with LeakyReLU, GAL back-propagates to every member's parameters."""
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=0)
    x, y = tf.constant(mnist_batch[0][:32]), tf.constant(mnist_batch[1][:32])
    with tf.GradientTape() as tape:
        grads, _, _ = gal.member_input_gradients(ens.members, x, y, training=True)
        loss = tf.reduce_mean(gal.gradient_alignment_loss(grads))
    per_member = tape.gradient(loss, [m.trainable_variables for m in ens.members])
    for member_grads in per_member:  # every member's every weight tensor receives finite signal
        norms = [float(tf.norm(g)) for g in member_grads]
        assert len(norms) == 10 and all(np.isfinite(norms)) and all(n > 0 for n in norms)

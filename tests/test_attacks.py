"""Attacks (paper §2.3, §4.1) on real MNIST slices, checked against independent computations."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
from cleverhans.tf2 import utils as ch_utils

from tf_divtrain import attacks, models

EPS = 0.1
TOL = 1e-6  # float32 rounding of x + clip(delta) - x


def linear_model(seed):
    init = keras.initializers.GlorotUniform
    bias = keras.initializers.RandomNormal(seed=seed + 7)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(10, kernel_initializer=init(seed), bias_initializer=bias)])


@pytest.fixture(scope="module")
def batch(mnist):
    return mnist.x_test[:16], mnist.y_test[:16]


@pytest.fixture(scope="module")
def tiny_ens(tiny_cnn):
    return models.Ensemble([tiny_cnn(1), tiny_cnn(11)])


def hand_mean_ce(member_logits_list, y):
    """Independent mean-over-members CE: -log softmax(Z_i)[y] averaged over i."""
    ces = []
    for z in member_logits_list:
        logp = z - tf.reduce_logsumexp(z, axis=-1, keepdims=True)
        ces.append(-tf.gather(logp, y, batch_dims=1))
    return tf.add_n(ces) / len(ces)


def hand_prediction_ce(member_logits_list, y):
    """Independent CE of the averaged-softmax prediction: -log(mean_i softmax(Z_i)[y])."""
    p = tf.add_n([tf.nn.softmax(z, axis=-1) for z in member_logits_list]) / len(member_logits_list)
    return -tf.math.log(tf.gather(p, y, batch_dims=1))


def hand_grad(members, x, y):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(hand_mean_ce([m(x) for m in members], tf.constant(y)))
    return tape.gradient(loss, x).numpy()


def in_ball(x_adv, x, eps):
    x_adv = np.asarray(x_adv)
    return (np.all(np.abs(x_adv - x) <= eps + TOL) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0)


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_every_attack_stays_in_ball_and_moves(name, tiny_ens, batch):
    x, y = batch
    for eps in (0.1, 0.3):
        x_adv = attacks.make_attack(name, tiny_ens, eps)(x, y, 3).numpy()
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert in_ball(x_adv, x, eps), name
        assert np.abs(x_adv - x).max() > eps / 2, f"{name} did not perturb the input"


def test_fgsm_equals_independent_gradient_sign(tiny_ens, batch):
    x, y = batch
    g = hand_grad(tiny_ens.members, x, y)
    expected = np.clip(x + EPS * np.sign(g), 0.0, 1.0)
    np.testing.assert_allclose(attacks.fgsm(tiny_ens, x, y, EPS).numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(attacks.make_attack("fgsm", tiny_ens, EPS)(x, y, 0).numpy(), expected,
                               atol=1e-7)


def test_ensemble_ce_is_mean_member_ce():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3, 7)).astype(np.float32)
    y = rng.integers(0, 7, size=5)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = -logp[np.arange(5), :, y].mean(axis=1)
    np.testing.assert_allclose(attacks.ensemble_ce(labels=y, logits=z).numpy(), expected, rtol=1e-5)


def test_prediction_ce_matches_numpy_and_is_stable():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 4, 7)).astype(np.float32)
    z[:3] *= 40.0  # confident members: the naive softmax average underflows in float32 for some
    y = rng.integers(0, 7, size=6)
    z64 = z.astype(np.float64)
    logp = z64 - z64.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    lp_y = logp[np.arange(6), :, y]  # [B, N]
    m = lp_y.max(1, keepdims=True)
    expected = np.log(4) - (m[:, 0] + np.log(np.exp(lp_y - m).sum(1)))
    got = attacks.prediction_ce(labels=y, logits=z).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # one member: plain CE; identical members: the same CE (the average of one softmax)
    np.testing.assert_allclose(attacks.prediction_ce(y, z[:, 0]).numpy(), -logp[np.arange(6), 0, y],
                               rtol=1e-5, atol=1e-5)
    same = np.repeat(z[:, :1], 3, axis=1)
    np.testing.assert_allclose(attacks.prediction_ce(y, same).numpy(), -logp[np.arange(6), 0, y],
                               rtol=1e-5, atol=1e-5)
    # never above the mean member CE (Jensen: -log of a mean <= mean of -log)
    assert np.all(got <= attacks.ensemble_ce(y, z).numpy() + 1e-5)


def test_prediction_ce_agrees_with_the_white_box_checks_objective():
    """-log of analysis.ensemble_log_prediction (the ensemble's log prediction) at y: the same CE."""
    from tf_divtrain.analysis.common import ensemble_log_prediction

    rng = np.random.default_rng(4)
    z = tf.constant(rng.normal(size=(8, 5, 10)).astype(np.float32) * 10.0)
    y = tf.constant(rng.integers(0, 10, size=8))
    expected = -tf.gather(ensemble_log_prediction(z), y, batch_dims=1)
    np.testing.assert_allclose(attacks.prediction_ce(y, z).numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_prediction_ce_gradient_weights_members_by_their_p_y():
    """grad_Z of -log mean_i p_i(y) = sum_i w_i grad_Z CE_i with w_i = p_i(y) / sum_j p_j(y)."""
    rng = np.random.default_rng(2)
    z = tf.constant(rng.normal(size=(5, 3, 10)).astype(np.float32) * 3.0)
    y = tf.constant(rng.integers(0, 10, size=5))
    with tf.GradientTape() as tape:
        tape.watch(z)
        loss = tf.reduce_sum(attacks.prediction_ce(y, z))
    got = tape.gradient(loss, z).numpy()
    p = tf.nn.softmax(z, -1).numpy()
    onehot = np.eye(10)[y.numpy()][:, None, :]
    p_y = (p * onehot).sum(-1)
    w = p_y / p_y.sum(1, keepdims=True)
    expected = w[..., None] * (p - onehot)  # dCE_i / dZ_i = softmax_i - onehot
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["fgsm", "ifgsm"])
def test_attacks_with_prediction_ce_follow_the_hand_objective(name, tiny_ens, batch):
    x, y = batch
    step, n = (EPS, 1) if name == "fgsm" else (EPS / 10, 10)
    expected = reference_pgd(tiny_ens.members, "prediction_ce", x, y, EPS, step, n, x)
    got = attacks.make_attack(name, tiny_ens, EPS, loss="prediction_ce")(x, y, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # and it is a different attack from the paper's mean member CE on this ensemble
    assert not np.array_equal(got, attacks.make_attack(name, tiny_ens, EPS)(x, y, 0).numpy())


def cleverhans_fgsm(ens, x, y, loss_fn):
    """CleverHans' own FGM (L-inf, eps = EPS, clipped to [0, 1]) on the ensemble's ``loss_fn``."""
    return fast_gradient_method(attacks.as_logits_fn(ens), tf.constant(x), EPS, np.inf, loss_fn=loss_fn,
                                clip_min=0.0, clip_max=1.0, y=tf.constant(y), sanity_checks=False).numpy()


def test_rfgsm_and_mifgsm_take_the_loss(tiny_ens, batch):
    x, y = batch
    ref = cleverhans_fgsm(tiny_ens, x, y, attacks.prediction_ce)
    np.testing.assert_allclose(
        attacks.rfgsm(tiny_ens, x, y, EPS, 0, rand_eps=0.0, loss="prediction_ce").numpy(), ref,
        atol=1e-7)
    mi = attacks.mifgsm(tiny_ens, x, y, EPS, nb_iter=1, loss="prediction_ce").numpy()
    np.testing.assert_allclose(mi, ref, atol=1e-6)  # one momentum step = sign of the gradient


def test_cw_margin_loss_matches_numpy_formula():
    z = np.array([[[1.0, 5.0, 2.0, 0.0], [3.0, 1.0, 0.5, 2.5]],       # y=1: margins -3, +2
                  [[0.0, 100.0, 0.0, 0.0], [10.0, -50.0, 0.0, 0.0]],  # y=0: 100 (capped), -10
                  [[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 9.0, 1.0]]],      # y=3: 0, 8
                 dtype=np.float32)
    y = np.array([1, 0, 3])

    def numpy_cw(z, y, kappa):
        out = np.zeros(len(y))
        for b in range(len(y)):
            hs = []
            for i in range(z.shape[1]):
                other = max(z[b, i, j] for j in range(z.shape[2]) if j != y[b])
                hs.append(min(other - z[b, i, y[b]], kappa))
            out[b] = np.mean(hs)
        return out

    for kappa in (50.0, 5.0, 0.0):
        got = attacks.cw_margin_loss(y, z, confidence=kappa).numpy()
        np.testing.assert_allclose(got, numpy_cw(z, y, kappa), rtol=1e-6)
    # by hand for kappa=50: mean(-3, 2) ; mean(50, -10) ; mean(0, 8)
    np.testing.assert_allclose(attacks.cw_margin_loss(y, z).numpy(), [-0.5, 20.0, 4.0])
    # single-model logits [B, C] = one member
    np.testing.assert_allclose(attacks.cw_margin_loss(y, z[:, 0]).numpy(), [-3.0, 50.0, 0.0])


def numpy_mifgsm(weights, biases, x, y, eps, k, mu):
    """Eq 5 + Eq 4 for an ensemble of linear softmax models, gradients by hand in NumPy."""
    x = x.reshape(len(x), -1).astype(np.float64)
    onehot = np.eye(10)[y]
    adv, g = x.copy(), np.zeros_like(x)
    for _ in range(k):
        grad = np.zeros_like(x)
        for w, b in zip(weights, biases):  # d CE / dx = W (softmax - onehot)
            z = adv @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            grad += (p - onehot) @ w.T / len(weights)
        g = mu * g + grad / np.abs(grad).sum(1, keepdims=True)
        adv = np.clip(np.clip(adv + eps / k * np.sign(g), x - eps, x + eps), 0, 1)
    return adv


def test_mifgsm_follows_eq5_momentum(batch):
    x, y = batch
    ms = [linear_model(3), linear_model(5)]
    ens = models.Ensemble(ms)
    ws = [m.layers[-1].kernel.numpy().astype(np.float64) for m in ms]
    bs = [m.layers[-1].bias.numpy().astype(np.float64) for m in ms]
    got = attacks.mifgsm(ens, x, y, 0.3, nb_iter=10, decay=1.0).numpy().reshape(len(x), -1)
    with_momentum = numpy_mifgsm(ws, bs, x, y, 0.3, 10, 1.0)
    without = numpy_mifgsm(ws, bs, x, y, 0.3, 10, 0.0)
    assert np.mean(np.abs(got - with_momentum) < 1e-5) > 0.999
    assert np.mean(np.abs(with_momentum - without) > 1e-5) > 0.01, "momentum must matter here"
    assert in_ball(got, x.reshape(len(x), -1), 0.3)


def test_mifgsm_equals_cleverhans_on_single_model(batch, tiny_cnn):
    x, y = batch
    model = tiny_cnn(21)
    ours = attacks.mifgsm(model, x, y, EPS, nb_iter=10, decay=1.0).numpy()
    ref = momentum_iterative_method(model, tf.constant(x), eps=EPS, eps_iter=EPS / 10, nb_iter=10,
                                    norm=np.inf, clip_min=0.0, clip_max=1.0, y=tf.constant(y),
                                    decay_factor=1.0, sanity_checks=False).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_rfgsm_without_random_step_equals_cleverhans_fgsm(tiny_ens, batch):
    x, y = batch
    ref = cleverhans_fgsm(tiny_ens, x, y, attacks.ensemble_ce)
    np.testing.assert_allclose(attacks.rfgsm(tiny_ens, x, y, EPS, 0, rand_eps=0.0).numpy(), ref, atol=1e-7)
    np.testing.assert_allclose(attacks.rfgsm(tiny_ens, x, y, EPS, 0, variant="tramer", alpha=0.0).numpy(),
                               ref, atol=1e-7)


@pytest.mark.parametrize("variant", ["paper", "tramer"])
def test_rfgsm_seeded_and_random(variant, tiny_ens, batch):
    x, y = batch
    a = attacks.rfgsm(tiny_ens, x, y, EPS, 7, variant=variant).numpy()
    b = attacks.rfgsm(tiny_ens, x, y, EPS, 7, variant=variant).numpy()
    c = attacks.rfgsm(tiny_ens, x, y, EPS, 8, variant=variant).numpy()
    fg = attacks.fgsm(tiny_ens, x, y, EPS).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, fg)
    assert in_ball(a, x, EPS)
    if variant == "tramer":  # alpha * random sign then (eps - alpha) step: |delta| in {0, eps/2, eps}
        d = np.abs(a - x)[(a > 0) & (a < 1) & (x > 0.2) & (x < 0.8)]
        assert np.all(np.isclose(d, 0, atol=1e-6) | np.isclose(d, EPS / 2, atol=1e-6)
                      | np.isclose(d, EPS, atol=1e-6))


def reference_pgd(members, loss, x, y, eps, step, n, x0):
    """Independent PGD loop: GradientTape + hand losses + projection."""
    adv = tf.constant(x0)
    for _ in range(n):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            zs = [m(adv) for m in members]
            if loss == "ce":
                val = hand_mean_ce(zs, tf.constant(y))
            elif loss == "prediction_ce":
                val = hand_prediction_ce(zs, tf.constant(y))
            else:  # mean over members of min(max_{j != y} Z_j - Z_y, 50)
                onehot = tf.one_hot(y, 10)
                hs = [tf.minimum(tf.reduce_max(z - 1e9 * onehot, -1) - tf.reduce_sum(z * onehot, -1), 50.)
                      for z in zs]
                val = tf.add_n(hs) / len(hs)
            total = tf.reduce_sum(val)
        g = tape.gradient(total, adv)
        adv = tf.clip_by_value(adv + step * tf.sign(g), 0, 1)
        adv = tf.clip_by_value(x + tf.clip_by_value(adv - x, -eps, eps), 0, 1)
    return adv.numpy()


def test_ifgsm_follows_eqs_3_4(tiny_ens, batch):
    x, y = batch
    expected = reference_pgd(tiny_ens.members, "ce", x, y, EPS, EPS / 10, 10, x)
    np.testing.assert_allclose(attacks.ifgsm(tiny_ens, x, y, EPS).numpy(), expected, atol=1e-6)


def test_pgd_cw_from_its_random_start(tiny_ens, batch):
    x, y = batch
    x0 = attacks.random_start(x, EPS, 5).numpy()
    assert in_ball(x0, x, EPS) and not np.array_equal(x0, x)
    expected = reference_pgd(tiny_ens.members, "cw", x, y, EPS, 2.5 * EPS / 30, 30, x0)
    got = attacks.pgd_cw(tiny_ens, x, y, EPS, seed=5).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(got, attacks.pgd_cw(tiny_ens, x, y, EPS, seed=5).numpy())
    # general pgd with rand_init=False is CleverHans PGD (= BIM)
    ref = projected_gradient_descent(attacks.as_logits_fn(tiny_ens), tf.constant(x), EPS, 0.02, 5,
                                     np.inf, loss_fn=attacks.ensemble_ce, clip_min=0., clip_max=1.,
                                     y=tf.constant(y), rand_init=False, sanity_checks=False).numpy()
    np.testing.assert_allclose(attacks.pgd(tiny_ens, x, y, EPS, 0.02, 5, rand_init=False).numpy(), ref,
                               atol=1e-7)


def test_compiled_attack_does_not_retrace_across_batches(tiny_ens, mnist):
    x, y = mnist.x_test[:70], mnist.y_test[:70]
    atk = attacks.make_attack("rfgsm", tiny_ens, EPS)
    outs = [atk(x[i:i + 25], y[i:i + 25], tf.constant([0, b], tf.int64))
            for b, i in enumerate(range(0, 70, 25))]  # batches 25, 25, 20
    ch_traces = ch_utils.compute_gradient.experimental_get_tracing_count()
    outs += [atk(x[:25], y[:25], 9), atk(x[:13], y[:13], tf.constant([1, 2]))]
    assert atk.tracing_count == 1 and atk.python_traces == 1
    assert ch_utils.compute_gradient.experimental_get_tracing_count() == ch_traces
    assert all(in_ball(o, xx, EPS) for o, xx in zip(outs, [x[:25], x[25:50], x[50:], x[:25], x[:13]]))
    mi = attacks.make_attack("mifgsm", tiny_ens, EPS)
    for i in range(0, 70, 25):
        mi(x[i:i + 25], y[i:i + 25], 0)
    assert mi.tracing_count == 1 and mi.python_traces == 1


def test_bad_inputs_raise(tiny_cnn):
    ens = models.Ensemble([tiny_cnn(1)])
    with pytest.raises(ValueError, match="Unknown attack 'cw'.*fgsm, rfgsm, ifgsm, mifgsm, pgd_cw"):
        attacks.make_attack("cw", ens, 0.1)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
            attacks.make_attack("fgsm", ens, bad)
    with pytest.raises(ValueError, match="not a number"):
        attacks.make_attack("fgsm", ens, "big")
    with pytest.raises(ValueError, match="Unknown option"):
        attacks.make_attack("fgsm", ens, 0.1, nb_iter=3)
    with pytest.raises(ValueError, match="Unknown loss 'mean'.*'prediction_ce'"):
        attacks.make_attack("ifgsm", ens, 0.1, loss="mean")
    with pytest.raises(ValueError, match="variant"):
        attacks.rfgsm(ens, np.zeros((1, 28, 28, 1), np.float32), [0], 0.1, variant="x")


# ---------------------------------------------------------------------------------------------
# A briefly trained conv3 surrogate: iterative attacks must be at least as strong as FGSM.

@pytest.fixture(scope="module")
def trained_conv3(mnist):
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 2, seed=0)
    opt = keras.optimizers.Adam(1e-3)
    from tf_divtrain import gal

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(gal.member_cross_entropy(ens.member_logits(xb, training=True), yb))
        grads = tape.gradient(loss, ens.trainable_variables)
        opt.apply_gradients(zip(grads, ens.trainable_variables))
        return loss

    x, y = mnist.x_train[:3200], mnist.y_train[:3200]
    for i in range(100):
        step(x[i * 32 % 3200:(i * 32 % 3200) + 32], y[i * 32 % 3200:(i * 32 % 3200) + 32])
    return ens


def test_iterative_attacks_at_least_as_strong_as_fgsm(trained_conv3, mnist):
    x, y = mnist.x_test[:100], mnist.y_test[:100]
    eps = 0.1

    def acc(xx):
        return float(np.mean(np.argmax(trained_conv3.probabilities(xx).numpy(), -1) == y))

    clean = acc(x)
    assert clean > 0.7, f"surrogate did not train (clean acc {clean})"
    accs = {n: acc(attacks.make_attack(n, trained_conv3, eps)(x, y, 0)) for n in attacks.ATTACKS}
    assert accs["fgsm"] < clean
    for n in ("ifgsm", "mifgsm", "pgd_cw"):
        assert accs[n] <= accs["fgsm"], accs


def test_option_values_are_checked_by_a_dry_run_of_the_attack():
    """check_option_values runs the attack itself on one pixel: valid values pass unchanged, bad
    ones raise the attack's own message naming the attack, eps and options."""
    ok = {"variant": "tramer", "alpha": 0.1, "loss": "prediction_ce"}
    assert attacks.check_option_values("rfgsm", 0.3, ok) == ok
    assert attacks.check_option_values("pgd_cw", 0.1, {"nb_iter": 5, "confidence": 0.0}) == {
        "nb_iter": 5, "confidence": 0.0}
    assert attacks.check_option_values("fgsm", 0.1, {}) == {}
    for name, eps, opts, msg in (
            ("rfgsm", 0.3, {"variant": "madry"}, "Unknown R-FGSM variant 'madry'"),
            ("rfgsm", 0.1, {"variant": "tramer", "alpha": 0.2}, r"'rfgsm' at eps=0.1 .*alpha=0.2 must be in"),
            ("rfgsm", 0.3, {"rand_eps": 2.0}, r"rand_eps=2.0 must be in \[0, 1\]"),
            ("ifgsm", 0.3, {"nb_iter": 0}, "nb_iter=0 must be an integer >= 1"),
            ("mifgsm", 0.3, {"nb_iter": 2.5}, "nb_iter=2.5 must be an integer"),
            ("pgd_cw", 0.3, {"nb_iter": "ten"}, "nb_iter='ten' is not an integer"),
            ("pgd_cw", 0.3, {"confidence": "high"}, "'pgd_cw'.*confidence='high'"),
            ("mifgsm", 0.3, {"loss": "hinge"}, "Unknown loss 'hinge'"),
            ("fgsm", 0.3, {"nb_iter": 3}, r"Unknown option\(s\) \['nb_iter'\]")):
        with pytest.raises(ValueError, match=msg):
            attacks.check_option_values(name, eps, opts)


@pytest.mark.parametrize("name", ["ifgsm", "mifgsm", "pgd_cw"])
def test_iteration_count_must_be_a_positive_integer(name, tiny_ens, batch):
    x, y = batch
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"nb_iter={bad} must be an integer >= 1"):
            getattr(attacks, name)(tiny_ens, x, y, 0.1, nb_iter=bad)
    assert attacks.check_nb_iter(3) == 3 and attacks.check_nb_iter(np.int64(3)) == 3

"""ADP / TRS / DVERGE maths (tf_divtrain.methods) against NumPy, finite differences and short real-data
trainings, plus the registry and input checks."""

import dataclasses
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import data, gal
from tf_divtrain.methods import METHODS, adp, dverge, get_method, make_config, trs

# ----------------------------------------------------------------------------------------------
# Tiny models with a NumPy twin.


def _mlp(d, hidden, c, seed, dtype="float64"):
    inp = keras.Input((d,), dtype=dtype)
    h = keras.layers.Dense(hidden, activation="tanh", dtype=dtype,
                           kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed),
                           bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed + 100))(inp)
    out = keras.layers.Dense(c, dtype=dtype,
                             kernel_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=seed + 200),
                             bias_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed + 300))(h)
    return keras.Model(inp, out)


def _np_mlp(model, x):
    w1, b1, w2, b2 = [np.asarray(w, np.float64) for w in model.get_weights()]
    return np.tanh(x @ w1 + b1) @ w2 + b2


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(logits, y):
    """logits [..., B, C], y [B] -> [..., B]."""
    return -np.take_along_axis(_np_log_softmax(logits), y[:, None], axis=-1)[..., 0]


def _np_entropy(probs, offset=1e-20):
    p = probs.mean(1)
    return -(p * np.log(p + offset)).sum(-1)


def _np_logdet(probs, y, delta=1e-6):
    out = []
    for b in range(len(y)):
        m = np.stack([np.delete(probs[b, k], y[b]) for k in range(probs.shape[1])])  # true label removed
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        sign, val = np.linalg.slogdet(m @ m.T + delta * np.eye(len(m)))
        assert sign > 0
        out.append(val)
    return np.array(out)


def _softmax(z):
    return np.exp(_np_log_softmax(z))


# ----------------------------------------------------------------------------------------------
# ADP


def test_adp_terms_against_numpy():
    rng = np.random.RandomState(0)
    logits = rng.randn(7, 3, 6) * 2.0
    logits[0, 1] = logits[0, 0]  # two identical members: ED ~ 0, log-det near log(delta)
    y = rng.randint(0, 6, size=7)
    probs = _softmax(logits)
    np.testing.assert_allclose(adp.ensemble_entropy(tf.constant(probs)).numpy(), _np_entropy(probs), rtol=1e-10)
    ref = _np_logdet(probs, y)
    np.testing.assert_allclose(adp.log_det_nonmax(tf.constant(probs), tf.constant(y)).numpy(), ref, rtol=1e-7)
    np.testing.assert_allclose(adp.log_det_nonmax_from_logits(tf.constant(logits), tf.constant(y)).numpy(),
                               ref, rtol=1e-7)
    assert ref[0] < ref[1:].min() - 5  # the duplicated pair really collapses the volume
    # Removing the TRUE label matters: removing another column gives different values.
    wrong = _np_logdet(probs, (y + 1) % 6)
    assert np.abs(wrong - ref).max() > 1e-2


def test_adp_logdet_from_logits_survives_confident_members():
    rng = np.random.RandomState(1)
    logits = rng.randn(5, 3, 10).astype(np.float32)
    y = rng.randint(0, 10, size=5)
    confident = logits.copy()
    confident[np.arange(5), :, y] += 300.0  # softmax of the other classes underflows to exactly 0
    a = adp.log_det_nonmax_from_logits(tf.constant(logits), tf.constant(y)).numpy()
    b = adp.log_det_nonmax_from_logits(tf.constant(confident), tf.constant(y)).numpy()
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-5)  # the normalised non-maximal vector ignores the true logit
    np.testing.assert_allclose(a, _np_logdet(_softmax(logits.astype(np.float64)), y), rtol=1e-4)


def test_adp_objective_against_numpy():
    members = [_mlp(4, 5, 4, seed=s) for s in (1, 2, 3)]
    rng = np.random.RandomState(2)
    x, y = rng.rand(6, 4), rng.randint(0, 4, size=6)
    out = adp.objective(members, tf.constant(x), tf.constant(y), training=False, alpha=1.5, beta=0.7)
    logits = np.stack([_np_mlp(m, x) for m in members], axis=1)
    probs = _softmax(logits)
    ce = np.stack([_np_ce(logits[:, k], y) for k in range(3)], axis=1)
    h, ld = _np_entropy(probs), _np_logdet(probs, y)
    np.testing.assert_allclose(out["ce"].numpy(), ce, rtol=1e-9)
    np.testing.assert_allclose(out["adp_entropy"].numpy(), h, rtol=1e-9)
    np.testing.assert_allclose(out["adp_logdet"].numpy(), ld, rtol=1e-7)
    np.testing.assert_allclose(out["loss"].numpy(), ce.sum(1) - 1.5 * h - 0.7 * ld, rtol=1e-7)
    assert out["loss"].shape == (6,) and out["logits"].shape == (6, 3, 4)


# ----------------------------------------------------------------------------------------------
# TRS


def _fd_input_grads(members, x, y, h=1e-6):
    """Central finite differences of each member's per-example CE w.r.t. its input: [B, N, D]."""
    g = np.zeros((x.shape[0], len(members), x.shape[1]))
    for k, m in enumerate(members):
        for d in range(x.shape[1]):
            e = np.zeros_like(x)
            e[:, d] = h
            g[:, k, d] = (_np_ce(_np_mlp(m, x + e), y) - _np_ce(_np_mlp(m, x - e), y)) / (2 * h)
    return g


def _np_trs_terms(g):
    pairs = [(a, b) for a, b in itertools.combinations(range(g.shape[1]), 2)]
    cos = np.stack([np.sum(g[:, a] * g[:, b], -1) / (np.linalg.norm(g[:, a], axis=-1) * np.linalg.norm(g[:, b], axis=-1))
                    for a, b in pairs], axis=1)
    return cos, (g ** 2).sum(-1).mean(1)


def test_trs_terms_against_finite_differences():
    members = [_mlp(5, 4, 3, seed=s) for s in (11, 12, 13)]
    rng = np.random.RandomState(3)
    x, y = rng.uniform(0.2, 0.8, size=(4, 5)), rng.randint(0, 3, size=4)
    raw_cos, smooth = _np_trs_terms(_fd_input_grads(members, x, y))
    assert raw_cos.min() < -0.1  # some pair is anti-aligned, so the ABSOLUTE value is exercised
    out = trs.objective(members, tf.constant(x), tf.constant(y), training=False, coeff=1.5, lamda=3.0,
                        scale=2.0, grad_batch_size=2)
    np.testing.assert_allclose(out["trs_cos"].numpy(), np.abs(raw_cos).mean(1), rtol=1e-6)
    np.testing.assert_allclose(out["trs_smooth"].numpy(), smooth, rtol=1e-6)
    logits = np.stack([_np_mlp(m, x) for m in members], axis=1)
    ce = np.stack([_np_ce(logits[:, k], y) for k in range(3)], axis=1)
    # their loss: sum CE + scale * (coeff * cos + lamda * 2 * mean_i ||grad of batch-mean CE||^2)
    ref = ce.sum(1) + 2.0 * (1.5 * np.abs(raw_cos).mean(1) + 3.0 * 2.0 * smooth / 2 ** 2)
    np.testing.assert_allclose(out["loss"].numpy(), ref, rtol=1e-6)


def test_trs_smoothness_on_pgd_half():
    members = [_mlp(5, 4, 3, seed=s) for s in (21, 22)]
    rng = np.random.RandomState(4)
    x, y = rng.uniform(0.2, 0.8, size=(6, 5)), rng.randint(0, 3, size=6)
    seed = tf.constant([3, 4], tf.int64)
    x_pgd = trs.smoothness_pgd(members, tf.constant(x[3:]), tf.constant(y[3:]), 0.1, 6, seed).numpy()
    assert np.abs(x_pgd - x[3:]).max() <= 0.1 + 1e-12 and x_pgd.min() >= 0 and x_pgd.max() <= 1
    _, smooth_clean = _np_trs_terms(_fd_input_grads(members, x, y))
    _, smooth_pgd = _np_trs_terms(_fd_input_grads(members, x_pgd, y[3:]))
    assert smooth_pgd.mean() > 1.2 * smooth_clean[3:].mean()  # the PGD ascends the gradient magnitude
    out = trs.objective(members, tf.constant(x), tf.constant(y), training=False, smooth_eps=0.1, seed=seed)
    np.testing.assert_allclose(out["trs_smooth"].numpy(), np.concatenate([smooth_clean[:3], smooth_pgd]), rtol=1e-6)


def test_trs_eps_schedule_follows_their_formula():
    cfg = trs.TRSConfig(init_eps=0.1, adv_eps=0.3)
    for epoch, epochs in [(0, 10), (4, 10), (9, 10)]:
        assert cfg.smooth_eps(epoch, epochs) == pytest.approx((0.3 - 0.1) * epoch / epochs + 0.1)
        assert cfg.objective_kwargs(epoch, epochs)["smooth_eps"] == cfg.smooth_eps(epoch, epochs)
    assert trs.TRSConfig(plus_adv=False).smooth_eps(5, 10) == 0.0
    with pytest.raises(ValueError, match="epoch"):
        cfg.smooth_eps(10, 10)


# ----------------------------------------------------------------------------------------------
# DVERGE


def _tiny_conv(seed, input_shape=(28, 28, 1)):
    init = lambda k: keras.initializers.GlorotUniform(seed=seed * 10 + k)
    inp = keras.Input(input_shape)
    h = keras.layers.Conv2D(8, 5, strides=2, kernel_initializer=init(1))(inp)
    h = keras.layers.LeakyReLU(0.2)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(10, kernel_initializer=init(2))(h))


def test_feature_model_layers_and_range():
    m = _tiny_conv(0, (8, 8, 1))
    x = tf.random.uniform((3, 8, 8, 1), seed=1)
    assert dverge.distill_layer_choices(m) == [1, 4]  # conv (pre-activation) and the logits
    np.testing.assert_allclose(dverge.feature_model(m, 4)(x).numpy(), m(x).numpy(), rtol=1e-6)
    conv = m.layers[1]
    np.testing.assert_allclose(dverge.feature_model(m, 1)(x).numpy(), conv(x).numpy(), rtol=1e-6)
    for bad in (0, 5, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"valid layers are 1\.\.4"):
            dverge.feature_model(m, bad)
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.ReLU(), keras.layers.Dense(2)])
    assert dverge.distill_layer_choices(seq) == [1, 3]
    with pytest.raises(ValueError, match=r"1\.\.3"):
        dverge.feature_model(seq, 4)
    with pytest.raises(ValueError, match="keras.Model"):
        dverge.feature_model(lambda t: t, 1)
    assert dverge.DVERGEConfig(layer=2).pick_layer(m, epoch=3) == 2
    with pytest.raises(ValueError, match=r"1\.\.4"):
        dverge.DVERGEConfig(layer=9).pick_layer(m, epoch=0)
    picks = [dverge.DVERGEConfig().pick_layer(m, epoch=e, seed=7) for e in range(12)]
    assert set(picks) == {1, 4} and picks == [dverge.DVERGEConfig().pick_layer(m, e, 7) for e in range(12)]


def _np_distill_linear(w, x, t, eps, steps, step, momentum):
    """Their Linf_distillation for a linear feature f(x) = x @ w, in NumPy."""
    target, xa, acc = t @ w, x.copy(), np.zeros_like(x)
    for _ in range(steps):
        g = 2 * (xa @ w - target) @ w.T
        if momentum:
            acc = acc + g / np.maximum(np.abs(g).sum(1, keepdims=True), 1e-12)
            g = acc
        xa = np.clip(np.clip(xa - step * np.sign(g), x - eps, x + eps), 0, 1)
    return xa


@pytest.mark.parametrize("momentum", [True, False])
def test_distill_matches_numpy_pgd_on_linear_features(momentum):
    rng = np.random.RandomState(5)
    w = rng.randn(6, 4)
    x, t = rng.rand(5, 6), rng.rand(5, 6)
    feat = lambda z: tf.matmul(z, tf.constant(w))
    got = dverge.distill(feat, tf.constant(x), tf.constant(t), eps=0.2, steps=7, step_size=0.03, momentum=momentum)
    np.testing.assert_allclose(got.numpy(), _np_distill_linear(w, x, t, 0.2, 7, 0.03, momentum), atol=1e-12)


def test_distill_on_real_images_moves_features_within_the_ball(mnist):
    m = _tiny_conv(1)
    x, xt = mnist.x_train[:16], mnist.x_train[16:32]
    feat = dverge.feature_model(m, 1)
    before = dverge.feature_distance(feat(x), feat(xt)).numpy()
    for rand_start in (False, True):
        xd = dverge.distill(feat, x, xt, eps=0.1, steps=10, step_size=0.01, seed=tf.constant([1, 2]),
                            rand_start=rand_start).numpy()
        after = dverge.feature_distance(feat(xd), feat(xt)).numpy()
        assert np.all(after < before) and after.mean() < 0.8 * before.mean()
        assert np.abs(xd - x).max() <= 0.1 + 1e-6 and xd.min() >= 0.0 and xd.max() <= 1.0


def test_dverge_cross_training_ce_against_numpy():
    members = [_mlp(4, 5, 3, seed=s) for s in (31, 32, 33)]
    rng = np.random.RandomState(6)
    xs = [rng.rand(5, 4) for _ in range(3)]
    xc, y = rng.rand(5, 4), rng.randint(0, 3, size=5)
    ce_ij = np.array([[_np_ce(_np_mlp(members[i], xs[j]), y) for j in range(3)] for i in range(3)])  # [i, j, B]
    cross = np.stack([sum(ce_ij[i, j] for j in range(3) if j != i) for i in range(3)], axis=1)  # [B, N]
    out = dverge.objective(members, [tf.constant(v) for v in xs], tf.constant(y), training=False)
    np.testing.assert_allclose(out["ce"].numpy(), cross, rtol=1e-9)
    np.testing.assert_allclose(out["loss"].numpy(), cross.sum(1), rtol=1e-9)
    np.testing.assert_allclose(out["dverge_cross_ce"].numpy(), cross.sum(1) / 6, rtol=1e-9)
    clean = np.stack([_np_ce(_np_mlp(m, xc), y) for m in members], axis=1)
    out = dverge.objective(members, [tf.constant(v) for v in xs], tf.constant(y), training=False,
                           include_clean=True, x_clean=tf.constant(xc), coeff=0.5)
    np.testing.assert_allclose(out["loss"].numpy(), 0.5 * cross.sum(1) + clean.sum(1), rtol=1e-9)
    np.testing.assert_allclose(out["logits"].numpy(), np.stack([_np_mlp(m, xc) for m in members], 1), rtol=1e-9)
    per_member = [tf.constant(v) for v in xs]  # their plus-adv form: member i's own extra input
    out = dverge.objective(members, per_member, tf.constant(y), training=False, include_clean=True, x_clean=per_member)
    own = np.stack([ce_ij[i, i] for i in range(3)], axis=1)
    np.testing.assert_allclose(out["loss"].numpy(), cross.sum(1) + own.sum(1), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Mixed precision: loss maths in float32.


def test_objectives_compute_in_float32_under_bfloat16_members(mnist):
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inp)
    members = [keras.Model(inp, keras.layers.Dense(10, dtype="mixed_bfloat16")(h)) for _ in range(2)]
    x, y = tf.constant(mnist.x_train[:8]), tf.constant(mnist.y_train[:8])
    assert members[0](x).dtype == tf.bfloat16
    outs = [adp.objective(members, x, y), trs.objective(members, x, y),
            dverge.objective(members, [x, x], y, x_clean=x)]
    for out in outs:
        for k, v in out.items():
            assert v.dtype == tf.float32, k
            assert np.all(np.isfinite(v.numpy())), k


# ----------------------------------------------------------------------------------------------
# A few real-data steps: each diversity term moves its own measure (vs the same steps without it).


@pytest.fixture(scope="module")
def mnist_slice(data_dir):
    ds = data.load_dataset("mnist", data_dir, train_size=2048, test_size=256)
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


def _dense_members(seeds):
    out = []
    for s in seeds:
        inp = keras.Input((28, 28, 1))
        h = keras.layers.Flatten()(inp)
        h = keras.layers.Dense(32, kernel_initializer=keras.initializers.GlorotUniform(seed=s))(h)
        h = keras.layers.LeakyReLU(0.2)(h)
        out.append(keras.Model(inp, keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(seed=s + 1))(h)))
    return out


def _train(members, loss_fn, x, y, steps, batch=64, lr=3e-3, start=0):
    """``steps`` Adam steps (one compiled step) of sum(loss_fn(members, xb, yb, step)["loss"]) / batch."""
    opt = keras.optimizers.Adam(lr)
    variables = [v for m in members for v in m.trainable_variables]

    @tf.function
    def step(xb, yb, s):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(members, xb, yb, s)["loss"]) / batch
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for s in range(steps):
        i = ((start + s) * batch) % (len(x) - batch)
        step(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch]), tf.constant(s, tf.int64))


def _ce_loss(members, xb, yb, s):
    """The same steps with the diversity term off: plain summed member CE."""
    logits = tf.stack([m(xb, training=True) for m in members], 1)
    return {"loss": tf.reduce_sum(gal.member_cross_entropy(logits, yb), -1)}


def _accuracy(members, x, y):
    logits = tf.stack([m(x, training=False) for m in members], 1)
    return float(np.mean(np.argmax(tf.reduce_mean(tf.nn.softmax(logits), 1).numpy(), -1) == y))


def test_adp_training_raises_logdet_and_entropy(mnist_slice):
    """Each ADP term moves its own measure: full ADP vs the same steps with one term (or both) off."""
    x, y, xt, yt = mnist_slice
    runs = {}
    for alpha, beta in [(2.0, 0.5), (2.0, 0.0), (0.0, 0.5), (0.0, 0.0)]:
        members = _dense_members([1, 2, 3])
        _train(members, lambda m, xb, yb, s: adp.objective(m, xb, yb, alpha=alpha, beta=beta), x, y, steps=40)
        out = adp.objective(members, tf.constant(xt), tf.constant(yt), training=False)
        runs[alpha, beta] = (float(np.mean(out["adp_logdet"])), float(np.mean(out["adp_entropy"])),
                             _accuracy(members, xt, yt))
    print("adp", runs)
    full, no_logdet, no_entropy, base = runs[2.0, 0.5], runs[2.0, 0.0], runs[0.0, 0.5], runs[0.0, 0.0]
    assert full[0] > no_logdet[0] + 1.5 and full[0] > base[0] + 2.0, runs  # log-det term
    assert full[1] > no_entropy[1] + 0.25, runs  # ensemble-entropy term
    assert min(r[2] for r in runs.values()) > 0.7, runs


def test_trs_training_lowers_gradient_alignment(mnist_slice):
    x, y, xt, yt = mnist_slice
    runs = {}
    for scale in (5.0, 0.0):
        members = _dense_members([4, 5, 6])
        # TRS as configured by default (plus_adv: smoothness also on a PGD half), vs the same loss with
        # scale = 0 (sum of CE only; no PGD needed then).
        kwargs = trs.TRSConfig(scale=scale, plus_adv=scale > 0).objective_kwargs(epoch=0, epochs=1)
        _train(members, lambda m, xb, yb, s: trs.objective(m, xb, yb, seed=tf.stack([s, 9]), **kwargs),
               x, y, steps=20)
        grads, _, _ = gal.member_input_gradients(members, tf.constant(xt), tf.constant(yt), training=False)
        runs[scale] = (float(np.mean(trs.abs_pair_cosine(grads))), _accuracy(members, xt, yt))
    print("trs", runs)
    (cos_trs, acc_trs), (cos_base, acc_base) = runs[5.0], runs[0.0]
    assert cos_trs < 0.5 * cos_base, runs
    assert acc_trs > 0.6 and acc_base > 0.6, runs


def _cross_transfer_accuracy(members, layer, x, xt, y, cfg):
    distilled = dverge.distill_members(members, x, xt, layer, **cfg.distill_kwargs())
    accs = [np.mean(np.argmax(members[i](distilled[j], training=False).numpy(), -1) == y)
            for i in range(len(members)) for j in range(len(members)) if i != j]
    return float(np.mean(accs))


def test_dverge_training_resists_other_members_distilled_images(mnist_slice):
    """Cross-member transfer of distilled images: the accuracy (source label) of member i on images
    distilled on member j != i towards another image's features. DVERGE trains exactly this."""
    x, y, xt, yt = mnist_slice
    cfg = make_config("dverge", eps=0.3, step_size=0.03, steps=10)  # MNIST-scale radius (TRS repo: 0.35)
    members = _dense_members([1, 3, 5])
    layer = dverge.distill_layer_choices(members[0])[-1]  # the logits (their layer = depth)
    _train(members, _ce_loss, x, y, steps=30)  # both runs start from the same CE-trained ensemble
    start = [[v.numpy() for v in m.weights] for m in members]

    def dverge_loss(m, xb, yb, s):
        target = tf.roll(xb, shift=7, axis=0)  # other real images as distillation targets
        distilled = dverge.distill_members(m, xb, target, layer, **cfg.distill_kwargs())
        return dverge.objective(m, distilled, yb, **cfg.objective_kwargs())

    runs = {}
    for name, loss_fn in (("dverge", dverge_loss), ("ce", _ce_loss)):
        for m, w in zip(members, start):
            m.set_weights(w)
        _train(members, loss_fn, x, y, steps=20, start=30)
        runs[name] = (_cross_transfer_accuracy(members, layer, xt[:128], xt[128:], yt[:128], cfg),
                      _accuracy(members, xt, yt))
    print("dverge", runs)
    (cross_dv, acc_dv), (cross_ce, acc_ce) = runs["dverge"], runs["ce"]
    assert cross_dv > cross_ce + 0.25, runs
    assert acc_dv > 0.6 and acc_ce > 0.7, runs


# ----------------------------------------------------------------------------------------------
# Registry and bad input


def test_registry_defaults_and_objectives():
    assert set(METHODS) == {"adp", "trs", "dverge"}
    assert METHODS["adp"].defaults == adp.ADPConfig(alpha=2.0, beta=0.5, log_offset=1e-20, det_offset=1e-6)
    assert METHODS["trs"].defaults.objective_kwargs(0, 4)["smooth_eps"] == pytest.approx(0.1)
    d = METHODS["dverge"].defaults
    assert (d.eps, d.step_size, d.steps, d.layer, d.rand_start, d.momentum) == (0.07, 0.007, 10, None, False, True)
    for name, method in METHODS.items():
        assert get_method(name) is method and callable(method.objective)
        first = dataclasses.fields(method.defaults)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(method.defaults, first, 0.0)


@pytest.mark.parametrize("name, field, value, match", [
    ("adp", "alpha", -1.0, r"adp: alpha=-1\.0 is outside the valid range \[0, inf\)"),
    ("adp", "beta", None, r"adp: beta must be a real number in \[0, inf\)"),
    ("adp", "det_offset", 0.0, r"det_offset=0\.0 is outside the valid range \(0, 1\]"),
    ("trs", "scale", float("nan"), r"trs: scale=nan"),
    ("trs", "pgd_steps", 0, r"pgd_steps=0 is outside the valid range \[1, inf\)"),
    ("trs", "grad_batch_size", 1.5, r"grad_batch_size must be an integer"),
    ("trs", "plus_adv", "yes", r"plus_adv must be True or False"),
    ("dverge", "eps", 1.5, r"dverge: eps=1\.5 is outside the valid range \[0, 1\]"),
    ("dverge", "step_size", 0.0, r"step_size=0\.0 is outside the valid range \(0, 1\]"),
    ("dverge", "layer", 0, r"layer=0 is outside the valid range \[1, inf\)"),
])
def test_invalid_hyperparameters_are_named(name, field, value, match):
    with pytest.raises(ValueError, match=match):
        make_config(name, **{field: value})


def test_bad_method_names_fields_and_calls():
    with pytest.raises(ValueError, match=r"Unknown diversity method 'gal'; valid: adp, trs, dverge"):
        get_method("gal")
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) gamma; valid: alpha, beta"):
        make_config("adp", gamma=1.0)
    members = [_mlp(3, 2, 3, seed=s) for s in (41, 42)]
    x, y = tf.constant(np.random.RandomState(7).rand(2, 3)), tf.constant([0, 1])
    with pytest.raises(ValueError, match="beta=-0.1"):
        adp.objective(members, x, y, beta=-0.1)
    with pytest.raises(ValueError, match="at least 2 members"):
        trs.objective(members[:1], x, y)
    with pytest.raises(ValueError, match="seed"):
        trs.objective(members, x, y, smooth_eps=0.1)
    with pytest.raises(ValueError, match="one batch per member"):
        dverge.objective(members, [x], y)
    with pytest.raises(ValueError, match="needs x_clean"):
        dverge.objective(members, [x, x], y, include_clean=True)
    with pytest.raises(ValueError, match="rand_start=True needs seed"):
        dverge.distill(lambda t: t, x, x, 0.1, 2, 0.01, rand_start=True)


def test_adp_terms_experiment_against_numpy():
    """experiments/adp_terms.py: entropy of the mean prediction, ADP's log-det and member
    disagreement of a hand-built 3-member ensemble, against NumPy."""
    import importlib.util
    import itertools
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "adp_terms.py")
    spec = importlib.util.spec_from_file_location("adp_terms", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 3, 4)).astype(np.float32) * 3
    y = rng.integers(0, 4, size=7).astype(np.int64)

    class Fixed:  # member_logits of the first len(x) rows: the experiment batches by 3 here
        def member_logits(self, x):
            return tf.constant(logits[np.asarray(x)[:, 0].astype(int)])

    x = np.arange(7, dtype=np.float32)[:, None]
    got = mod.terms(Fixed(), x, y, batch=3)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mean = p.mean(1)
    ent = -(mean * np.log(mean + 1e-20)).sum(-1)
    lds = []
    for b in range(7):
        rest = np.delete(p[b], y[b], axis=1)
        u = rest / np.linalg.norm(rest, axis=1, keepdims=True)
        lds.append(np.linalg.slogdet(u @ u.T + 1e-6 * np.eye(3))[1])
    pred = logits.argmax(-1)
    dis = np.mean([[pred[b, i] != pred[b, j] for i, j in itertools.combinations(range(3), 2)] for b in range(7)])
    assert got["ensemble_entropy"] == pytest.approx(ent.mean(), rel=1e-4)
    assert got["log_det_nonmax"] == pytest.approx(np.mean(lds), rel=1e-3, abs=1e-3)
    assert got["member_disagreement"] == pytest.approx(dis)

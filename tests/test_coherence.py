"""Scale-free coherence and vanishing gradients (issue 27), each against an independent computation
(NumPy float64, analytic gradients of small models)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import analysis, gal


def np_pair_cosines(g):
    """float64 reference: cosines of the unique pairs a < b, [B, N, D] -> [B, P]."""
    g = np.asarray(g, np.float64)
    n = g.shape[1]
    a, b = np.triu_indices(n, k=1)
    num = np.einsum("bpd,bpd->bp", g[:, a], g[:, b])
    return num / (np.linalg.norm(g[:, a], axis=-1) * np.linalg.norm(g[:, b], axis=-1))


def scaled_grads(rng, b=6, n=4, d=64):
    """Random directions, each (example, member) at its own scale between 1e-30 and 1e+3."""
    g = rng.standard_normal((b, n, d))
    scale = 10.0 ** rng.uniform(-30, 3, size=(b, n, 1))
    scale[0, :, 0] = [1e-30, 1e-30, 1e3, 1e-12]  # extremes in one example
    return (g * scale).astype(np.float32)


def test_scale_free_cosines_match_float64_from_1e_minus30_to_1e3():
    g = scaled_grads(np.random.default_rng(0))
    want = np_pair_cosines(g)  # of the very float32 vectors, in float64
    cos, defined = gal.scale_free_pair_cosines(tf.constant(g))
    assert defined.numpy().all()
    np.testing.assert_allclose(cos.numpy(), want, atol=2e-6)
    np.testing.assert_allclose(gal.scale_free_coherence(tf.constant(g)).numpy(), want.max(-1), atol=2e-6)
    np.testing.assert_allclose(gal.mean_over_defined(cos, defined).numpy(), want.mean(-1), atol=2e-6)
    norms = np.linalg.norm(g.astype(np.float64), axis=-1)
    np.testing.assert_allclose(gal.scale_free_norm(tf.constant(g)).numpy(), norms, rtol=1e-5)
    # The training formula's floor (|g| < 1e-6) is what this fixes: it is far off here.
    assert np.abs(gal.pair_cosines(tf.constant(g)).numpy() - want).max() > 0.1


def test_scale_free_agrees_with_training_formula_on_normal_sized_gradients():
    rng = np.random.default_rng(1)
    g = (rng.standard_normal((8, 5, 100)) * 10.0 ** rng.uniform(-2, 2, (8, 5, 1))).astype(np.float32)
    cos, defined = gal.scale_free_pair_cosines(tf.constant(g))
    np.testing.assert_allclose(cos.numpy(), gal.pair_cosines(tf.constant(g)).numpy(), atol=1e-6)
    np.testing.assert_allclose(gal.scale_free_coherence(tf.constant(g)).numpy(),
                               gal.coherence(tf.constant(g)).numpy(), atol=1e-6)
    np.testing.assert_allclose(gal.mean_over_defined(cos, defined).numpy(),
                               gal.mean_pairwise_cosine(tf.constant(g)).numpy(), atol=1e-6)


def test_zero_and_non_finite_gradients_have_no_direction():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((4, 3, 10)).astype(np.float32)
    g[0, 0] = 0.0                 # one member without direction: pair (1, 2) remains
    g[1, 2, 3] = np.nan           # non-finite member: pair (0, 1) remains
    g[2, 0] = 0.0
    g[2, 1, 5] = np.inf           # two of three members: no defined pair -> vanishing
    with np.errstate(invalid="ignore"):
        ref = np_pair_cosines(np.nan_to_num(g, nan=0.0, posinf=0.0))
    want_def = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]], bool)  # pairs 01, 02, 12
    cos, defined = gal.scale_free_pair_cosines(tf.constant(g))
    np.testing.assert_array_equal(defined.numpy(), want_def)
    np.testing.assert_array_equal(gal.direction_defined(tf.constant(g)).numpy(),
                                  [[0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1]])
    coh = gal.scale_free_coherence(tf.constant(g)).numpy()
    mean = gal.mean_over_defined(cos, defined).numpy()
    assert np.isnan(coh[2]) and np.isnan(mean[2])
    for i in (0, 1, 3):
        np.testing.assert_allclose(coh[i], ref[i][want_def[i]].max(), atol=1e-6)
        np.testing.assert_allclose(mean[i], ref[i][want_def[i]].mean(), atol=1e-6)
    assert np.isfinite(cos.numpy()).all()


def test_measured_cross_entropy_gradient_is_exact_at_high_confidence():
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((5, 2, 10)) * 40).astype(np.float32)  # p_y - 1 rounds to 0 in float32
    y = np.argmax(z[:, 0], -1)
    z64 = z.astype(np.float64)
    p = np.exp(z64 - z64.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(10)[y][:, None, :]
    # float64 d CE / d z = p - onehot, with 1 - p_y written as sum_{j != y} p_j (exact in float64)
    want_grad = p * (1 - onehot) - onehot * (p * (1 - onehot)).sum(-1, keepdims=True)
    zt = tf.constant(z)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zt)
        mine = gal.measured_cross_entropy(tf.constant(y), zt)
        plain = gal.member_cross_entropy(zt, tf.constant(y))
    lse = np.log(np.exp(z64 - z64.max(-1, keepdims=True)).sum(-1)) + z64.max(-1)
    want_ce = lse - np.take_along_axis(z64, y[:, None, None].repeat(2, 1), -1)[..., 0]
    np.testing.assert_allclose(mine.numpy(), want_ce, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(plain.numpy(), want_ce, rtol=1e-6, atol=1e-5)
    got = tape.gradient(mine, zt).numpy()
    np.testing.assert_allclose(got, want_grad, rtol=1e-5, atol=1e-30)
    # The direction of the plain float32 gradient is wrong there (its label entry is 0).
    plain_g = tape.gradient(plain, zt).numpy()
    lab = np.take_along_axis(plain_g, y[:, None, None].repeat(2, 1), -1)
    assert (lab == 0).any() and (np.take_along_axis(want_grad, y[:, None, None].repeat(2, 1), -1) != 0).all()


def test_logit_margin_loss_and_its_input_gradient():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 3, 5)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    z_other = np.where(np.eye(5)[y][:, None, :] > 0, -np.inf, z).max(-1)
    want = z_other - np.take_along_axis(z, y[:, None, None].repeat(3, 1), -1)[..., 0]
    np.testing.assert_allclose(gal.logit_margin_loss(tf.constant(y), tf.constant(z)).numpy(), want,
                               rtol=1e-6)
    # Linear members z_i = x W_i: grad_x = W_i[:, runner-up] - W_i[:, y] (analytic).
    w = rng.standard_normal((3, 7, 5)).astype(np.float32)
    x = rng.standard_normal((6, 7)).astype(np.float32)
    ens = LogitsEnsemble(lambda t: tf.einsum("bd,ndc->bnc", t, w), 3)
    g = analysis.member_input_gradients(ens, x, y, 3, gal.logit_margin_loss).numpy()
    zz = np.einsum("bd,ndc->bnc", x, w)
    runner = np.where(np.eye(5)[y][:, None, :] > 0, -np.inf, zz).argmax(-1)
    for b in range(6):
        for i in range(3):
            np.testing.assert_allclose(g[b, i], w[i][:, runner[b, i]] - w[i][:, y[b]], rtol=1e-5,
                                       atol=1e-6)


class LogitsEnsemble:
    """A logits-only ensemble (the analyses' export path): ``fn(x) -> [B, N, C]``."""

    def __init__(self, fn, size):
        self.fn, self.size = fn, size

    def __call__(self, x):
        return self.fn(x)


def tanh_members(n, c, d, seed):
    rng = np.random.default_rng(seed)
    w1 = tf.constant((rng.standard_normal((n, d, 16)) / np.sqrt(d)).astype(np.float32))
    w2 = tf.constant(rng.standard_normal((n, 16, c)).astype(np.float32))
    return lambda x: tf.einsum("bnh,nhc->bnc", tf.tanh(tf.einsum("bd,ndh->bnh", x, w1)), w2)


@pytest.mark.parametrize("scale", [30.0, 150.0])
def test_more_confident_members_keep_their_coherence_and_report_the_rest_vanishing(scale):
    """Members whose logits are multiplied by a constant (same predictions, more confident).

    With 2 classes grad_x CE_i = s * sigmoid(s m_i) * grad_x m_i (m_i = z_other - z_y): the same
    direction at every scale s. So wherever a member gradient is nonzero the cosines are the
    unscaled ones; coherence must equal the unscaled max over the pairs still defined, and an
    example with fewer than two directions is vanishing. The margin gradients never vanish."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    f = tanh_members(3, 2, 6, seed=6)
    y = np.argmax(f(tf.constant(x)).numpy()[:, 0], -1)  # member 0 is right on every example
    base = LogitsEnsemble(f, 3)
    hot = LogitsEnsemble(lambda t: scale * f(t), 3)
    s1 = analysis.coherence_stats(base, x, y, batch_size=64)
    s2 = analysis.coherence_stats(hot, x, y, batch_size=64)
    assert not s1["zero"].any() and np.isfinite(s1["values"]).all()
    g1 = analysis.member_input_gradients(base, x, y, 3, gal.measured_cross_entropy).numpy()
    np.testing.assert_allclose(s1["values"], np_pair_cosines(g1).max(-1), atol=1e-5)
    pairs1 = np_pair_cosines(g1)
    ok = ~s2["zero"]                                     # [B, N] members with a direction
    a, b = np.triu_indices(3, k=1)
    pair_ok = ok[:, a] & ok[:, b]
    full, partial, none = ok.all(-1), pair_ok.any(-1) & ~ok.all(-1), ~pair_ok.any(-1)
    # the scale really produces all three cases and gradients under the old 1e-6 floor
    assert full.sum() > 5 and partial.sum() > 5 and none.sum() > 5
    assert (s2["small"] & ok).sum() > 20
    # float32 keeps a direction exactly while the gradient is a normal number; in the subnormal
    # range (max-abs < 1.2e-38) its entries lose mantissa bits, so the cosine is approximate.
    gh = analysis.member_input_gradients(hot, x, y, 3, gal.measured_cross_entropy).numpy()
    normal = (np.abs(gh).max(-1) > 1e-30) | ~ok          # [B, N]
    assert (full & normal.all(-1)).sum() > 5 and (partial & normal.all(-1)).sum() > 5
    assert np.array_equal(s2["subnormal"], ok & (np.abs(gh).max(-1) < np.finfo(np.float32).tiny))
    exact = normal.all(-1)
    np.testing.assert_allclose(s2["values"][full & exact], s1["values"][full & exact], atol=1e-5)
    np.testing.assert_allclose(s2["values"][full], s1["values"][full], atol=0.02)
    want_partial = np.where(pair_ok, pairs1, -np.inf).max(-1)
    np.testing.assert_allclose(s2["values"][partial & exact], want_partial[partial & exact], atol=1e-5)
    np.testing.assert_allclose(s2["values"][partial], want_partial[partial], atol=0.02)
    assert np.isnan(s2["values"][none]).all()
    summary = analysis.summarize_coherence(s2)
    assert summary["vanishing"] == none.sum() and summary["n"] == 200 - none.sum()
    assert summary["member_gradients"]["exactly_zero"] == (~ok).sum()
    assert analysis.vanishing_text(summary).startswith(f"vanishing: {none.sum()} of 200 examples")
    # The training formula reads the tiny gradients as orthogonal: it is off by far.
    g2 = analysis.member_input_gradients(hot, x, y, 3).numpy()
    assert np.abs(gal.coherence(tf.constant(g2)).numpy()[full] - s1["values"][full]).max() > 0.2
    # Margin coherence: scale-invariant everywhere, none vanishing; for 2 classes it is CE's.
    m1 = analysis.coherence_stats(base, x, y, batch_size=64, objective="margin")
    m2 = analysis.coherence_stats(hot, x, y, batch_size=64, objective="margin")
    assert not m2["zero"].any()
    np.testing.assert_allclose(m2["values"], m1["values"], atol=1e-5)
    np.testing.assert_allclose(m1["values"], s1["values"], atol=1e-5)


def test_run_analysis_reports_vanishing_counts_and_margin(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, (40, 28, 28, 1)).astype(np.float32)
    f = tanh_members(3, 10, 784, seed=8)
    flat = lambda t: tf.reshape(t, [tf.shape(t)[0], -1])  # noqa: E731
    y = np.argmax(f(flat(tf.constant(x))).numpy()[:, 0], -1)
    ens = {"T_Base": LogitsEnsemble(lambda t: f(flat(t)), 3),
           "T_Hot": LogitsEnsemble(lambda t: 400.0 * f(flat(t)), 3)}
    rep = analysis.run_analysis(ens, "mnist", str(tmp_path), x=x, y=y, analyses=["coherence"],
                                coherence_margin=True, log=lambda s: None)
    hot, cold = rep["ensembles"]["T_Hot"], rep["ensembles"]["T_Base"]
    st = analysis.coherence_stats(ens["T_Hot"], x, y)
    assert hot["coherence"]["vanishing"] == int(np.isnan(st["values"]).sum()) > 0
    assert hot["coherence"]["n"] + hot["coherence"]["vanishing"] == 40
    assert cold["coherence"]["vanishing"] == 0
    np.testing.assert_allclose(hot["coherence_margin"]["mean"], cold["coherence_margin"]["mean"], atol=1e-5)
    assert "z_y - max" in rep["coherence_margin_definition"]
    on_disk = json.loads((tmp_path / "analysis.json").read_text())
    assert on_disk["ensembles"]["T_Hot"]["coherence"]["member_gradients"]["exactly_zero"] == int(st["zero"].sum())
    from tf_divtrain.report.analyses import analysis_sections

    text = "\n".join(analysis_sections(rep, "."))
    assert f"| T_Hot | CE (Eq 7) | {hot['coherence']['n']} / 40 | {hot['coherence']['vanishing']} |" in text
    assert "| T_Hot | logit margin | 40 / 40 | 0 |" in text


def test_metrics_json_stats_and_the_step_metric_on_saturated_members(mnist_batch):
    """training.gradient_statistics (metrics.json) and the step's coherence (TensorBoard) on conv3
    members made over-confident (last kernel x 3000; members 0 and 1 identical, labels = their
    prediction, so on some images both saturate to exact zeros and leave one direction): scale-free
    over the defined examples, the vanishing ones counted -- against NumPy float64."""
    from tf_divtrain import models, step, training

    x = mnist_batch[0][:48]
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, ensemble_size=3, seed=2)
    ens.members[1].set_weights(ens.members[0].get_weights())
    y = np.argmax(ens.members[0](x).numpy(), -1)
    for m in ens.members:
        k = m.layers[-1].kernel
        k.assign(k * 3000.0)
    g = gal.member_input_gradients(ens.members, tf.constant(x), tf.constant(y),
                                   loss_fn=gal.measured_cross_entropy)[0].numpy()
    ok = np.any(g != 0, -1)
    a, b = np.triu_indices(3, k=1)
    with np.errstate(invalid="ignore"):
        pairs = np.where(ok[:, a] & ok[:, b], np_pair_cosines(g), np.nan)
    defined = ~np.isnan(pairs).all(-1)
    assert 0 < (~defined).sum() < 48  # both cases occur
    # one batch, as the reference (logits x 3000 amplify batch-dependent conv rounding)
    st = training.gradient_statistics(ens.members, x, y, batch_size=48)
    assert st["examples"] == 48 and st["vanishing_examples"] == (~defined).sum()
    assert st["member_gradients_without_direction"] == (~ok).sum()
    np.testing.assert_allclose(st["coherence"], np.nanmax(pairs[defined], -1).mean(), atol=1e-5)
    np.testing.assert_allclose(st["mean_cosine"], np.nanmean(pairs[defined], -1).mean(), atol=1e-5)
    out = step.DiversityObjective(0.5)(ens.members, tf.constant(x), tf.constant(y), training=False)
    np.testing.assert_array_equal(out["coherence_vanishing"].numpy(), ~defined)
    # the step's CE gradients are the training ones (plain CE): compare with their scale-free max
    want = gal.scale_free_coherence(gal.member_input_gradients(ens.members, tf.constant(x),
                                                               tf.constant(y))[0]).numpy()
    np.testing.assert_allclose(out["coherence"].numpy()[defined], want[defined], atol=1e-6)
    assert (out["coherence"].numpy()[~defined] == 0).all()

"""Tests of tf_divtrain.analysis / tf_divtrain.analyze on real MNIST slices."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import analysis, export, gal, models

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return os.path.getsize(path) > 100 and head == PNG_SIGNATURE


def _train(model, x, y, steps=30, batch=64, lr=2e-3):
    """A few Adam steps of plain CE on real MNIST (enough for ~90% test accuracy)."""
    opt = tf.keras.optimizers.Adam(lr)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                yb, model(xb, training=True), from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for i in range(steps):
        j = (i * batch) % (len(x) - batch)
        step(tf.constant(x[j:j + batch]), tf.constant(y[j:j + batch]))
    return model


@pytest.fixture(scope="module")
def trained_models(mnist):
    """Two conv3 models trained briefly (different seeds) on 1920 real MNIST training images."""
    x, y = mnist.x_train[:1920], mnist.y_train[:1920]
    a = _train(models.build_model("conv3", (28, 28, 1), 10, seed=11), x, y)
    b = _train(models.build_model("conv3", (28, 28, 1), 10, seed=12), x, y)
    return a, b


def _copy(model, seed):
    clone = models.build_model("conv3", (28, 28, 1), 10, seed=seed)
    clone.set_weights(model.get_weights())
    return clone


@pytest.fixture(scope="module")
def test_slice(mnist):
    return mnist.x_test[:48], mnist.y_test[:48]


# ----------------------------------------------------------------------------------------------
# Hadamard matrices and GAAS directions.

@pytest.mark.parametrize("k", [4, 16, 36, 64])
def test_regular_hadamard(k):
    h = analysis.regular_hadamard(k)
    assert h.shape == (k, k)
    assert set(np.unique(h).tolist()) == {-1, 1}
    np.testing.assert_array_equal(h @ h.T, k * np.eye(k, dtype=h.dtype))
    np.testing.assert_array_equal(h.sum(axis=1), np.full(k, int(np.sqrt(k))))  # regular, +sqrt(k)


@pytest.mark.parametrize("k", [25, 8, 2, 0, "abc"])
def test_invalid_gaas_k_is_rejected_with_valid_orders(k):
    with pytest.raises(analysis.AnalysisError) as e:
        analysis.regular_hadamard(k)
    assert "4, 16, 36, 64" in str(e.value)


def test_gaas_directions_orthogonal_linf_and_aligned(trained_models, test_slice):
    x, y = test_slice
    ens = models.Ensemble([trained_models[0], trained_models[1]])
    g, _ = analysis._compiled(ens).mean_ce_grad(tf.constant(x[:6]), tf.constant(y[:6]))
    g = tf.reshape(g, [6, -1]).numpy()
    assert np.all(np.abs(g).sum(-1) > 0)
    d = g.shape[1]
    for blocks in analysis.BLOCK_MODES:
        for k in (4, 16, 36, 64):
            eps = 0.2
            r = analysis.gaas_directions(g, k, eps, blocks).numpy()  # [B, k, D]
            assert r.shape == (6, k, d)
            q = d // k
            for b in range(6):
                gram = r[b] @ r[b].T
                np.testing.assert_allclose(gram, eps ** 2 * q * k * np.eye(k), rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(np.abs(r[b]).max(axis=1), eps, rtol=1e-6)
                assert int((np.abs(r[b]).sum(0) == 0).sum()) == d % k  # left-out dims
                # every direction is aligned with sign(g) by exactly eps * q * sqrt(k)
                s = np.where(g[b] >= 0, 1.0, -1.0)
                np.testing.assert_allclose(r[b] @ s, eps * q * np.sqrt(k), rtol=1e-5)
                if blocks == "balanced":
                    assert np.all(r[b] @ g[b] > 0), (k, b)


def test_gaas_counts_match_direct_evaluation(trained_models, test_slice):
    x, y = test_slice
    ens = models.Ensemble([trained_models[0], trained_models[1]])
    res = analysis.gaas_analysis(ens, x[:16], y[:16], ks=[4, 16], eps_list=[0.3], batch_size=32)
    pred = np.argmax(ens.probabilities(x[:16]).numpy(), -1)
    keep = pred == y[:16]
    assert res["num_correct"] == int(keep.sum()) > 0
    xc, yc = x[:16][keep], y[:16][keep]
    g, _ = analysis._compiled(ens).mean_ce_grad(tf.constant(xc), tf.constant(yc))
    for k in (4, 16):
        r = analysis.gaas_directions(tf.reshape(g, [len(xc), -1]), k, 0.3).numpy()
        xp = np.clip(xc.reshape(len(xc), 1, -1) + r, 0, 1).reshape((-1,) + x.shape[1:])
        wrong = np.argmax(ens.probabilities(xp).numpy(), -1).reshape(len(xc), k) != yc[:, None]
        n_adv = wrong.sum(1)
        out = res["results"]["0.3"][str(k)]
        assert out["count_histogram"] == np.bincount(n_adv, minlength=k + 1).tolist()
        assert out["p_all"] == pytest.approx(np.mean(n_adv == k))
        assert out["p_any"] == pytest.approx(np.mean(n_adv >= 1))
        assert out["mean_num_adversarial"] == pytest.approx(n_adv.mean())
        assert out["inner_product_positive_fraction"] == 1.0
    # The fast path (many examples' perturbed copies per forward pass) against one example per
    # pass (batch_size 16 // k = 1 at k = 16): the same result, every field.
    for fwd in (1024, 1):
        assert analysis.gaas_analysis(ens, x[:16], y[:16], ks=[4, 16], eps_list=[0.3], batch_size=16,
                                      forward_images=fwd) == res, fwd


# ----------------------------------------------------------------------------------------------
# Coherence: same numbers as the training module.

def test_coherence_equals_training_module(mnist_batch, tmp_path):
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, ensemble_size=3, seed=5)
    want = gal.coherence(gal.member_input_gradients(ens.members, tf.constant(x), tf.constant(y))[0]).numpy()
    got = analysis.coherence_values(ens, x, y, batch_size=16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the logits-only path (exports) gives the same per-member gradients and coherence
    grads = analysis.member_input_gradients(ens.member_logits, x, y, 3).numpy()
    ref = gal.member_input_gradients(ens.members, tf.constant(x), tf.constant(y))[0].numpy()
    np.testing.assert_allclose(grads, ref, rtol=1e-4, atol=1e-7)
    loaded = export.load_ensemble(export.export_ensemble(ens, str(tmp_path / "e"), META))
    np.testing.assert_allclose(analysis.coherence_values(loaded, x, y, batch_size=32), want,
                               rtol=1e-4, atol=1e-5)
    assert np.all(want <= 1.0 + 1e-6) and np.all(want >= -1.0 - 1e-6)
    s = analysis.summarize(got)
    assert s["q25"] <= s["median"] <= s["q75"] and s["n"] == 32


# ----------------------------------------------------------------------------------------------
# Transferability and the white-box check.

def test_transfer_matrix_identical_members_all_high(trained_models, test_slice):
    x, y = test_slice
    base = trained_models[0]
    ens = models.Ensemble([base, _copy(base, 21), _copy(base, 22)])
    tm = analysis.transfer_matrix(ens, x[:32], y[:32], eps=0.3, nb_iter=8, batch_size=32)
    m = np.array(tm["matrix"], float)
    assert m.shape == (3, 3) and np.array(tm["counts"]).min() > 20
    # identical weights: what fools member i fools every member j (crafted adversarials succeed)
    assert np.all(m >= 0.9)
    np.testing.assert_allclose(m, m[:, :1] * np.ones((1, 3)), atol=1e-6)
    assert tm["mean_off_diagonal"] >= 0.9


class _LogitsOnly:
    """An ensemble seen only through ``member_logits`` (no members): the straightforward path."""

    def __init__(self, ens):
        self.ens, self.size = ens, len(ens.members)

    def member_logits(self, x, training=False):
        return self.ens.member_logits(x)

    def probabilities(self, x, training=False):
        return self.ens.probabilities(x)


def test_transfer_matrix_on_member_alone_equals_the_whole_ensemble_path(trained_models, test_slice):
    """The fast path (an ensemble with members: PGD on member i's own model) crafts the examples
    of the straightforward one (PGD through the whole ensemble, member i's logits kept), bit for
    bit, so the matrices are equal."""
    from tf_divtrain.analysis import common
    from tf_divtrain.attacks.core import as_logits_fn

    x, y = test_slice
    x, y = x[:24], y[:24]
    ens = models.Ensemble([trained_models[0], trained_models[1]])
    slow_fn = common._pgd_fn(_LogitsOnly(ens).member_logits, 0.3, 3, (28, 28, 1))
    fast_fn = common._pgd_fn(as_logits_fn(ens.members[1]), 0.3, 3, (28, 28, 1), members_only=True)
    slow = common._attack_all(slow_fn, x, y, 24, 7, member=1)
    fast = common._attack_all(fast_fn, x, y, 24, 7, member=0)
    np.testing.assert_array_equal(fast, slow)
    assert np.abs(fast - x).max() > 0.1
    kw = dict(eps=0.3, nb_iter=3, batch_size=24)
    tm = analysis.transfer_matrix(ens, x, y, **kw)
    assert tm == analysis.transfer_matrix(_LogitsOnly(ens), x, y, **kw)
    assert np.array(tm["counts"]).min() > 15


def test_with_members_rebuilds_an_export_only_where_its_logits_are_the_served_ones(
        trained_models, test_slice, tmp_path, monkeypatch):
    """An export naming its architectures comes back as Keras members with the served graph's
    logits (and coherence, within float32 round-off of the served, tiled path); one without them,
    or whose registry architecture now computes other logits, stays the served graph."""
    x, y = test_slice[0][:16], test_slice[1][:16]
    ens = models.Ensemble([trained_models[0], trained_models[1]])
    loaded = export.load_ensemble(export.export_ensemble(
        ens, str(tmp_path / "named"), dict(META, models=["conv3", "conv3"])))
    rebuilt = export.with_members(loaded)
    assert isinstance(rebuilt, models.Ensemble) and rebuilt.metadata == loaded.metadata
    np.testing.assert_array_equal(rebuilt.member_logits(x).numpy(), loaded.member_logits(x).numpy())
    np.testing.assert_allclose(analysis.coherence_values(rebuilt, x, y),
                               analysis.coherence_values(loaded, x, y), rtol=1e-5, atol=1e-6)
    unnamed = export.load_ensemble(export.export_ensemble(ens, str(tmp_path / "unnamed"), META))
    assert export.with_members(unnamed) is unnamed
    swapped = models.Ensemble([_copy(trained_models[1], 31), _copy(trained_models[0], 32)])
    monkeypatch.setattr(export.LoadedEnsemble, "keras_ensemble", lambda self, precision: swapped)
    assert export.with_members(loaded) is loaded


class _MaskedEnsemble:
    """Trained members behind a gradient-blocking input (tf.stop_gradient): a masking defence."""

    def __init__(self, members):
        self.members_ = members
        self.size = len(members)

    def member_logits(self, x, training=False):
        x = tf.stop_gradient(x)
        return tf.stack([m(x, training=False) for m in self.members_], axis=1)


def test_whitebox_flags_gradient_masking_only_when_masked(trained_models, test_slice):
    x, y = test_slice
    normal = models.Ensemble(list(trained_models))
    wb = analysis.whitebox_check(normal, x[:32], y[:32], [0.1, 0.3], nb_iter=8, batch_size=32)
    assert wb["clean_accuracy"] > 0.6
    assert wb["adversarial_accuracy"]["0.3"] < 0.5 * wb["clean_accuracy"]
    assert wb["gradient_masking_suspected"] is False and "warning" not in wb
    for e in ("0.1", "0.3"):  # worst case = the stronger of the two PGD objectives
        assert wb["worst_case_accuracy"][e] == min(wb["adversarial_accuracy"][e],
                                                   wb["adversarial_accuracy_prediction_ce"][e])
    masked = analysis.whitebox_check(_MaskedEnsemble(list(trained_models)), x[:32], y[:32], [0.3],
                                     nb_iter=8, batch_size=32)
    assert masked["gradient_masking_suspected"] is True
    assert "gradient masking" in masked["warning"]


def test_whitebox_objectives_are_the_attacks_losses(trained_models, test_slice):
    """The white-box PGD's codes: -1 = the paper's mean member CE, -2 = attacks.prediction_ce,
    i >= 0 = member i alone; each equal to attacks.pgd on that objective from the same start."""
    from tf_divtrain import attacks
    from tf_divtrain.analysis.common import _pgd_fn

    x, y = test_slice[0][:16], test_slice[1][:16].astype(np.int64)
    ens = models.Ensemble(list(trained_models))
    eps, iters = 0.3, 4
    run = _pgd_fn(attacks.as_logits_fn(ens), eps, iters, x.shape[1:])
    seed = tf.constant([7, 0], tf.int64)
    step = analysis.PGD_STEP_FACTOR * eps / iters
    got = {code: run(x, y, seed, tf.constant(code, tf.int32)).numpy() for code in (-2, -1, 1)}
    for code, loss in ((-2, "prediction_ce"), (-1, "ce")):
        expected = attacks.pgd(ens, x, y, eps, step, iters, rand_init=True, seed=seed, loss=loss)
        np.testing.assert_allclose(got[code], expected.numpy(), atol=1e-6)
    assert not np.array_equal(got[-2], got[-1])

    def member_attack(i):
        fn = attacks.as_logits_fn(lambda z: tf.gather(ens.member_logits(z), [i], axis=1))
        return attacks.pgd(fn, x, y, eps, step, iters, rand_init=True, seed=seed).numpy()

    def same_examples(a, b):
        return int(np.sum(np.all(np.abs(a - b) <= 1e-6, axis=(1, 2, 3))))
    # Member 1 alone: graph vs eager rounding can flip the sign of a near-zero gradient component
    # and send one example's walk elsewhere (seen: 1 of 16), so count identical examples.
    assert same_examples(got[1], member_attack(1)) >= 14
    assert same_examples(got[1], member_attack(0)) <= 2


# ----------------------------------------------------------------------------------------------
# Plots, bad inputs, end to end.

def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    p1 = analysis.plot_coherence_hist({"T_Base": rng.uniform(0.5, 1, 50),
                                       "T_Div": rng.uniform(-0.5, 0.5, 50)}, str(tmp_path / "c.png"))
    gaas = {lbl: {"results": {"0.1": {"4": {"p_all": 0.5}, "16": {"p_all": 0.2}}}}
            for lbl in ("T_Base", "T_Div")}
    p2 = analysis.plot_gaas(gaas, str(tmp_path / "g.png"))
    p3 = analysis.plot_transfer([[1.0, 0.2], [None, 0.9]], "T_Div", str(tmp_path / "t.png"), 0.3)
    for p in (p1, p2, p3):
        assert _is_png(p), p


@pytest.fixture(scope="module")
def exported(trained_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    a, b = trained_models
    base = export.export_ensemble(models.Ensemble([a, _copy(a, 31)]), str(root / "base" / "saved_model"),
                                  META)
    div = export.export_ensemble(models.Ensemble([a, b]), str(root / "div"),  # rebuildable
                                 dict(META, models=["conv3", "conv3"]))
    cifar = export.export_ensemble(models.Ensemble([a, b]), str(root / "cifar"),
                                   dict(META, dataset="cifar10"))
    return {"base_out_dir": str(root / "base"), "div": div, "cifar": cifar}


def test_bad_inputs_fail_before_heavy_work(exported, tmp_path):
    ok = {"T_Base": exported["base_out_dir"]}
    nodata = str(tmp_path / "no_data_here")  # loading data would fail: errors must come first
    cases = [
        (dict(ensembles={"T_X": str(tmp_path / "missing")}), ["T_X", "missing", "train"]),
        (dict(ensembles=ok, gaas_k=[4, 25]), ["k=25", "4, 16, 36, 64"]),
        (dict(ensembles=ok, gaas_eps=[0.1, 1.5]), ["1.5", "[0, 1]"]),
        (dict(ensembles=ok, whitebox_eps=[-0.1]), ["-0.1"]),
        (dict(ensembles=ok, analyses=["coherence", "lid"]), ["lid", "gaas"]),
        (dict(ensembles={"T_C": exported["cifar"]}), ["cifar10", "--dataset=cifar10"]),
        (dict(ensembles="T_Base"), ["LABEL=DIR"]),
    ]
    for kwargs, needles in cases:
        with pytest.raises(analysis.AnalysisError) as e:
            analysis.run_analysis(dataset="mnist", out_dir=str(tmp_path / "out"), data_dir=nodata,
                                  num_examples=10, **kwargs)
        for n in needles:
            assert n in str(e.value), (kwargs, str(e.value))
    assert not os.path.exists(tmp_path / "out")


def test_cli_end_to_end(exported, data_dir, tmp_path, capsys):
    from absl import flags

    from tf_divtrain import analyze

    out = tmp_path / "analysis"
    argv = ["analyze", f"--ensembles=T_Base={exported['base_out_dir']},T_Div={exported['div']}",
            "--dataset=mnist", f"--data_dir={data_dir}", "--num_examples=40", "--gaas_eps=0.1,0.3",
            "--transfer_iters=3", "--whitebox_iters=3", "--batch_size=40", "--gaas_num_examples=24",
            "--transfer_num_examples=16", f"--out_dir={out}"]
    fv = flags.FlagValues()
    analyze.define_flags(fv)  # flags go into a given FlagValues: no clash with other CLIs
    fv(argv)
    assert analyze.main([], fv) == 0
    printed = capsys.readouterr().out
    assert "summary" in printed and "T_Div" in printed
    for name in ("coherence_hist.png", "gaas.png", "transfer_T_Base.png", "transfer_T_Div.png"):
        assert _is_png(out / name), name
    rep = json.loads((out / "analysis.json").read_text())
    assert rep["num_examples"] == 40 and set(rep["ensembles"]) == {"T_Base", "T_Div"}
    assert rep["computed_on"] == {  # T_Base's export does not name its architectures
        "T_Base": "the export's served graph",
        "T_Div": "the export's members rebuilt as Keras models (logits checked equal to the served graph's)"}
    assert rep["subset_sizes"] == {"coherence": 40, "gaas": 24, "transfer": 16, "whitebox": 16}
    base, div = rep["ensembles"]["T_Base"], rep["ensembles"]["T_Div"]
    # T_Base holds two identical members: coherence exactly 1; T_Div's independent members: lower
    assert base["coherence"]["min"] == pytest.approx(1.0, abs=1e-4)
    assert div["coherence"]["median"] < base["coherence"]["median"]
    for e in (base, div):
        assert set(e["gaas"]["results"]) == {"0.1", "0.3"}
        assert set(e["gaas"]["results"]["0.3"]) == {"4", "16", "36", "64"}
        for r in e["gaas"]["results"]["0.3"].values():
            assert 0.0 <= r["p_all"] <= r["p_any"] <= 1.0
            assert sum(r["count_histogram"]) == e["gaas"]["num_correct"]
        assert e["gaas"]["num_examples"] == 24
        assert np.array(e["transfer"]["matrix"]).shape == (2, 2)
        assert set(e["whitebox"]["adversarial_accuracy"]) == {"0.1", "0.3"}
    assert rep["gradient_masking_suspected"] is False
    assert "ALL k directions" in rep["gaas_definition"]


def test_cli_reports_bad_input(tmp_path, capsys):
    from absl import flags

    from tf_divtrain import analyze

    fv = flags.FlagValues()
    analyze.define_flags(fv)
    fv(["analyze", f"--ensembles=T_Base={tmp_path / 'nope'}", "--gaas_k=4,25", f"--out_dir={tmp_path / 'o'}"])
    assert analyze.main([], fv) == 2
    err = capsys.readouterr().err
    assert "k=25" in err and "4, 16, 36, 64" in err
    assert callable(analyze.run)


def test_ensemble_log_prediction_matches_numpy():
    z = np.random.RandomState(3).randn(4, 5, 10) * 20.0
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = np.log(p.mean(1))
    got = analysis.ensemble_log_prediction(tf.constant(z)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)

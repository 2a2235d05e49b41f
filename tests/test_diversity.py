"""DiversityEnsemble: Eq 9 for user-defined Keras members through compile()/fit() (issue 13)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import data, diversity, gal, models, precision, step, training

from conftest import cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _act():
    return keras.layers.LeakyReLU(negative_slope=0.2)


def functional_net(seed, name="functional"):
    init = keras.initializers.GlorotUniform(seed=seed)
    inp = keras.Input((28, 28, 1))
    h = _act()(keras.layers.Conv2D(8, 3, kernel_initializer=init)(inp))
    h = keras.layers.MaxPooling2D(2)(h)
    h = _act()(keras.layers.Dense(64, kernel_initializer=init)(keras.layers.Flatten()(h)))
    return keras.Model(inp, keras.layers.Dense(10, kernel_initializer=init)(h), name=name)


def sequential_net(seed):
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(6, 5, strides=2, kernel_initializer=init),
                             _act(), keras.layers.Flatten(), keras.layers.Dense(10, kernel_initializer=init)],
                            name="sequential")


@keras.saving.register_keras_serializable(package="tf_divtrain_tests")
class SubclassedNet(keras.Model):
    """An MLP written as a subclassed model."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        init = keras.initializers.GlorotUniform(seed=seed)
        self.flat = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(96, kernel_initializer=init)
        self.act = _act()
        self.out = keras.layers.Dense(10, kernel_initializer=init)

    def call(self, x):
        return self.out(self.act(self.hidden(self.flat(x))))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def three_members(seed=0):
    return [functional_net(seed + 1), sequential_net(seed + 2), SubclassedNet(seed + 3)]


def _ensemble(gal_lambda, seed=0, lr=1e-3, **kw):
    ens = diversity.DiversityEnsemble(three_members(seed), gal_lambda=gal_lambda,
                                      input_shape=(28, 28, 1), **kw)
    ens.compile(optimizer=keras.optimizers.Adam(lr))
    return ens


def _coherence(members, x, y):
    grads, _, _ = gal.member_input_gradients(members, tf.constant(x), tf.constant(y))
    return float(tf.reduce_mean(gal.coherence(grads)))


def test_fit_lowers_coherence_below_the_lambda0_run(mnist):
    x_te, y_te = mnist.x_test[:256], mnist.y_test[:256]
    results = {}
    for lam in (0.0, 0.5):
        keras.utils.set_random_seed(1)
        ens = _ensemble(lam, seed=4)
        ds = (tf.data.Dataset.from_tensor_slices((mnist.x_train[:3072], mnist.y_train[:3072]))
              .batch(64, drop_remainder=True).map(data.diversity_map("mnist", seed=3)))
        hist = ens.fit(ds, epochs=2, verbose=0)
        ev = ens.evaluate(x_te, y_te, batch_size=128, return_dict=True, verbose=0)
        results[lam] = (_coherence(ens.members, x_te, y_te), ev["accuracy"], hist.history)
    (coh0, acc0, h0), (coh1, acc1, h1) = results[0.0], results[0.5]
    assert set(h1) == {"loss", "ce", "gal", "coherence", "accuracy"}
    assert set(h0) == {"loss", "ce", "accuracy"}
    assert acc0 > 0.8 and acc1 > 0.75, (acc0, acc1)  # both really learned
    assert coh1 < coh0 - 0.2, (coh0, coh1)


def _batches(mnist, n, mode="div", batch=32):
    stream = data.train_stream(mnist.x_train[:1000], mnist.y_train[:1000], "mnist", batch,
                               training.MODES[mode], seed=2)
    return list(stream.take(n))


@pytest.mark.parametrize("mode", ["div", "baseline"])
def test_diversity_ensemble_step_equals_trainer_step(mnist, mode):
    cfg = training.TrainConfig(mode=mode, ensemble_size=3, batch_size=32, seed=5, out_dir="unused")
    trainer = training.Trainer(cfg, mnist.input_shape, 10)
    lam = cfg.gal_lambda if mode == "div" else 0.0
    ens = diversity.DiversityEnsemble(models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=5).members,
                                      gal_lambda=lam)
    ens.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate))
    for a, b in zip(trainer.ensemble.trainable_variables, ens.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # same initial weights
    init = [v.numpy() for v in ens.trainable_variables]
    for xb, yb in _batches(mnist, 3, mode):
        m_tr = trainer.train_step(xb, yb)
        m_de = ens.train_on_batch(xb, yb, return_dict=True)
    moved = max(np.abs(a - b.numpy()).max() for a, b in zip(init, ens.trainable_variables))
    assert moved > 1e-4
    for a, b in zip(trainer.ensemble.trainable_variables, ens.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=2e-6, err_msg=b.path)
    if mode == "div":
        assert np.isfinite(float(m_tr["gal"])) and "gal" in m_de


def test_keras_file_round_trip(tmp_path, mnist):
    ens = _ensemble(0.5, seed=1)
    ens.fit(mnist.x_train[:256], mnist.y_train[:256], batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "ens.keras")
    ens.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, diversity.DiversityEnsemble) and loaded.gal_lambda == 0.5
    assert isinstance(loaded.members[2], SubclassedNet)
    x = mnist.x_test[:32]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ens.predict(x, verbose=0), atol=1e-6)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    # training continues identically from the restored optimizer state
    for m in (ens, loaded):
        m.fit(mnist.x_train[256:320], mnist.y_train[256:320], batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(ens.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_predict_is_average_softmax_and_ensemble_like(mnist):
    ens = _ensemble(0.5)
    x = mnist.x_test[:8]
    lg = ens.member_logits(x).numpy()
    assert lg.shape == (8, 3, 10) and ens.size == 3
    np.testing.assert_allclose(ens.predict(x, verbose=0),
                               models.ensemble_probabilities(lg).numpy(), atol=1e-6)


def test_callbacks_and_backup_and_restore_resume(tmp_path, mnist):
    x, y = mnist.x_train[:256], mnist.y_train[:256]

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    straight = _ensemble(0.5, seed=2)
    straight.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)

    backup = str(tmp_path / "backup")
    cbs = [keras.callbacks.BackupAndRestore(backup),
           keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt.keras")),
           keras.callbacks.TensorBoard(str(tmp_path / "tb")),
           keras.callbacks.EarlyStopping(monitor="coherence", mode="min", patience=5)]
    run = _ensemble(0.5, seed=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        run.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0, callbacks=cbs + [Interrupt()])
    resumed = _ensemble(0.5, seed=2)  # a fresh process would rebuild the model like this
    hist = resumed.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0, callbacks=cbs)
    assert len(hist.history["loss"]) == 1  # only the third epoch ran
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert os.path.exists(tmp_path / "ckpt.keras")
    assert os.listdir(tmp_path / "tb")


def test_strategy_scope_and_mixed_precision(mnist):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        ens = _ensemble(0.5)
    h = ens.fit(mnist.x_train[:128], mnist.y_train[:128], batch_size=64, verbose=0)
    assert np.isfinite(h.history["gal"][0])
    with precision.policy_scope("mixed_float16"):
        members = [functional_net(1), sequential_net(2)]
    ens = diversity.DiversityEnsemble(members, gal_lambda=0.5)
    ens.compile(optimizer="adam")
    assert isinstance(ens.optimizer, keras.optimizers.LossScaleOptimizer)
    assert ens.member_logits(mnist.x_test[:4]).dtype == tf.float32
    h = ens.fit(mnist.x_train[:128], mnist.y_train[:128], batch_size=64, verbose=0)
    assert np.isfinite(h.history["loss"][0])


@pytest.mark.e2e
def test_mirrored_two_replicas_equals_one_device(data_dir):
    script = os.path.join(REPO, "tests", "scripts", "diversity_mirrored.py")
    r = subprocess.run([sys.executable, script, data_dir], env=cli_env(), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    vals = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines() if " " in line)
    assert int(vals["REPLICAS"]) == 2 and float(vals["MOVED"]) > 1e-4
    assert float(vals["WEIGHT_DIFF"]) < 1e-5


def test_bad_members_and_settings():
    with pytest.raises(ValueError, match="different input shapes"):
        diversity.DiversityEnsemble([functional_net(0), keras.Sequential(
            [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])])
    soft = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(ValueError, match="softmax activation; members must output logits"):
        diversity.DiversityEnsemble([functional_net(0), soft])

    class SoftmaxInside(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat, self.dense = keras.layers.Flatten(), keras.layers.Dense(10)

        def call(self, x):
            return tf.nn.softmax(self.dense(self.flat(x)))

    with pytest.raises(ValueError, match="outputs probabilities"):
        diversity.DiversityEnsemble([functional_net(0), SoftmaxInside()], input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="needs at least 2 members"):
        diversity.DiversityEnsemble([functional_net(0)], gal_lambda=0.5)
    diversity.DiversityEnsemble([functional_net(0)], gal_lambda=0.0)  # one model, plain CE: fine
    with pytest.raises(ValueError, match="gal_lambda must be >= 0"):
        diversity.DiversityEnsemble(three_members(), gal_lambda=-1)
    ens = _ensemble(0.5)
    with pytest.raises(ValueError, match="do not pass loss="):
        ens.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="need labels"):
        ens.fit(np.zeros((8, 28, 28, 1), np.float32), verbose=0)


def test_non_finite_loss_stops_before_the_update():
    ens = _ensemble(0.5)
    before = [w.copy() for w in ens.get_weights()]
    x = np.zeros((16, 28, 28, 1), np.float32)
    x[3] = 3e38  # finite pixels (NaN ones are refused before the step) whose activations overflow
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite loss"):
        ens.fit(x, np.zeros(16, np.int64), batch_size=16, verbose=0)
    for a, b in zip(before, ens.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_custom_objective_is_injected(mnist):
    calls = []

    def objective(members, x, y, training=True):
        calls.append(1)
        return step.CrossEntropyObjective()(members, x, y, training)

    ens = diversity.DiversityEnsemble(three_members(), gal_lambda=0.5, objective=objective,
                                      input_shape=(28, 28, 1))
    ens.compile(optimizer="adam")
    h = ens.fit(mnist.x_train[:64], mnist.y_train[:64], batch_size=32, verbose=0)
    assert calls and "gal" not in h.history
    with pytest.raises(ValueError, match="must return at least"):
        step.call_objective(lambda m, x, y, training: {"loss": x}, [], 0, 0)
    # the CLI Trainer takes the same injection point
    cfg = training.TrainConfig(mode="baseline", ensemble_size=2, batch_size=32, out_dir="unused")
    tr = training.Trainer(cfg, (28, 28, 1), 10, objective=objective)
    n = len(calls)
    tr.train_step(tf.constant(mnist.x_train[:32]), tf.constant(mnist.y_train[:32]))
    assert len(calls) > n


def test_data_maps_build_the_papers_input(mnist):
    x, y = mnist.x_train[:64], mnist.y_train[:64]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64).map(data.diversity_map("mnist", seed=1))
    xb, yb = next(iter(ds))
    xb = xb.numpy()
    np.testing.assert_array_equal(yb.numpy(), y)
    noise = xb[32:] - x[32:]
    assert 0 < np.abs(noise).max() <= 0.3 + 1e-6  # D_noise: bounded noise, clipped to [0, 1]
    assert xb.min() >= 0 and xb.max() <= 1
    assert not np.allclose(xb[:32], x[:32])  # D': shifted
    # per-image maps, on unbatched uint8 images too
    u8 = (x[:4] * 255).round().astype(np.uint8)
    one = tf.data.Dataset.from_tensor_slices((u8, y[:4])).map(data.augment_map("mnist")).map(
        data.noise_map(0.1))
    imgs = np.stack([a.numpy() for a, _ in one])
    assert imgs.shape == (4, 28, 28, 1) and imgs.dtype == np.float32
    with pytest.raises(ValueError, match="outside"):
        data.noise_map(2.0)

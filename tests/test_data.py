"""Data loading, validation errors, augmentation, noise and the training stream (real data)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import data

# Independent expectations, from ../shared/data/README.md (the published dataset statistics).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
CIFAR_TEST_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]


def test_mnist_loads_with_published_statistics(mnist):
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert mnist.x_train.min() == 0.0 and mnist.x_train.max() == 1.0
    assert np.bincount(mnist.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert abs(float(mnist.x_train.mean(dtype=np.float64)) - 0.1307) < 1e-3
    assert abs(float(mnist.x_train.std(dtype=np.float64)) - 0.3081) < 1e-3


def test_cifar10_and_fashion_load(data_dir):
    c = data.load_dataset("cifar10", data_dir)
    assert c.x_train.shape == (50000, 32, 32, 3) and c.x_test.shape == (1000, 32, 32, 3)
    assert np.bincount(c.y_train).tolist() == [5000] * 10
    assert np.bincount(c.y_test).tolist() == CIFAR_TEST_COUNTS
    np.testing.assert_allclose(c.x_train.mean(axis=(0, 1, 2), dtype=np.float64), [0.4914, 0.4822, 0.4465], atol=1e-3)
    assert c.input_shape == (32, 32, 3) and c.num_classes == 10
    f = data.load_dataset("fashion_mnist", data_dir, test_size=10)
    assert f.x_train.shape == (60000, 28, 28, 1) and f.x_test.shape == (10, 28, 28, 1)
    assert np.bincount(f.y_train).tolist() == [6000] * 10


def test_subsets_and_validation_split(data_dir):
    d = data.load_dataset("cifar10", data_dir, validation_size=500, train_size=1000, test_size=1000)
    assert d.x_val.shape == (500, 32, 32, 3) and d.x_train.shape == (1000, 32, 32, 3)
    full = data.load_arrays("cifar10", data_dir)
    np.testing.assert_array_equal(d.y_val, full["y_train"][-500:])
    with pytest.raises(data.DataError, match="holds only 1000 test images"):
        data.load_dataset("cifar10", data_dir, test_size=1001)


def _write(tmp_path, name="mnist", **arrays):
    np.savez(tmp_path / f"{name}.npz", **arrays)
    return str(tmp_path)


@pytest.fixture
def real_slice(mnist):
    u8 = lambda a: np.round(a * 255).astype(np.uint8)[..., 0]  # noqa: E731
    return dict(x_train=u8(mnist.x_train[:20]), y_train=mnist.y_train[:20],
                x_test=u8(mnist.x_test[:10]), y_test=mnist.y_test[:10])


def test_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load_dataset("mnist", str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "mnist.npz") in msg and "--data_dir" in msg and data.ENV_VAR in msg


@pytest.mark.parametrize("mutation, pattern", [
    (lambda a: a.pop("y_test"), r"missing array\(s\) \['y_test'\]"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "dtype float32, expected uint8"),
    (lambda a: a.update(x_train=a["x_train"][:, :20]), r"shape \(20, 20, 28\)"),
    (lambda a: a.update(y_train=a["y_train"] + 10), r"labels span \[10, 19\], expected 0..9"),
    (lambda a: a.update(y_test=a["y_test"][:5]), "10 images but y_test has 5 labels"),
])
def test_validation_errors(tmp_path, real_slice, mutation, pattern):
    mutation(real_slice)
    d = _write(tmp_path, **real_slice)
    with pytest.raises(data.DataError, match=pattern) as e:
        data.load_dataset("mnist", d)
    assert "mnist.npz" in str(e.value)


def test_corrupt_file(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip archive at all")
    with pytest.raises(data.DataError, match="not a readable .npz"):
        data.load_dataset("mnist", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="valid names: cifar10, fashion_mnist, mnist"):
        data.load_dataset("svhn")


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.resolve_data_dir(None) == str(tmp_path)
    assert data.resolve_data_dir("/x/y") == "/x/y"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.resolve_data_dir(None).endswith(os.path.join("tf_divtrain", "data"))


def _is_shift_of(out, img, pad, allow_flip):
    """True if ``out`` equals ``img`` shifted by some (dy, dx) in [-pad, pad] (optionally flipped)."""
    h, w = img.shape[:2]
    padded = np.pad(img, [(pad, pad), (pad, pad), (0, 0)])
    cands = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    hits = [np.array_equal(out, c) for c in cands]
    flips = [np.array_equal(out, c[:, ::-1]) for c in cands] if allow_flip else [False]
    return any(hits), any(flips)


def test_augment_mnist_shifts_without_flips(mnist):
    x = mnist.x_train[:64]
    out = data.augment(tf.constant(x), "mnist", tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert np.mean([not np.array_equal(a, b) for a, b in zip(out, x)]) > 0.5  # pixels really move
    for a, b in zip(out, x):
        shifted, _ = _is_shift_of(a, b, 2, allow_flip=False)
        assert shifted


def test_augment_cifar_flips_and_shifts(data_dir):
    x = data.load_dataset("cifar10", data_dir, test_size=64).x_test
    out = data.augment(tf.constant(x), "cifar10", tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    kinds = [_is_shift_of(a, b, 4, allow_flip=True) for a, b in zip(out, x)]
    assert all(s or f for s, f in kinds)
    n_flipped = sum(f and not s for s, f in kinds)
    assert 15 <= n_flipped <= 49  # about half of 64 images flipped


def test_noise_bounds_and_truncated_normal_std():
    eps = 0.3
    x = tf.fill([200, 28, 28, 1], 0.5)  # mid-grey: no clipping, so the noise is observed exactly
    out = data.add_noise(x, eps, tf.constant([5, 6], tf.int64)).numpy()
    noise = out - 0.5
    assert np.abs(noise).max() <= eps + 1e-6
    # Std of N(0, s) truncated at +-2s is s*sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.8796 s.
    from math import erf, exp, pi, sqrt
    phi2, Phi2 = exp(-2) / sqrt(2 * pi), 0.5 * (1 + erf(2 / sqrt(2)))
    expected = (eps / 2) * sqrt(1 - 4 * phi2 / (2 * Phi2 - 1))
    assert abs(noise.std() - expected) < 0.01 * expected
    assert abs(noise.mean()) < 1e-3


def test_noise_clipped_on_real_images(mnist_batch):
    out = data.add_noise(tf.constant(mnist_batch[0]), 0.3, tf.constant([0, 1], tf.int64)).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - mnist_batch[0]).max() <= 0.3 + 1e-6


def test_stream_reproducible_and_resumable(mnist):
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    take = lambda s, n: [(a.numpy(), b.numpy()) for a, b in s.take(n)]  # noqa: E731
    a = take(data.train_stream(x, y, "mnist", 64, ("aug", "noise"), seed=3), 20)
    b = take(data.train_stream(x, y, "mnist", 64, ("aug", "noise"), seed=3), 20)
    c = take(data.train_stream(x, y, "mnist", 64, ("aug", "noise"), seed=4), 1)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])
    resumed = take(data.train_stream(x, y, "mnist", 64, ("aug", "noise"), seed=3, start_step=17), 3)
    for (xa, ya), (xr, yr) in zip(a[17:], resumed):
        np.testing.assert_array_equal(xa, xr)
        np.testing.assert_array_equal(ya, yr)
    # One epoch (15 full batches of 64 out of 1000) holds 960 distinct training images: the 'adv'
    # source passes raw images through, so each can be matched to its row of x.
    raw = take(data.train_stream(x, y, "mnist", 64, ("adv",), seed=3), 15)
    rows = {im.tobytes(): i for i, im in enumerate(x)}
    seen = [rows[im.tobytes()] for xb, _ in raw for im in xb]
    assert len(seen) == 960 and len(set(seen)) == 960


def test_stream_batch_rule(mnist):
    x, y = mnist.x_train[:256], mnist.y_train[:256]
    xb, yb = next(iter(data.train_stream(x, y, "mnist", 10, ("aug", "noise", "adv"), noise_eps=0.3,
                                          seed=0)))
    assert data.split_sizes(10, 3) == [4, 3, 3]
    assert xb.shape == (10, 28, 28, 1) and yb.shape == (10,)
    idx = [int(np.argmin(np.abs(x - im).reshape(256, -1).sum(1))) for im in xb.numpy()[7:]]
    for k, i in enumerate(idx):  # the 'adv' part holds the raw clean images (the step attacks them)
        np.testing.assert_allclose(xb.numpy()[7 + k], x[i], atol=1e-6)
    with pytest.raises(ValueError, match="Unknown stream source"):
        data.train_stream(x, y, "mnist", 10, ("blur",))

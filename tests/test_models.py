"""Model zoo (paper Table 1) and the ensemble wrapper."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import models


def _conv_params(c_in, c_out, k=3):
    return k * k * c_in * c_out + c_out


def _dense_params(n_in, n_out):
    return n_in * n_out + n_out


def test_conv3_param_count_by_hand():
    # MNIST 28x28x1, 3x3 'valid' convs: 28 -> 26 (C32) -> 24 (C64) -> 12 (M) -> 10 (C128) -> 5 (M).
    expected = (_conv_params(1, 32) + _conv_params(32, 64) + _conv_params(64, 128)
                + _dense_params(5 * 5 * 128, 1024) + _dense_params(1024, 10))
    m = models.build_model("conv3", (28, 28, 1), 10, seed=0)
    assert models.count_params(m) == expected == 3_380_746


def test_conv4_param_count_by_hand():
    # CIFAR 32x32x3: 32 -> 30 (C32) -> 28 (C64) -> 26 (C128) -> 13 (M) -> 11 (C128) -> 5 (M).
    expected = (_conv_params(3, 32) + _conv_params(32, 64) + _conv_params(64, 128)
                + _conv_params(128, 128) + _dense_params(5 * 5 * 128, 1024) + _dense_params(1024, 10))
    m = models.build_model("conv4", (32, 32, 3), 10, seed=0)
    assert models.count_params(m) == expected == 3_528_906


@pytest.mark.parametrize("name, n", [("resnet20", 3), ("resnet26", 4)])
def test_resnet_depth_and_params(name, n):
    m = models.build_model(name, (32, 32, 3), 10, seed=0)
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in m.layers if isinstance(l, keras.layers.Dense)]
    assert len(convs) + len(dense) == 6 * n + 2  # 6n+2 weighted layers, option-A shortcuts add none
    # Trainable params by hand: convs (no bias) + BN gamma/beta + final dense.
    widths = [16] + [16] * n + [32] * n + [64] * n
    conv_p = 3 * 3 * 3 * 16 + sum(3 * 3 * c_in * c for c_in, c in
                                  [(widths[i], widths[i + 1]) for i in range(3 * n)]
                                  + [(c, c) for c in widths[1:]])
    bn_p = 2 * (16 + 2 * sum(widths[1:]))
    assert models.count_params(m) == conv_p + bn_p + _dense_params(64, 10)
    if name == "resnet20":
        assert 0.26e6 < models.count_params(m) < 0.28e6  # He et al. report 0.27M for ResNet-20


@pytest.mark.parametrize("name, shape", [("conv3", (28, 28, 1)), ("conv4", (32, 32, 3)),
                                         ("resnet20", (32, 32, 3)), ("resnet26", (32, 32, 3)),
                                         ("conv3", (32, 32, 3))])
def test_output_shape_logits_and_no_relu(name, shape):
    m = models.build_model(name, shape, 10, seed=1)
    x = np.random.RandomState(0).rand(3, *shape).astype(np.float32)
    out = m(x).numpy()
    assert out.shape == (3, 10)
    assert not np.allclose(out.sum(-1), 1.0)  # logits, not probabilities
    for layer in m.layers:
        assert not isinstance(layer, keras.layers.ReLU), layer.name
        act = getattr(layer, "activation", None)
        if act is not None:
            assert act is keras.activations.linear, f"{layer.name} has activation {act}"
    leaky = [l for l in m.layers if isinstance(l, keras.layers.LeakyReLU)]
    weighted_hidden = [l for l in m.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))
                       and l.name != "logits"]
    assert len(leaky) == len(weighted_hidden)  # one LeakyReLU per conv / hidden dense
    assert all(abs(float(l.negative_slope) - models.LEAKY_SLOPE) < 1e-7 for l in leaky)


def test_registry_errors_and_names():
    with pytest.raises(ValueError, match="valid names: conv3, conv4, resnet20, resnet26"):
        models.build_model("vgg16", (28, 28, 1))
    assert models.member_names("mix", 5) == ["resnet26", "resnet20", "conv4", "conv3", "conv3"]
    assert models.member_names("conv3", 3) == ["conv3"] * 3
    assert models.member_names("conv4, conv3", 9) == ["conv4", "conv3"]


def test_seeds_reproducible_and_members_differ():
    a = models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=5)
    b = models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=5)
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    k0, k1 = a.members[0].trainable_variables[0].numpy(), a.members[1].trainable_variables[0].numpy()
    assert not np.array_equal(k0, k1)


def test_ensemble_average_matches_numpy(mnist_batch):
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 4, seed=2)
    x = mnist_batch[0][:16]
    logits = ens.member_logits(x).numpy()
    assert logits.shape == (16, 4, 10)
    for i, m in enumerate(ens.members):
        np.testing.assert_allclose(logits[:, i], m(x).numpy(), rtol=1e-5, atol=1e-5)
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(ens.probabilities(x).numpy(), p.mean(1), rtol=1e-5, atol=1e-6)


def test_mix_ensemble_builds():
    ens = models.build_ensemble("mix", (32, 32, 3), 10, seed=0)
    assert [m.name for m in ens.members] == list(models.MIX)
    assert ens.member_logits(tf.zeros([2, 32, 32, 3])).shape == (2, 5, 10)

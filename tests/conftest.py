"""Shared test fixtures: real data from $TF_DIVTRAIN_DATA (CI points it at ../shared/data), the
tiny Keras member the unit tests build ensembles from, and the environment of a CLI subprocess.
The two factories are fixtures (``tiny_cnn``, ``subprocess_env``); module-level helpers that
need them outside a test import the plain functions (``from conftest import cli_env``)."""

import os

import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One TensorFlow thread per test process (inherited by every CLI subprocess), before any test
# imports TensorFlow: the suite runs two pytest-xdist workers on two cores, and each worker's
# default pools (one thread per core) oversubscribe them. Measured: attacks + analysis + training
# tests 147-154 s against 164-169 s with the defaults. The tests check numbers, not speed; set
# either variable to override.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def _data_dir():
    d = os.environ.get("TF_DIVTRAIN_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")
    if not os.path.isfile(os.path.join(d, "mnist.npz")):
        pytest.fail(f"Real data not found in {d}: set TF_DIVTRAIN_DATA to the folder holding "
                    f"mnist.npz / cifar10.npz / fashion_mnist.npz.")
    return d


@pytest.fixture(scope="session")
def data_dir():
    return _data_dir()


@pytest.fixture(scope="session")
def mnist(data_dir):
    """Full MNIST (float32 [0, 1] NHWC); tests slice what they need."""
    from tf_divtrain import data

    return data.load_dataset("mnist", data_dir)


@pytest.fixture(scope="session")
def mnist_batch(mnist):
    """128 real training images and labels."""
    return mnist.x_train[:128], mnist.y_train[:128]


def tiny_cnn_model(seed, input_shape=(28, 28, 1), filters=4, strides=2, classes=10):
    """Conv(filters, 3x3, strides) -> LeakyReLU(0.2) -> Dense(classes), Glorot-initialised from
    ``seed`` (conv) and ``seed + 1`` (dense): a member small enough to train in a test."""
    import keras

    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(filters, 3, strides=strides, kernel_initializer=init(seed)),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.Flatten(),
        keras.layers.Dense(classes, kernel_initializer=init(seed + 1)),
    ])


@pytest.fixture(scope="session")
def tiny_cnn():
    """Factory ``tiny_cnn(seed, input_shape=(28, 28, 1), filters=4, strides=2)`` of a tiny member."""
    return tiny_cnn_model


def cli_env(data_dir=None, **extra):
    """os.environ for a CLI run from the repository: quiet TF logs, this checkout first on
    PYTHONPATH, no inherited fault hook or TF_CONFIG, ``TF_DIVTRAIN_DATA`` when given."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("TF_DIVTRAIN_FAULT", "TF_CONFIG"):
        env.pop(k, None)
    if data_dir is not None:
        env["TF_DIVTRAIN_DATA"] = str(data_dir)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def subprocess_env():
    """Factory ``subprocess_env(data_dir=None, **extra)`` of a CLI subprocess's environment."""
    return cli_env


def pytest_collection_modifyitems(config, items):
    """Tests marked ``first`` run first (a stable sort): under ``-n 2 --dist worksteal`` the first
    worker starts with the longest test while the other takes the rest, so no worker is left
    running it alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)


@pytest.fixture(autouse=True)
def _seed_everything():
    import tensorflow as tf

    np.random.seed(0)
    tf.random.set_seed(0)
    yield

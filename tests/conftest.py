"""Shared test fixtures: real data from $TF_DIVTRAIN_DATA (CI points it at ../shared/data)."""

import os

import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



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


@pytest.fixture(autouse=True)
def _seed_everything():
    import tensorflow as tf

    np.random.seed(0)
    tf.random.set_seed(0)
    yield

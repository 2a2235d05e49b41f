"""DiversityEnsemble.fit under MirroredStrategy on 2 logical CPUs == fit on one device (2 steps).

Run as a separate process: logical devices must be configured before TensorFlow initialises.
"""
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from tf_divtrain import data, diversity, models  # noqa: E402

ds = data.load_dataset("mnist", sys.argv[1] if len(sys.argv) > 1 else None, train_size=128)
x, y = ds.x_train[:128], ds.y_train[:128]


def run(strategy):
    with strategy.scope():
        ens = diversity.DiversityEnsemble(models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=7).members,
                                          gal_lambda=0.5)
        # SGD: the update is the gradient itself (Adam's g / (sqrt(v) + eps) magnifies round-off
        # differences of near-zero gradients to a full learning-rate step).
        ens.compile(optimizer=keras.optimizers.SGD(0.05))
    init = [w.copy() for w in ens.get_weights()]
    ens.fit(x, y, batch_size=64, shuffle=False, verbose=0)
    return init, ens.get_weights()


init, w0 = run(tf.distribute.get_strategy())
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
_, w1 = run(mirrored)
print(f"REPLICAS {mirrored.num_replicas_in_sync}")
print(f"MOVED {max(float(np.abs(a - b).max()) for a, b in zip(init, w0)):.3e}")
print(f"WEIGHT_DIFF {max(float(np.abs(a - b).max()) for a, b in zip(w0, w1)):.3e}")

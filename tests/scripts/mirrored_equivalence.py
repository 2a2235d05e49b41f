"""One MirroredStrategy step on 2 logical CPUs == one default-strategy step (same batch, weights).

Run as a separate process: logical devices must be configured before TensorFlow initialises.
Prints the max abs weight difference and exits 0; the test asserts on the printed number.
"""
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from tf_divtrain import data, training  # noqa: E402

mode = sys.argv[1] if len(sys.argv) > 1 else "div"
ds = data.load_dataset("mnist", sys.argv[2] if len(sys.argv) > 2 else None, train_size=64)
x, y = ds.x_train[:64], ds.y_train[:64]

results = []
for strategy in ("default", "mirrored"):
    cfg = training.TrainConfig(mode=mode, ensemble_size=3, batch_size=64, out_dir="unused",
                               strategy=strategy, seed=7)
    tr = training.Trainer(cfg, ds.input_shape, ds.num_classes)
    if strategy == "mirrored":
        assert tr.strategy.num_replicas_in_sync == 2, tr.strategy.num_replicas_in_sync
    batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    xb, yb = next(iter(tr.distribute(batch)))
    metrics = tr.train_step(xb, yb)
    results.append(([v.numpy() for v in tr.ensemble.trainable_variables],
                    {k: np.asarray(v) for k, v in metrics.items()}))

(w0, m0), (w1, m1) = results
init = training.Trainer(training.TrainConfig(mode=mode, ensemble_size=3, batch_size=64, out_dir="u", seed=7),
                        ds.input_shape, ds.num_classes)
moved = max(float(np.max(np.abs(a - b.numpy()))) for a, b in zip(w0, init.ensemble.trainable_variables))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(w0, w1))
print(f"MOVED {moved:.3e}")
print(f"WEIGHT_DIFF {diff:.3e}")
print(f"LOSS {float(m0['loss']):.6f} {float(m1['loss']):.6f}")

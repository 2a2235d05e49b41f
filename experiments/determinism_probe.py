"""Is an ensemble training step repeatable? Two fresh Trainers, same seed and same batches, 4 steps;
max |w1 - w2| of the trainable weights per precision and mode (ResNet-20 x 2, CIFAR-10 batch 32).

Usage: python experiments/determinism_probe.py float32,mixed_bfloat16 baseline,div
"""
import os, sys

import numpy as np
import tensorflow as tf

from tf_divtrain import training, data
from tf_divtrain.training.run import seed_everything
ds = data.load_dataset("cifar10", os.environ.get("TF_DIVTRAIN_DATA"), test_size=64)
x, y = ds.x_train[:128], ds.y_train[:128]
def run(prec, mode, steps=4):
    cfg = training.TrainConfig(model="resnet20", mode=mode, ensemble_size=2, batch_size=32, precision=prec, seed=3).validate()
    seed_everything(cfg)
    tr = training.Trainer(cfg, (32, 32, 3), 10)
    for i in range(steps):
        tr.train_step(tf.constant(x[i*32:(i+1)*32]), tf.constant(y[i*32:(i+1)*32]))
    return [v.numpy() for v in tr.ensemble.trainable_variables]
for prec, mode in [(p, m) for p in sys.argv[1].split(",") for m in sys.argv[2].split(",")]:
    a, b = run(prec, mode), run(prec, mode)
    d = max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))
    print(f"{prec} {mode}: max |w1 - w2| after 4 steps = {d:.3g}", flush=True)

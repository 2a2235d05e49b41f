"""A/B of grappler's remapper on attack crafting (5 x Conv-4, LeakyReLU): does the logged
"remapper failed ... LeakyReluGrad ... BiasAdd" cost speed? Figures, not a test. One process per
variant (graph options are process-wide), alternating; untrained weights (speed does not depend
on them):

    python -m benchmarks.remapper_ab [--images=128] [--iters=5] [--rounds=2]

Variants: ``default`` (the remapper on; it fails on this graph and leaves it unfused),
``noremap`` (``tf.config.optimizer.set_experimental_options({"remapping": False})``) and ``max``
(LeakyReLU written as ``max(x, 0.2 x)``, which has no LeakyReluGrad, so the remapper succeeds on
what it can fuse). Prints ms per image and momentum-PGD iteration (best of 3 calls) and a checksum
of the adversarial batch (equal across variants: the same function).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

VARIANTS = ("default", "noremap", "max")


def child(mode: str, n: int, iters: int) -> None:
    import numpy as np
    import tensorflow as tf
    import keras

    if mode == "noremap":
        tf.config.optimizer.set_experimental_options({"remapping": False})
    if mode == "max":
        class MaxLeaky(keras.layers.Layer):
            def __init__(self, negative_slope=0.2, name=None, **kw):
                super().__init__(name=name, **kw)
                self.slope = negative_slope

            def call(self, x):
                return tf.maximum(x, self.slope * x)

        keras.layers.LeakyReLU = MaxLeaky
    from tf_divtrain import models
    from tf_divtrain.attacks import momentum_pgd
    from tf_divtrain.attacks.core import as_logits_fn

    fn = as_logits_fn(models.build_ensemble("conv4", (32, 32, 3), 10, seed=0))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((n, 32, 32, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, 10, n).astype(np.int64))
    f = tf.function(lambda x, y: momentum_pgd(fn, x, y, 0.03, nb_iter=iters, seed=0), autograph=False)
    f(x, y).numpy()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = f(x, y).numpy()
        times.append(time.perf_counter() - t)
    print(f"{mode}: {min(times) / iters / n * 1000:.3f} ms per image-iteration ({n} images x {iters} "
          f"iterations, best of 3), checksum {out.sum():.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=VARIANTS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.images, a.iters)
    for _ in range(a.rounds):
        for v in VARIANTS:
            subprocess.run([sys.executable, "-m", "benchmarks.remapper_ab", f"--child={v}",
                            f"--images={a.images}", f"--iters={a.iters}"], check=True)


if __name__ == "__main__":
    main()

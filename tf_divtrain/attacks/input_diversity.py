"""The input-diversity transform of DI²-FGSM / M-DI²-FGSM (Xie et al. 2019, CVPR), Eq 7.

``T(x; p)``: with probability ``p`` (0.5 in the paper) the batch is resized to ``rnd x rnd``
(nearest neighbour, as in the authors' code) with ``rnd`` uniform in ``[W, W')``, zero-padded at a
random ``(top, left)`` to ``W' x W'``; otherwise ``x`` unchanged. One draw per batch and step, as in
the authors' code. ``W' = max(W + 1, int(W * resize_ratio))``: the paper's 299 -> [299, 330) is a
ratio of 1.104; we default to 36/32 = 1.125 (CIFAR-10 32 -> [32, 36); MNIST 28 -> [28, 31)).

Difference from the paper, forced by our models: Inception takes the padded 330 x 330 image, but
Conv-3/Conv-4 have a Flatten + Dense head that needs W x W, so the padded image is resized back to
W x W (nearest neighbour) before the model sees it.
"""

from __future__ import annotations

import tensorflow as tf

from tf_divtrain.attacks.core import seed_pair

DIVERSITY_PROB = 0.5  # p (Xie et al. 2019)
RESIZE_RATIO = 36.0 / 32.0  # W'/W; the paper's 330/299 = 1.104 for ImageNet


def padded_size(size: int, resize_ratio: float = RESIZE_RATIO) -> int:
    """``W' = max(W + 1, int(W * resize_ratio))``."""
    if not resize_ratio > 1.0:
        raise ValueError(f"resize_ratio={resize_ratio!r} must be > 1 (W' > W).")
    return max(int(size) + 1, int(size * resize_ratio))


def check_prob(prob) -> float:
    value = float(prob)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"prob={prob!r} (input-diversity probability) must be in [0, 1].")
    return value


def diversity_params(seed, size: int, prob: float = DIVERSITY_PROB,
                     resize_ratio: float = RESIZE_RATIO):
    """The random draws of one step: ``(apply, rnd, top, left)`` as scalar tensors (bool, int32).

    ``apply ~ Bernoulli(prob)``, ``rnd ~ U{W, ..., W'-1}``, ``top, left ~ U{0, ..., W' - rnd}``,
    each from its own ``fold_in`` of ``seed``.
    """
    out = padded_size(size, resize_ratio)
    s = seed_pair(seed)
    draw = lambda k, lo, hi: tf.random.stateless_uniform(  # noqa: E731
        [], tf.random.experimental.stateless_fold_in(s, k), lo, hi, dtype=tf.int32)
    apply = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 0)) < prob
    rnd = draw(1, size, out)
    top = draw(2, 0, out - rnd + 1)
    left = draw(3, 0, out - rnd + 1)
    return apply, rnd, top, left


def input_diversity(x, seed, prob: float = DIVERSITY_PROB, resize_ratio: float = RESIZE_RATIO):
    """``T(x; p)`` (module docstring) on a square NHWC batch; output shape = input shape."""
    x = tf.convert_to_tensor(x, tf.float32)
    prob = check_prob(prob)
    size = int(x.shape[1])
    if x.shape[2] != size:
        raise ValueError(f"input diversity needs square images, got {x.shape[1:3]}.")
    out = padded_size(size, resize_ratio)
    apply, rnd, top, left = diversity_params(seed, size, prob, resize_ratio)

    def transformed():
        r = tf.image.resize(x, tf.stack([rnd, rnd]), method="nearest")
        p = tf.pad(r, [[0, 0], [top, out - rnd - top], [left, out - rnd - left], [0, 0]])
        return tf.ensure_shape(tf.image.resize(p, [size, size], method="nearest"), x.shape)

    return tf.cond(apply, transformed, lambda: x)

"""Prototype: the N members of a plain conv-net ensemble (Conv-3 / Conv-4) evaluated as ONE wide
network ("stacked" formulation), for the GAL input gradients.

Same function as ``gal.member_input_gradients`` (up to float round-off):

* the input is tiled N times along channels (``[B, H, W, N*C]``; channel block i is member i's own
  copy of x, so d(sum of losses)/d(block i) is member i's input gradient -- the role the
  ``tf.identity`` copies play in gal.py);
* every Conv2D becomes one grouped convolution (``groups = N``) whose kernel is the members'
  kernels concatenated along the output axis (member i owns output channels
  ``[i*C_out, (i+1)*C_out)`` and reads input block i); bias likewise;
* LeakyReLU / MaxPooling act per channel, so they apply to the stacked tensor unchanged;
* Flatten regroups ``[B, H, W, N, C]`` -> ``[B, N, H*W*C]`` (Keras' row-major H, W, C order);
* Dense layers become a batched matmul ``einsum('bnd,nde->bne')`` with the members' kernels stacked.

The stacked kernels are built *inside* the step from the members' own variables (concat/stack is
differentiable), so the optimizer still updates the Keras members and checkpoints / export are
unchanged. Models with other layers (BatchNorm, ResNet adds, mixed architectures) are not
supported: ``supports(members)`` is False and callers keep the reference path.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_divtrain import gal as gal_lib
from tf_divtrain import training as training_lib

_REFERENCE_OBJECTIVE = training_lib.per_example_objective

_SUPPORTED = (keras.layers.InputLayer, keras.layers.Conv2D, keras.layers.LeakyReLU,
              keras.layers.MaxPooling2D, keras.layers.Flatten, keras.layers.Dense)


def _layers(model):
    return [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


def supports(members) -> bool:
    """True when all members have the same layer sequence made only of supported layers."""
    if len(members) < 2:
        return False
    ref = [(type(l), getattr(l, "kernel", None) is not None and tuple(l.kernel.shape))
           for l in _layers(members[0])]
    for m in members:
        if not all(isinstance(l, _SUPPORTED) for l in m.layers):
            return False
        if [(type(l), getattr(l, "kernel", None) is not None and tuple(l.kernel.shape))
                for l in _layers(m)] != ref:
            return False
        for l in _layers(m):
            if isinstance(l, keras.layers.Conv2D) and (l.groups != 1 or not l.use_bias
                                                         or l.activation.__name__ != "linear"):
                return False
            if isinstance(l, keras.layers.Dense) and (not l.use_bias
                                                        or l.activation.__name__ != "linear"):
                return False
    return True


def stacked_logits(members, x_tiled):
    """[B, H, W, N*C] tiled input -> member logits [B, N, classes] (the wide network)."""
    n = len(members)
    per_layer = list(zip(*[_layers(m) for m in members]))
    h = x_tiled
    flat = False
    for group in per_layer:
        l0 = group[0]
        if isinstance(l0, keras.layers.Conv2D):
            k = tf.concat([tf.convert_to_tensor(l.kernel) for l in group], axis=-1)  # [kh, kw, C_in, N*C_out]
            b = tf.concat([tf.convert_to_tensor(l.bias) for l in group], axis=0)
            h = tf.nn.conv2d(h, k, strides=list(l0.strides), padding=l0.padding.upper(),
                             dilations=list(l0.dilation_rate))  # groups = N (in chans / kernel in chans)
            h = tf.nn.bias_add(h, b)
        elif isinstance(l0, keras.layers.LeakyReLU):
            h = tf.nn.leaky_relu(h, alpha=l0.negative_slope)
        elif isinstance(l0, keras.layers.MaxPooling2D):
            h = tf.nn.max_pool2d(h, list(l0.pool_size), list(l0.strides), l0.padding.upper())
        elif isinstance(l0, keras.layers.Flatten):
            s = tf.shape(h)
            c = h.shape[-1] // n
            h = tf.reshape(h, [s[0], h.shape[1], h.shape[2], n, c])
            h = tf.transpose(h, [0, 3, 1, 2, 4])
            h = tf.reshape(h, [s[0], n, h.shape[2] * h.shape[3] * c])
            flat = True
        elif isinstance(l0, keras.layers.Dense):
            if not flat:
                raise NotImplementedError("Dense before Flatten")
            k = tf.stack([tf.convert_to_tensor(l.kernel) for l in group], axis=0)  # [N, in, out]
            b = tf.stack([tf.convert_to_tensor(l.bias) for l in group], axis=0)  # [N, out]
            h = tf.einsum("bnd,nde->bne", h, k) + b[None]
        else:
            raise NotImplementedError(type(l0).__name__)
    return h


def member_input_gradients(members, x, labels, training: bool = False):
    """Drop-in for ``gal.member_input_gradients`` (same returns) using the wide network."""
    del training  # no BatchNorm / dropout in the supported models
    n = len(members)
    batch = tf.shape(x)[0]
    c = x.shape[-1]
    x_tiled = tf.tile(x, [1, 1, 1, n])
    with tf.GradientTape() as tape:
        tape.watch(x_tiled)
        logits = stacked_logits(members, x_tiled)
        ce = gal_lib.member_cross_entropy(logits, labels)
        total = tf.reduce_sum(ce)
    g = tape.gradient(total, x_tiled)  # [B, H, W, N*C]
    g = tf.reshape(g, [batch, x.shape[1], x.shape[2], n, c])
    g = tf.transpose(g, [0, 3, 1, 2, 4])
    grads = tf.reshape(g, [batch, n, x.shape[1] * x.shape[2] * c])
    return grads, logits, ce


def per_example_objective(members, x, y, mode: str, gal_lambda: float, training: bool = True):
    """``training.per_example_objective`` with the stacked path (GAL modes, supported models)."""
    if mode in training_lib.GAL_MODES and supports(members):
        grads, logits, ce = member_input_gradients(members, x, y, training=training)
        pairs = gal_lib.pair_cosines(grads)
        gal = gal_lib.gal_from_pairs(pairs)
        return {"loss": gal_lib.div_loss_per_example(ce, gal, gal_lambda), "ce": ce, "gal": gal,
                "coherence": gal_lib.coherence_from_pairs(pairs), "logits": logits}
    return _REFERENCE_OBJECTIVE(members, x, y, mode, gal_lambda, training)


def separate_member_input_gradients(members, x, labels, training: bool = False):
    """A/B alternative to gal.py's single backward pass: one inner tape (and backward) per member."""
    grads, logits = [], []
    batch = tf.shape(x)[0]
    for m in members:
        with tf.GradientTape() as tape:
            tape.watch(x)
            lg = m(x, training=training)
            total = tf.reduce_sum(gal_lib.member_cross_entropy(lg[:, None, :], labels))
        grads.append(tf.reshape(tape.gradient(total, x), [batch, -1]))
        logits.append(lg)
    logits = tf.stack(logits, axis=1)
    return tf.stack(grads, axis=1), logits, gal_lib.member_cross_entropy(logits, labels)


def separate_per_example_objective(members, x, y, mode: str, gal_lambda: float, training: bool = True):
    if mode in training_lib.GAL_MODES:
        grads, logits, ce = separate_member_input_gradients(members, x, y, training=training)
        pairs = gal_lib.pair_cosines(grads)
        gal = gal_lib.gal_from_pairs(pairs)
        return {"loss": gal_lib.div_loss_per_example(ce, gal, gal_lambda), "ce": ce, "gal": gal,
                "coherence": gal_lib.coherence_from_pairs(pairs), "logits": logits}
    return _REFERENCE_OBJECTIVE(members, x, y, mode, gal_lambda, training)

"""The paper's model zoo (Table 1) and the ensemble wrapper.

Choices where the paper is silent (documented here, in the README and in the flagfiles):

* Activation: LeakyReLU with negative slope ``LEAKY_SLOPE = 0.2`` after every convolution and every
  hidden dense layer, in every model -- never ReLU (paper §3.4: ReLU makes input gradients sparse
  and stalls GAL). 0.2 passes a fifth of the gradient on the negative side, dense enough for GAL
  to train (PyTorch's 0.01 default is nearly as sparse as ReLU for this purpose).
* Conv-3 / Conv-4: 3x3 convolutions with 'valid' padding (no padding), 2x2 max-pooling, stride 1.
  'valid' keeps Conv-3 at 3.38 M parameters on MNIST and is ~40 % cheaper than 'same' on CPU.
* ResNet-20/26 (He et al. 2016, CIFAR variant, 6n+2 layers, n = 3/4): a 3x3 conv with 16 filters,
  three stages of n basic blocks with 16/32/64 filters (stride 2 at the start of stages 2 and 3),
  global average pooling, a dense layer. Shortcuts are option A of He et al. (parameter-free
  identity; when the shape changes, subsample by 2 and zero-pad the new channels), as in the
  original CIFAR ResNets. BatchNorm (momentum 0.9) after every convolution, LeakyReLU after the BN
  of the first conv of a block and after the residual sum.

All models output logits. Weights are initialised from ``seed`` (each layer gets its own derived
seed), so the same (name, shape, classes, seed) always gives the same weights.
"""

from __future__ import annotations

from typing import Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from tf_divtrain import precision as precision_lib

LEAKY_SLOPE = 0.2
BN_MOMENTUM = 0.9


class _Seeds:
    """Hands out a distinct, reproducible initializer seed per layer."""

    def __init__(self, seed: int):
        self._base = int(seed) * 1009
        self._i = 0

    def kernel(self):
        self._i += 1
        return keras.initializers.GlorotUniform(seed=self._base + self._i)

    def he(self):
        self._i += 1
        return keras.initializers.HeNormal(seed=self._base + self._i)


def _act(x, name=None):
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)(x)


def _conv_net(filters_and_pools: Sequence, name: str, input_shape, num_classes: int, seed: int):
    s = _Seeds(seed)
    inp = keras.Input(shape=input_shape, name="images")
    x = inp
    for item in filters_and_pools:
        if item == "M":
            x = keras.layers.MaxPooling2D(2)(x)
        else:
            x = keras.layers.Conv2D(item, 3, padding="valid", kernel_initializer=s.kernel())(x)
            x = _act(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1024, kernel_initializer=s.kernel())(x)
    x = _act(x)
    out = keras.layers.Dense(num_classes, kernel_initializer=s.kernel(), name="logits")(x)
    return keras.Model(inp, out, name=name)


def conv3(input_shape, num_classes=10, seed=0):
    """C32-C64-M-C128-M-FC1024-FC10 (Table 1)."""
    return _conv_net([32, 64, "M", 128, "M"], "conv3", input_shape, num_classes, seed)


def conv4(input_shape, num_classes=10, seed=0):
    """C32-C64-C128-M-C128-M-FC1024-FC10 (Table 1)."""
    return _conv_net([32, 64, 128, "M", 128, "M"], "conv4", input_shape, num_classes, seed)


class ShortcutA(keras.layers.Layer):
    """He et al.'s option-A shortcut: stride-2 subsampling and zero-padding of the new channels."""

    def __init__(self, out_channels: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.stride = stride

    def call(self, x):
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride, :]
        extra = self.out_channels - x.shape[-1]
        if extra > 0:
            x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def get_config(self):
        return {**super().get_config(), "out_channels": self.out_channels, "stride": self.stride}


def scale_gradient(x, gamma: float):
    """Identity forward; the gradient flowing back through it is multiplied by ``gamma``."""
    @tf.custom_gradient
    def _scaled(v):
        def grad(dy):
            return dy * tf.cast(gamma, dy.dtype)
        return tf.identity(v), grad
    return _scaled(x)


@keras.saving.register_keras_serializable(package="tf_divtrain")
class ResidualAdd(keras.layers.Add):
    """``branch + shortcut`` closing a residual block (inputs in that order); forward = ``Add``.

    The hook of the skip-gradient method (SGM, Wu et al. 2020, Eq 7): with
    ``branch_gradient_scale = gamma`` the backward pass through the block is
    ``d shortcut / dx + gamma * d branch / dx``; the default 1.0 is plain backprop, so training
    and inference never see it. Parameter-free: weights and exports are unchanged.
    """

    branch_gradient_scale = 1.0

    def call(self, inputs):
        gamma = self.branch_gradient_scale
        if gamma != 1.0:
            inputs = [scale_gradient(inputs[0], gamma)] + list(inputs[1:])
        return super().call(inputs)


def residual_adds(model) -> list:
    """Every :class:`ResidualAdd` in ``model`` (nested models included)."""
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, ResidualAdd):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(residual_adds(layer))
    return found


def _resnet(n: int, name: str, input_shape, num_classes: int, seed: int):
    s = _Seeds(seed)

    def conv_bn(x, filters, stride):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                                kernel_initializer=s.he())(x)
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)

    inp = keras.Input(shape=input_shape, name="images")
    x = _act(conv_bn(inp, 16, 1))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if (stage > 0 and block == 0) else 1
            shortcut = x if (stride == 1 and x.shape[-1] == filters) else ShortcutA(filters, stride)(x)
            h = _act(conv_bn(x, filters, stride))
            h = conv_bn(h, filters, 1)
            x = _act(ResidualAdd()([h, shortcut]))  # branch first (SGM's hook)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(num_classes, kernel_initializer=s.kernel(), name="logits")(x)
    return keras.Model(inp, out, name=name)


def resnet20(input_shape, num_classes=10, seed=0):
    """ResNet-20: 6n+2 layers with n = 3 (Table 1)."""
    return _resnet(3, "resnet20", input_shape, num_classes, seed)


def resnet26(input_shape, num_classes=10, seed=0):
    """ResNet-26: 6n+2 layers with n = 4 (Table 1)."""
    return _resnet(4, "resnet26", input_shape, num_classes, seed)


MODELS = {"conv3": conv3, "conv4": conv4, "resnet20": resnet20, "resnet26": resnet26}
MIX = ("resnet26", "resnet20", "conv4", "conv3", "conv3")  # the paper's MIX ensemble


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))} "
                         f"(or 'mix' for the paper's MIX ensemble).")
    return name


def build_model(name: str, input_shape, num_classes: int = 10, seed: int = 0,
                precision: str = "float32") -> keras.Model:
    """Registry: builds model ``name`` (logits output) with weights initialised from ``seed``.

    ``precision`` is the Keras dtype policy its layers compute in (variables are float32 always;
    see ``tf_divtrain.precision``); the same seed gives the same float32 weights in every precision.
    """
    with precision_lib.policy_scope(precision):
        return MODELS[check_model_name(name)](tuple(input_shape), num_classes, seed)


def member_names(model: Union[str, Sequence[str]], ensemble_size: int) -> list:
    """Expands ``'conv3'`` -> N copies, ``'mix'`` -> the paper's MIX list, a comma list -> itself."""
    if isinstance(model, str):
        model = model.strip()
        if model.lower() == "mix":
            names = list(MIX)
        elif "," in model:
            names = [m.strip() for m in model.split(",") if m.strip()]
        else:
            names = [model] * ensemble_size
    else:
        names = list(model)
    for n in names:
        check_model_name(n)
    if not names:
        raise ValueError("An ensemble needs at least one member.")
    return names


class Ensemble(tf.Module):
    """N member models; prediction = average of the members' softmax probabilities.

    ``member_logits(x)`` -> [B, N, classes] keeps every member's logits reachable (GAL, attacks).
    """

    def __init__(self, members: Sequence[keras.Model], name: str = "ensemble"):
        super().__init__(name=name)
        self.members = list(members)
        self.metadata = {}  # an export's metadata when loaded by export.load_ensemble

    @property
    def dataset(self):
        """The dataset of a loaded export (``metadata["dataset"]``), else None."""
        return self.metadata.get("dataset")

    @property
    def input_shape(self):
        shape = self.metadata.get("input_shape")
        return tuple(shape) if shape else tuple(self.members[0].input_shape[1:])

    @property
    def size(self) -> int:
        return len(self.members)

    def member_logits(self, x, training: bool = False):
        return member_logits(self.members, x, training=training)

    def probabilities(self, x, training: bool = False):
        return ensemble_probabilities(self.member_logits(x, training=training))

    def __call__(self, x, training: bool = False):
        return self.member_logits(x, training=training)

    @property
    def trainable_variables(self):
        return [v for m in self.members for v in m.trainable_variables]


def member_logits(members: Sequence, x, training: bool = False):
    """Every member's logits, cast to float32 as they leave the member: -> [B, N, C].

    The one place member outputs enter the package's maths, so CE, softmax averages, cosines and
    GAL are float32 whatever precision the members compute in.
    """
    return tf.stack([tf.cast(m(x, training=training), tf.float32) for m in members], axis=1)


def ensemble_probabilities(member_logits):
    """Average softmax over the member axis: [B, N, C] -> [B, C]."""
    return tf.reduce_mean(tf.nn.softmax(member_logits, axis=-1), axis=1)


def build_ensemble(model: Union[str, Sequence[str]], input_shape, num_classes: int = 10,
                   ensemble_size: int = 5, seed: int = 0, precision: str = "float32") -> Ensemble:
    """Builds an ensemble from one name (N copies), 'mix', or a list of names.

    Member i is initialised from seed ``seed * 100 + i``, so members differ and runs reproduce.
    """
    names = member_names(model, ensemble_size)
    members = [build_model(n, input_shape, num_classes, seed * 100 + i, precision)
               for i, n in enumerate(names)]
    return Ensemble(members)


def clone_ensemble(ensemble: Ensemble, names: Sequence[str], input_shape, num_classes: int,
                   precision: str = "float32") -> Ensemble:
    """The same weights in members rebuilt under ``precision`` (e.g. a float32 copy of a
    mixed-precision ensemble for export and evaluation). Variables are float32 in every
    precision, so the copy is exact."""
    clone = build_ensemble(list(names), input_shape, num_classes, precision=precision)
    for src, dst in zip(ensemble.members, clone.members):
        dst.set_weights(src.get_weights())
    return clone


def count_params(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))

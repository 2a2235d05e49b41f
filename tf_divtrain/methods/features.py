"""Intermediate features of Keras members, by a 1-based layer index: the layers DVERGE distils
(``feature_layers``, ``distill_layer_choices``) and ``x -> f^layer(x)`` (``feature_model``).

Model introspection only, shared by :mod:`.dverge` (the method) and :mod:`.configs` (whose
``DVERGEConfig.pick_layer`` draws a layer per epoch) without tying the two in a circle.
"""

from __future__ import annotations

import weakref
from typing import List

import keras
import numpy as np
import tensorflow as tf

from tf_divtrain.methods import _common

_ACTIVATIONS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
                keras.layers.PReLU, keras.layers.Softmax)


def feature_layers(member) -> list:
    """The layers a 1-based ``layer`` index refers to: ``member.layers`` without InputLayers."""
    if not isinstance(member, keras.Model) or not hasattr(member, "inputs") or not member.inputs:
        raise ValueError(f"DVERGE features need a built functional or Sequential keras.Model, got "
                         f"{type(member).__name__}.")
    return [l for l in member.layers if not isinstance(l, keras.layers.InputLayer)]


def _producers(layer) -> list:
    try:
        inputs = tf.nest.flatten(layer.input)
    except (AttributeError, ValueError):  # never called / shared layers
        return []
    return [t._keras_history.operation for t in inputs if hasattr(t, "_keras_history")]


def distill_layer_choices(member) -> List[int]:
    """1-based indices of the candidate distillation features: every layer whose output feeds an
    activation layer, every layer with a fused non-linear activation, and the model output (the
    analogue of DVERGE's pre-ReLU features; :mod:`.dverge`'s docstring says why)."""
    layers = feature_layers(member)
    feeds_activation = {id(p) for l in layers if isinstance(l, _ACTIVATIONS) for p in _producers(l)}
    outputs = {id(t._keras_history.operation) for t in tf.nest.flatten(member.outputs)}
    linear = keras.activations.linear
    choices = []
    for i, l in enumerate(layers, start=1):
        fused = getattr(l, "activation", None)
        fused = fused is not None and fused is not linear and not isinstance(l, _ACTIVATIONS)
        if id(l) in feeds_activation or id(l) in outputs or fused:
            choices.append(i)
    return choices


_FEATURE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def feature_model(member, layer: int):
    """``x -> f^layer(x)``: the output of ``feature_layers(member)[layer - 1]`` in inference mode,
    cast to (at least) float32. ``layer`` is 1-based; ValueError names the valid range."""
    layers = feature_layers(member)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= len(layers):
        raise ValueError(f"dverge: layer={layer!r} is out of range for model {member.name!r}: valid "
                         f"layers are 1..{len(layers)} (1-based over model.layers without the "
                         f"InputLayer; 1 = {layers[0].name!r}, {len(layers)} = {layers[-1].name!r}).")
    cache = _FEATURE_CACHE.setdefault(member, {})
    if layer not in cache:
        inputs = member.inputs[0] if len(member.inputs) == 1 else member.inputs
        cache[int(layer)] = keras.Model(inputs, layers[layer - 1].output,
                                        name=f"{member.name}_features_{layer}")
    sub = cache[int(layer)]
    return lambda x: _common.at_least_float32(sub(x, training=False))

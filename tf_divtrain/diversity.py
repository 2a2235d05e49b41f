"""``DiversityEnsemble``: Diversity Training (Eq 9) for any Keras ensemble through ``fit()``.

    ens = tf_divtrain.DiversityEnsemble([model_a, model_b, model_c], gal_lambda=0.5)
    ens.compile(optimizer=keras.optimizers.Adam(1e-3))
    ens.fit(x, y, batch_size=128, epochs=3, callbacks=[...])
    probs = ens.predict(x_test)            # the ensemble's average softmax, [B, C]

Members are any Keras models that output **logits** (functional, Sequential, subclassed; same or
different architectures, same input shape and number of classes). ``train_step`` is the shared
step of :mod:`tf_divtrain.step` -- the same code the CLI's Trainer runs -- so one forward pass
inside an inner tape gives the CE and the input gradients, and the outer tape differentiates
GAL (double backprop). Works under a ``tf.distribute`` strategy scope and with members built
under a mixed-precision policy (member logits are cast to float32; a ``mixed_float16`` member
makes ``compile`` wrap the optimizer in a ``LossScaleOptimizer``). Saves and loads as ``.keras``
(custom member classes must be Keras-serializable, as for any ``.keras`` file).

Metrics: ``loss`` (Eq 9), ``ce`` (mean member CE), ``gal`` (Eq 8), ``coherence`` (Eq 7) and
``accuracy`` (argmax of the average softmax). ``gal``/``coherence`` exist when the objective
computes them (lambda > 0).
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_divtrain import models as models_lib
from tf_divtrain import step as step_lib

_SOFTMAX_LIKE = ("softmax", "sigmoid", "log_softmax")


def _output_activation(member) -> Optional[str]:
    """Name of a probability-producing activation on the member's last layer, if any."""
    layers = getattr(member, "layers", None) or []
    if not layers:
        return None
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", None) or (act if isinstance(act, str) else None)
    return name if name in _SOFTMAX_LIKE else None


def _member_input_shape(member):
    try:
        shape = member.input_shape if not isinstance(member.input_shape, list) else None
    except (AttributeError, ValueError):
        shape = None
    return tuple(shape[1:]) if shape else None


@keras.saving.register_keras_serializable(package="tf_divtrain")
class DiversityEnsemble(keras.Model):
    """A ``keras.Model`` over N logit-output members, trained with Eq 9 by ``fit``.

    ``gal_lambda``: lambda of Eq 9 (0 = independent CE training of the members, the usual
    baseline). ``objective``: replaces Eq 9 (see :mod:`tf_divtrain.step`, e.g. ADP/TRS/DVERGE
    objectives); it must be Keras-serializable to be saved in ``.keras`` files.
    ``input_shape`` (without batch axis): builds members that do not know their input yet
    (subclassed models) and lets the constructor check them. ``check_finite``: stop ``fit``
    with an error before an update whose loss is NaN/Inf (skipped under ``LossScaleOptimizer``,
    which skips such steps itself).

    ``call(x)`` returns the average softmax [B, C]; ``member_logits(x)`` returns [B, N, C].
    """

    def __init__(self, members: Sequence[keras.Model], gal_lambda: float = 0.5, objective=None,
                 input_shape=None, check_finite: bool = True, **kwargs):
        kwargs.setdefault("dtype", "float32")  # the wrapper never autocasts; members keep their policy
        super().__init__(**kwargs)
        members = list(members)
        if not members:
            raise ValueError("DiversityEnsemble needs at least one member model.")
        if gal_lambda < 0:
            raise ValueError(f"gal_lambda must be >= 0, got {gal_lambda}.")
        if gal_lambda > 0 and len(members) < 2 and objective is None:
            raise ValueError(f"gal_lambda={gal_lambda} > 0 needs at least 2 members: GAL (Eq 8) "
                             f"compares the input gradients of pairs of members; got 1. Use "
                             f"gal_lambda=0 for a single model.")
        for i, m in enumerate(members):
            act = _output_activation(m)
            if act:
                raise ValueError(f"member {i} ({m.name}) ends in a {act} activation; members must "
                                 f"output logits (the CE and the input gradients of Eq 9 are taken "
                                 f"on logits). Drop the final activation.")
        self.members = members
        self.gal_lambda = float(gal_lambda)
        self.objective = objective or step_lib.default_objective(self.gal_lambda)
        self.check_finite = bool(check_finite)
        self._input_shape_arg = tuple(input_shape) if input_shape is not None else None
        self._trackers = {k: keras.metrics.Mean(name=k)
                          for k in ("loss", "ce", "gal", "coherence", "accuracy")}
        self._check_members(self._input_shape_arg)

    # -- construction checks ------------------------------------------------------------------
    def _check_members(self, input_shape):
        shapes = {i: _member_input_shape(m) for i, m in enumerate(self.members)}
        known = {i: s for i, s in shapes.items() if s is not None}
        if input_shape is not None:
            for i, s in known.items():
                if tuple(s) != tuple(input_shape):
                    raise ValueError(f"member {i} ({self.members[i].name}) takes inputs of shape "
                                     f"{s}, but input_shape={tuple(input_shape)}.")
        elif len(set(known.values())) > 1:
            lines = ", ".join(f"member {i} ({self.members[i].name}): {s}" for i, s in known.items())
            raise ValueError(f"members take different input shapes ({lines}); every member must "
                             f"see the same images (GAL compares gradients w.r.t. the same input).")
        shape = input_shape or (next(iter(known.values())) if known else None)
        if shape is None:
            return  # subclassed members without input_shape: built (unchecked) when first called
        self._probe(shape)
        self._input_shape_arg = tuple(shape)
        self.build((None,) + tuple(shape))

    def _probe(self, shape):
        """Runs every member once on two random images: same classes, and logits not probabilities."""
        x = tf.random.stateless_uniform((2,) + tuple(shape), [7, 11])
        outs = [np.asarray(tf.cast(m(x, training=False), tf.float32)) for m in self.members]
        classes = {o.shape[-1] for o in outs}
        if any(o.ndim != 2 for o in outs) or len(classes) != 1:
            raise ValueError(f"members must output logits of shape [batch, classes] with the same "
                             f"classes; got {[o.shape[1:] for o in outs]}.")
        for i, o in enumerate(outs):
            if o.shape[-1] > 1 and np.all(o >= 0) and np.allclose(o.sum(-1), 1.0, atol=1e-4):
                raise ValueError(f"member {i} ({self.members[i].name}) outputs probabilities (rows "
                                 f"are >= 0 and sum to 1); members must output logits. Remove the "
                                 f"final softmax.")
        self.num_classes = int(outs[0].shape[-1])

    def build(self, input_shape):
        if not self.built:
            shape = tuple(input_shape)[1:]
            for m in self.members:
                if not m.built:
                    m(tf.zeros((1,) + shape))
            if self._input_shape_arg is None:
                self._input_shape_arg = shape
        super().build(input_shape)

    # -- inference ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.members)

    def member_logits(self, x, training: bool = False):
        """[B, N, C] float32 logits of every member (the ``EnsembleLike`` interface)."""
        return keras.ops.stack([keras.ops.cast(m(x, training=training), "float32")
                                for m in self.members], axis=1)

    def probabilities(self, x, training: bool = False):
        """The ensemble's prediction: average of the members' softmax, [B, C]."""
        return keras.ops.mean(keras.ops.softmax(self.member_logits(x, training), axis=-1), axis=1)

    def call(self, x, training: bool = False):
        return self.probabilities(x, training=training)

    # -- training -----------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Like ``keras.Model.compile``, but the loss is Eq 9 (or ``objective``): no ``loss``."""
        if loss is not None:
            raise ValueError("DiversityEnsemble computes its own loss (Eq 9: mean member CE + "
                             "gal_lambda * GAL); do not pass loss=. Use objective= to change it.")
        if metrics:
            raise ValueError("DiversityEnsemble reports loss, ce, gal, coherence and accuracy "
                             "itself; compile(metrics=...) is not supported.")
        kwargs.setdefault("jit_compile", False)
        optimizer = keras.optimizers.get(optimizer)
        if (any(getattr(m.dtype_policy, "name", "") == "mixed_float16" for m in self.members)
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:  # create the slots (and a LossScaleOptimizer's scale) before tracing
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        """Restores the optimizer of a loaded ``.keras`` file (``loss``/``metrics`` are never set)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**{k: v for k, v in config.items() if k not in ("loss", "metrics",
                                                                     "weighted_metrics",
                                                                     "loss_weights")})

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _update_metrics(self, out, y):
        self._trackers["loss"].update_state(out["loss"])
        self._trackers["ce"].update_state(tf.reduce_mean(out["ce"], -1))
        self._trackers["accuracy"].update_state(step_lib.correct_predictions(out["logits"], y))
        if "gal" in out:
            self._trackers["gal"].update_state(out["gal"])
        if "coherence" in out:  # over the examples with a defined member pair (step.DiversityObjective)
            w = 1.0 - out["coherence_vanishing"] if "coherence_vanishing" in out else None
            self._trackers["coherence"].update_state(out["coherence"], sample_weight=w)
        return {k: t.result() for k, t in self._trackers.items()
                if k in out or k in ("ce", "accuracy")}

    @staticmethod
    def _unpack(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError("DiversityEnsemble.fit/evaluate need labels: fit(x, y) or a dataset "
                             "of (images, labels).")
        if sample_weight is not None:
            raise ValueError("DiversityEnsemble does not support sample weights.")
        return x, y

    def fit(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.fit``; array images must be finite (one NaN/Inf pixel turns every weight
        NaN), so such input is refused up front, naming how many values and the first example."""
        _check_finite_images(x, "x")
        return super().fit(x, y, *args, **kwargs)

    def train_step(self, data):
        x, y = self._unpack(data)
        if self.check_finite:  # datasets / generators: checked per batch, in the graph
            x = tf.debugging.assert_all_finite(
                x, "DiversityEnsemble.fit: a training batch holds NaN or Inf pixels; clean the "
                "input data (e.g. np.nan_to_num) or drop those images")
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        out = step_lib.apply_step(self.members, self.trainable_variables, self.optimizer,
                                  self.objective, x, y, step_lib.global_batch_size(x),
                                  check_finite=self.check_finite and not scaled)
        return self._update_metrics(out, y)

    def test_step(self, data):
        x, y = self._unpack(data)
        out = step_lib.call_objective(self.objective, self.members, x, y, training=False)
        return self._update_metrics(out, y)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.probabilities(x, training=False)

    # -- saving -------------------------------------------------------------------------------
    def get_config(self):
        objective = None
        if not isinstance(self.objective, (step_lib.DiversityObjective, step_lib.CrossEntropyObjective)):
            if hasattr(self.objective, "get_config"):
                objective = keras.saving.serialize_keras_object(self.objective)
            else:
                warnings.warn("DiversityEnsemble: the custom objective has no get_config, so it is "
                              "not saved; pass objective= again after loading.")
        return {"members": [keras.saving.serialize_keras_object(m) for m in self.members],
                "gal_lambda": self.gal_lambda, "objective": objective,
                "input_shape": list(self._input_shape_arg) if self._input_shape_arg else None,
                "check_finite": self.check_finite, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["members"] = [keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
                             for m in config["members"]]
        if config.get("objective") is not None:
            config["objective"] = keras.saving.deserialize_keras_object(
                config["objective"], custom_objects=custom_objects)
        return cls(**config)


def _check_finite_images(x, name: str) -> None:
    """ValueError if the array-like ``x`` holds NaN or Inf (datasets are checked per batch)."""
    if x is None or isinstance(x, (tf.data.Dataset, dict)) or not hasattr(x, "shape"):
        return
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        return
    if arr.ndim == 0:
        arr = arr[None]
    count, first = 0, None
    for start in range(0, len(arr), 1024):  # chunks: no full-size temporary for a large x
        bad = ~np.isfinite(arr[start:start + 1024])
        n = int(bad.sum())
        if n and first is None:
            first = start + int(np.argmax(bad.reshape(len(bad), -1).any(-1)))
        count += n
    if count:
        raise ValueError(f"DiversityEnsemble.fit: {name} holds {count} NaN/Inf pixel value(s) "
                         f"(first in example {first}); clean them (e.g. np.nan_to_num) or drop "
                         f"those images.")


def trained_like(ensemble) -> models_lib.Ensemble:
    """A ``models.Ensemble`` view of the same member objects (e.g. for ``export_ensemble``)."""
    return models_lib.Ensemble(ensemble.members)

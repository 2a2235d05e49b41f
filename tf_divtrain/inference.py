"""The package's one inference path: member logits and argmax predictions of any ``EnsembleLike``.

The ensemble's prediction is the argmax of the average member softmax (paper §2, §4.1); a
member's prediction is the argmax of its logits. Training's clean accuracy, evaluation's
per-example correctness and the analyses' predictions all come from :func:`predict`, so the
three cannot disagree on what "correct" means.
"""

from __future__ import annotations

import weakref
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_divtrain import batching
from tf_divtrain import models as models_lib

LogitsFn = Callable  # x [B, ...] -> member logits [B, N, C] float32


def _compiled(get_ensemble: Callable, input_shape: Sequence[int]) -> LogitsFn:
    """``x -> get_ensemble().member_logits(x)`` in inference mode, compiled with the input
    signature ``[None, *input_shape]``: one trace for any batch size."""
    spec = tf.TensorSpec([None, *(int(d) for d in input_shape)], tf.float32)
    return tf.function(lambda xb: get_ensemble().member_logits(xb, training=False),
                       input_signature=[spec], autograph=False)


def logits_fn(ensemble, input_shape: Sequence[int]) -> LogitsFn:
    """A new compiled inference-mode ``x -> member_logits(x)`` of ``ensemble``."""
    return _compiled(lambda: ensemble, input_shape)


_CACHE: "weakref.WeakKeyDictionary[object, Dict[tuple, LogitsFn]]" = weakref.WeakKeyDictionary()


def cached_logits_fn(ensemble, input_shape: Sequence[int]) -> LogitsFn:
    """:func:`logits_fn` compiled once per (ensemble, image shape) and reused by every later call
    (the cache holds the ensemble weakly: it goes when the ensemble goes)."""
    try:
        per = _CACHE.setdefault(ensemble, {})
    except TypeError:  # not weak-referenceable (e.g. a bare function): compile per call
        return logits_fn(ensemble, input_shape)
    key = tuple(int(d) for d in input_shape)
    if key not in per:
        per[key] = _compiled(weakref.ref(ensemble), key)
    return per[key]


def _argmaxes(logits):
    return tf.argmax(models_lib.ensemble_probabilities(logits), -1), tf.argmax(logits, -1)


def member_logits(ensemble, x: np.ndarray, batch_size: int = 500,
                  fn: Optional[LogitsFn] = None) -> np.ndarray:
    """[B, N, C] member logits as numpy (``fn``: a compiled :func:`logits_fn` to reuse)."""
    fn = fn or cached_logits_fn(ensemble, x.shape[1:])
    return batching.map_batches(lambda xb: fn(tf.cast(xb, tf.float32)), x, batch_size=batch_size)


def predict(ensemble, x: np.ndarray, batch_size: int = 500,
            fn: Optional[LogitsFn] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(ensemble predictions [B], member predictions [B, N]) as int64 numpy; ``fn`` defaults to
    the ensemble's :func:`cached_logits_fn`."""
    fn = fn or cached_logits_fn(ensemble, x.shape[1:])
    return batching.map_batches(lambda xb: _argmaxes(fn(tf.cast(xb, tf.float32))), x,
                                batch_size=batch_size)


def correct_mask(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 500,
                 fn: Optional[LogitsFn] = None) -> np.ndarray:
    """Per-example bool: the ensemble's prediction equals ``y``."""
    return predict(ensemble, x, batch_size, fn)[0] == np.asarray(y)


def accuracies(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 500,
               fn: Optional[LogitsFn] = None) -> dict:
    """Clean accuracy of the ensemble and of each member (the keys of ``metrics.json``)."""
    ens, members = predict(ensemble, x, batch_size, fn)
    y = np.asarray(y)
    return {"ensemble_accuracy": float(np.mean(ens == y)),
            "member_accuracy": [float(np.mean(members[:, i] == y)) for i in range(members.shape[1])]}

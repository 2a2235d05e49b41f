"""D_adv of Ensemble Adversarial Training (paper §4.2): FGSM on a static pre-trained model, each
example with its own epsilon.

Where the paper is silent we follow Kurakin et al. 2016 ("Adversarial Machine Learning at Scale")
and Tramer et al. 2018 ("Ensemble Adversarial Training"): epsilons ~ |N(0, max_eps / 2)| truncated
at 2 sigma, and the FGSM crafted against the static model's own *predicted* label, because
one-step examples crafted with the true label carry it in the perturbation ("label leaking",
Kurakin et al. §4.2). How much of a batch is D_adv is ``training.batch_parts``' job.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import models as models_lib

ADV_LABELS = ("predicted", "true")


def random_eps(n, max_eps: float, seed):
    """Per-example FGSM epsilons ~ |N(0, max_eps / 2)| truncated at 2 sigma (Kurakin et al. 2016,
    as in paper §4.2), so 0 <= eps <= max_eps: -> [n]."""
    return tf.abs(tf.random.stateless_truncated_normal([n], seed, stddev=max_eps / 2.0))


def fgsm_random_eps(logits_fn: Callable, x, y, max_eps: float, seed, labels: str = "predicted"):
    """D_adv: FGSM (Eq 2) on ``logits_fn`` with per-example eps from :func:`random_eps`."""
    return fgsm_per_example(logits_fn, x, y, random_eps(tf.shape(x)[0], max_eps, seed), labels)


def fgsm_per_example(logits_fn: Callable, x, y, eps, labels: str = "predicted"):
    """FGSM (Eq 2) on ``logits_fn`` (mean member CE) with eps [B] per example; clipped to [0, 1].

    ``labels="predicted"`` (default) takes the gradient of the CE against ``logits_fn``'s own
    prediction (argmax of its average softmax) instead of the true label ``y``: Kurakin et al.
    2016 (§4.2, "label leaking") and Tramer et al. 2018's code do this, because one-step examples
    crafted with the true label carry it in the perturbation. ``labels="true"`` uses ``y``.
    """
    if labels == "predicted":
        y = tf.argmax(models_lib.ensemble_probabilities(logits_fn(x)), axis=-1)
    elif labels != "true":
        raise ValueError(f"Unknown FGSM label source {labels!r}; valid: {', '.join(ADV_LABELS)}.")
    grad = attacks_lib.input_gradient(logits_fn, attacks_lib.ensemble_ce, x, y)
    eps = tf.reshape(tf.cast(eps, x.dtype), [-1, 1, 1, 1])
    return tf.stop_gradient(tf.clip_by_value(x + eps * tf.sign(grad), 0.0, 1.0))

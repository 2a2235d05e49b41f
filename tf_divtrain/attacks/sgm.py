"""SGM, the skip gradient method (Wu et al. 2020, "Skip Connections Matter", ICLR), for residual
surrogates.

Backpropagation through each residual block ``z_{i+1} = z_i + f_i(z_i)`` is replaced by
``dz_{i+1}/dz_i = 1 + gamma * df_i/dz_i`` (their Eq 7): the residual branch's gradient is decayed
by ``gamma`` so more of it flows through the skip connections. DVERGE uses gamma = 0.2 (issue 23;
Wu et al. use 0.2 for ResNet/DenseNet in their transfer tables' best settings, 0.5 also appears). The
hook is :class:`tf_divtrain.models.ResidualAdd` (the ``Add`` closing every ResNet-20/26 block, branch
first); Wu et al.'s PyTorch code realises the same decay with backward hooks on the ReLUs.

The attack is then :func:`~tf_divtrain.attacks.momentum_pgd.momentum_iterate` on the SGM
gradient: by default PGD without momentum and without random start (``decay = 0``,
``rand_init = False``: Wu et al.'s "SGM" rows are PGD/I-FGSM plus SGM), step eps/10, 100 steps
(DVERGE); all options. Members without residual blocks in a mixed surrogate are attacked with their
plain gradient; a surrogate without any residual block is an error.

A surrogate served from a SavedModel export (``export.LoadedEnsemble``) has no layers to hook, so
its members are rebuilt in Keras from the export's metadata and weights
(``LoadedEnsemble.keras_ensemble``); the rebuild is cached per surrogate object.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Optional

import tensorflow as tf

from tf_divtrain import models as models_lib
from tf_divtrain.attacks.core import (
    CW_CONFIDENCE, MemberLogitsFn, as_logits_fn, check_eps, check_nb_iter, input_gradient,
    loss_fn_for, prep, random_start, seed_pair)
from tf_divtrain.attacks.momentum_pgd import (
    FIELD_NB_ITER, check_decay, default_eps_iter, momentum_iterate)

SGM_GAMMA = 0.2  # DVERGE's setting (issue 23)

_REBUILT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class NotResidualError(ValueError):
    """SGM asked of a surrogate without residual blocks."""


def _model_of(logits_fn):
    return logits_fn.model if isinstance(logits_fn, MemberLogitsFn) else logits_fn


def hookable_surrogate(logits_fn):
    """``(model, residual_add_layers)``: the Keras view of ``logits_fn`` SGM can hook into.

    A ``models.Ensemble`` (or anything with ``.members`` Keras models) or one Keras model is used
    as is; an export is rebuilt (module docstring). No :class:`~tf_divtrain.models.ResidualAdd`
    anywhere -> :class:`NotResidualError`.
    """
    model = _model_of(logits_fn)
    if hasattr(model, "keras_ensemble") and not hasattr(model, "members"):
        names = (getattr(model, "metadata", {}) or {}).get("models") or []
        if not any(str(n).startswith("resnet") for n in names):  # only ResNets have the hook
            raise NotResidualError(
                f"SGM (skip gradient method) needs a residual surrogate, but the export "
                f"{getattr(model, 'path', '')} has members {names or '(unnamed architectures)'}; "
                f"use resnet20/resnet26 members or another attack.")
        try:
            rebuilt = _REBUILT.get(model)
        except TypeError:
            rebuilt = None
        if rebuilt is None:
            rebuilt = model.keras_ensemble("float32")
            try:
                _REBUILT[model] = rebuilt
            except TypeError:
                pass
        model = rebuilt
    members = list(getattr(model, "members", None) or ([model] if hasattr(model, "layers") else []))
    adds = [a for m in members for a in models_lib.residual_adds(m)]
    if not adds:
        names = (getattr(model, "metadata", {}) or {}).get("models") or [
            getattr(m, "name", type(m).__name__) for m in members] or [type(model).__name__]
        raise NotResidualError(
            f"SGM (skip gradient method) needs a residual surrogate, but no member has a residual "
            f"block (members: {', '.join(map(str, names))}); use resnet20/resnet26 members "
            f"(tf_divtrain.models.ResidualAdd) or another attack.")
    return model, adds


@contextlib.contextmanager
def branch_gradient_scale(adds, gamma: float):
    """Sets ``gamma`` on every ``ResidualAdd`` in ``adds`` for the duration (then restores)."""
    old = [a.branch_gradient_scale for a in adds]
    for a in adds:
        a.branch_gradient_scale = float(gamma)
    try:
        yield
    finally:
        for a, g in zip(adds, old):
            a.branch_gradient_scale = g


def check_gamma(gamma) -> float:
    value = float(gamma)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"gamma={gamma!r} (SGM residual-gradient decay) must be in [0, 1].")
    return value


def sgm_gradient(logits_fn, loss_fn, x, y, gamma: float = SGM_GAMMA):
    """The SGM input gradient of ``sum_b loss_fn(y, logits(x))_b`` (module docstring)."""
    model, adds = hookable_surrogate(logits_fn)
    fn = as_logits_fn(model)
    with branch_gradient_scale(adds, check_gamma(gamma)):
        return input_gradient(fn, loss_fn, tf.convert_to_tensor(x, tf.float32), y)


def sgm(logits_fn, x, y, eps, gamma: float = SGM_GAMMA, nb_iter: int = FIELD_NB_ITER,
        eps_iter: Optional[float] = None, decay: float = 0.0, rand_init: bool = False, seed=0,
        loss: str = "ce", confidence: float = CW_CONFIDENCE):
    """SGM attack on ``loss`` (``ce``, ``prediction_ce``, ``cw`` with ``confidence``)."""
    eps = check_eps(eps)
    gamma = check_gamma(gamma)
    nb_iter = check_nb_iter(nb_iter)
    eps_iter = default_eps_iter(eps, eps_iter)
    decay = check_decay(decay)
    loss_fn = loss_fn_for(loss, confidence)
    model, adds = hookable_surrogate(logits_fn)
    fn = as_logits_fn(model)
    x, y = prep(x, y)

    def grad_fn(adv, t):
        with branch_gradient_scale(adds, gamma):
            return input_gradient(fn, loss_fn, adv, y)

    start = random_start(x, eps, seed_pair(seed)) if rand_init else x
    return momentum_iterate(grad_fn, x, start, eps, eps_iter, nb_iter, decay)

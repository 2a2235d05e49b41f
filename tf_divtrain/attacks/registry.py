"""Attack names, option checks and :func:`make_attack`, the compiled ``(x, y, seed) -> x_adv``.

``ATTACKS`` are the paper's five (§4.1, the default of ``evaluate``); ``FIELD_ATTACKS`` the
DVERGE / TRS transfer attacks of issue 23; every name in ``ALL_ATTACKS`` works in
:func:`make_attack`.
"""

from __future__ import annotations

import functools
import inspect

import keras
import tensorflow as tf

from tf_divtrain import paper
from tf_divtrain.attacks.core import as_logits_fn, check_eps, loss_fn_for, seed_pair
from tf_divtrain.attacks.fgsm import fgsm
from tf_divtrain.attacks.mdi2fgsm import mdi2fgsm
from tf_divtrain.attacks.mifgsm import mifgsm
from tf_divtrain.attacks.momentum_pgd import momentum_pgd
from tf_divtrain.attacks.pgd import ifgsm
from tf_divtrain.attacks.pgd_cw import pgd_cw
from tf_divtrain.attacks.rfgsm import rfgsm
from tf_divtrain.attacks.sgm import sgm

ATTACKS = paper.TABLE2_ATTACKS  # the paper's five, Table 2's column order
FIELD_ATTACKS = ("mpgd", "mdi2fgsm", "sgm")
ALL_ATTACKS = ATTACKS + FIELD_ATTACKS
DISPLAY_NAMES = {**paper.ATTACK_NAMES, "mpgd": "M-PGD", "mdi2fgsm": "M-DI²-FGSM", "sgm": "SGM"}

_IMPLS = {"fgsm": fgsm, "rfgsm": rfgsm, "ifgsm": ifgsm, "mifgsm": mifgsm, "pgd_cw": pgd_cw,
          "mpgd": momentum_pgd, "mdi2fgsm": mdi2fgsm, "sgm": sgm}
_SEEDED = {"rfgsm", "pgd_cw", "mpgd", "mdi2fgsm", "sgm"}


def check_attack(name: str) -> str:
    if name not in ALL_ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; valid names: {', '.join(ALL_ATTACKS)}.")
    return name


def check_options(name: str, options: dict) -> dict:
    """``options`` must be keyword arguments of attack ``name`` (a ``loss`` one of ``LOSSES``)."""
    impl = _IMPLS[check_attack(name)]
    allowed = set(inspect.signature(impl).parameters) - {"logits_fn", "x", "y", "eps", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for attack {name!r}; valid: "
                         f"{sorted(allowed) or 'none'}.")
    if "loss" in options:
        loss_fn_for(options["loss"])
    return dict(options)


def _dry_run_logits(x):
    """A two-class 'model' of one pixel with a non-zero input gradient (for :func:`check_option_values`)."""
    s = tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))
    return tf.stack([s, -s], axis=-1)[:, None, :]


@functools.lru_cache(maxsize=None)
def _dry_run_residual():
    """One 1x1-pixel residual block with three classes (SGM's dry run)."""
    from tf_divtrain import models as models_lib

    inp = keras.Input((2, 2, 1))
    flat = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(3, kernel_initializer="ones")(flat)
    skip = keras.layers.Dense(3, kernel_initializer="ones")(flat)
    return keras.Model(inp, models_lib.ResidualAdd()([h, skip]))


def check_option_values(name: str, eps, options: dict) -> dict:
    """``options`` (names checked by :func:`check_options`) are also valid *values* for attack
    ``name`` at ``eps``: the attack itself runs once on a tiny image of a tiny model, so a bad
    value (an unknown R-FGSM variant, ``alpha > eps``, ``nb_iter < 1``, ``restarts < 1``, a string
    for a number) fails before any real work, with the attack's own message -- no rule is written
    twice. Returns the options."""
    options = check_options(name, options)
    if not options:
        return options
    model = _dry_run_residual() if name == "sgm" else _dry_run_logits
    x = tf.fill([1, 2, 2, 1], 0.5)
    y = tf.zeros([1], tf.int64)
    kwargs = dict(options, seed=0) if name in _SEEDED else dict(options)
    if "nb_iter" in kwargs and isinstance(kwargs["nb_iter"], int) and kwargs["nb_iter"] > 2:
        kwargs["nb_iter"] = 2  # a value check, not a run
    try:
        _IMPLS[name](model, x, y, eps, **kwargs)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(options.items()))
        raise ValueError(f"Invalid option value for attack {name!r} at eps={eps} ({shown}): "
                         f"{e}") from None
    return options


class Attack:
    """``(x, y, seed) -> x_adv`` for one (attack, surrogate, eps), traced once.

    The ``tf.function`` gets ``input_signature`` ``[None, *image_shape]`` float32, ``[None]`` int64,
    ``[2]`` int64 on the first call, so every later batch (any size) reuses that one trace.
    ``seed`` may be an int or a [2] int tensor (e.g. ``[seed, batch_index]``).
    """

    def __init__(self, name: str, logits_fn, eps, **options):
        self.name = check_attack(name)
        self.eps = check_eps(eps)
        self.options = check_options(name, options)
        self.logits_fn = as_logits_fn(logits_fn)
        self._impl = _IMPLS[name]
        if name == "sgm":  # fail now, not at the first batch
            from tf_divtrain.attacks.sgm import hookable_surrogate

            hookable_surrogate(self.logits_fn)
        self._fn = None
        self._image_shape = None
        self.python_traces = 0

    def _body(self, x, y, seed):
        self.python_traces += 1  # runs only while tracing
        kwargs = dict(self.options)
        if self.name in _SEEDED:
            kwargs["seed"] = seed
        return self._impl(self.logits_fn, x, y, self.eps, **kwargs)

    def __call__(self, x, y, seed=0):
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.cast(tf.convert_to_tensor(y), tf.int64)
        if self._fn is None:
            self._image_shape = tuple(x.shape[1:])
            sig = [tf.TensorSpec((None,) + self._image_shape, tf.float32, name="x"),
                   tf.TensorSpec((None,), tf.int64, name="y"),
                   tf.TensorSpec((2,), tf.int64, name="seed")]
            self._fn = tf.function(self._body, input_signature=sig, autograph=False)  # explicit loops
        elif tuple(x.shape[1:]) != self._image_shape:
            raise ValueError(f"{self.name}: images of shape {tuple(x.shape[1:])}, but this attack was "
                             f"compiled for {self._image_shape}.")
        return self._fn(x, y, seed_pair(seed))

    @property
    def tracing_count(self) -> int:
        return 0 if self._fn is None else self._fn.experimental_get_tracing_count()


def make_attack(name: str, logits_fn, eps, **options) -> Attack:
    """Compiled attack ``(x, y, seed) -> x_adv``; unknown name / eps outside [0, 1] -> ValueError
    (SGM on a surrogate without residual blocks -> ``sgm.NotResidualError``, a ValueError).

    ``options`` are the keyword arguments of the attack function (e.g. ``nb_iter``, ``variant``).
    """
    return Attack(name, logits_fn, eps, **options)

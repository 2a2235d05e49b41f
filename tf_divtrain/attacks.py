"""White-box L-inf attacks on an N-member surrogate ensemble (paper §2.3, §4.1).

Interface: a *logits function* ``logits_fn(x) -> member logits [B, N, C]`` -- an
:class:`~tf_divtrain.models.Ensemble`, an export :class:`~tf_divtrain.export.LoadedEnsemble`, a
single Keras model (wrapped to N = 1 by :func:`as_logits_fn`) or any callable.

Objective (§4.1): "Since S is an ensemble of 5 models, we consider the average CE loss of all the
models in S as the objective function to be maximized" -> :func:`ensemble_ce`, per example. Every
CE attack takes ``loss=`` (see :data:`LOSSES`): ``"ce"`` (that objective, the default) or
``"prediction_ce"`` (:func:`prediction_ce`, the CE of the ensemble's averaged-softmax prediction --
the rule targets are scored by), for an attacker who knows that the averaged members' gradients
cancel on a diversity-trained surrogate.

Attacks (all untargeted, L-inf, true labels passed explicitly -- no label-leaking guess; every
output lies in the eps-ball of the clean ``x`` and in [0, 1]; eps is on the [0, 1] pixel scale):

* ``fgsm``   -- Eq 2, CleverHans ``fast_gradient_method``.
* ``rfgsm``  -- random step then FGSM (no CleverHans version; see :func:`rfgsm` for both readings).
* ``ifgsm``  -- Eqs 3-4, k = 10 steps of eps/10 from x (CleverHans ``projected_gradient_descent``
  with ``rand_init=False``).
* ``mifgsm`` -- Eq 5 momentum, mu = 1.0, k = 10, own loop (CleverHans' ``momentum_iterative_method``
  has no ``loss_fn`` argument, so it cannot take the ensemble objective).
* ``pgd_cw`` -- PGD (Madry et al. 2017) on the CW hinge with confidence kappa = 50, 30 iterations,
  step 2.5 * eps / 30, random start uniform in the eps-ball (own seeded start + CleverHans FGM steps,
  because CleverHans' random start is not seedable per call).

Randomness is stateless (``tf.random.stateless_*``) and a function of an explicit seed: an int or
an int [2] tensor, so results are deterministic given the seed on CPU and GPU alike.

:func:`make_attack` returns a callable ``(x, y, seed) -> x_adv`` compiled once with a fixed
``input_signature`` (batch dimension ``None``), so batches of any size reuse one trace.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tf_divtrain import gal, paper

ATTACKS = paper.TABLE2_ATTACKS
DISPLAY_NAMES = paper.ATTACK_NAMES
NB_ITER = 10  # k for I-FGSM / MI-FGSM (§4.1)
MI_DECAY = 1.0  # mu for MI-FGSM (§4.1)
CW_CONFIDENCE = 50.0  # kappa for PGD-CW (§4.1)
PGD_CW_ITER = 30  # iterations for PGD-CW (§4.1)
PGD_CW_STEP_FACTOR = 2.5  # step = 2.5 * eps / nb_iter (Madry et al. 2017's rule; paper silent)
CLIP_MIN, CLIP_MAX = 0.0, 1.0


# ----------------------------------------------------------------------------------------------
# Logits functions and losses.

class MemberLogitsFn:
    """Stable callable ``x -> [B, N, C]`` around an ensemble, a Keras model or a function.

    One object per model (see :func:`as_logits_fn`), so CleverHans' ``compute_gradient``
    (a ``tf.function`` keyed on its Python arguments) sees the same callable every time.
    A rank-2 output [B, C] (single model) becomes [B, 1, C].
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        m = self.model
        if hasattr(m, "member_logits"):
            out = m.member_logits(x)
        elif isinstance(m, keras.layers.Layer):
            out = m(x, training=False)
        else:
            out = m(x)
        if out.shape.rank == 2:
            out = out[:, None, :]
        if out.shape.rank != 3:
            raise ValueError(f"logits_fn must return [B, N, C] or [B, C] logits, got shape {out.shape}.")
        return out


_WRAPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def as_logits_fn(model) -> MemberLogitsFn:
    """Returns the (cached, per-model) :class:`MemberLogitsFn` for ``model``."""
    if isinstance(model, MemberLogitsFn):
        return model
    try:
        fn = _WRAPPERS.get(model)
        if fn is None:
            fn = _WRAPPERS[model] = MemberLogitsFn(model)
        return fn
    except TypeError:  # not weak-referenceable / not hashable: a fresh wrapper
        return MemberLogitsFn(model)


def _members(logits):
    logits = tf.convert_to_tensor(logits)
    return logits[:, None, :] if logits.shape.rank == 2 else logits


def ensemble_ce(labels, logits):
    """§4.1 objective: per-example mean over members of CE, ``[B], [B, N, C] -> [B]``.

    Keyword signature ``(labels=, logits=)`` is what CleverHans 4 calls; [B, C] logits count as N=1.
    """
    return tf.reduce_mean(gal.member_cross_entropy(_members(logits), labels), axis=1)


def prediction_ce(labels, logits):
    """CE of the ensemble's prediction, per example: ``-log((1/N) sum_i softmax(Z_i)[y])``.

    ``[B], [B, N, C] -> [B]`` (N = 1: plain CE), computed as ``log N - logsumexp_i log_softmax(Z_i)[y]``
    (stable when every member is confident). Its input gradient is ``sum_i w_i grad CE_i`` with
    ``w_i = p_i(y) / sum_j p_j(y)``: members already fooled (small p_i(y)) stop steering the attack,
    whereas :func:`ensemble_ce` keeps weighting each member's unbounded CE equally.
    """
    logits = tf.cast(_members(logits), tf.float32)
    num_classes = tf.shape(logits)[-1]
    logp = tf.nn.log_softmax(logits, axis=-1)
    onehot = tf.one_hot(tf.cast(labels, tf.int64), num_classes, dtype=logp.dtype)[:, None, :]
    logp_y = tf.reduce_sum(logp * onehot, axis=-1)  # [B, N]
    n = tf.cast(tf.shape(logits)[1], logp.dtype)
    return tf.math.log(n) - tf.reduce_logsumexp(logp_y, axis=1)


def cw_margin_loss(labels, logits, confidence: float = CW_CONFIDENCE):
    """Untargeted CW hinge (Carlini & Wagner 2017, f6), per example: ``[B], [B, N, C] -> [B]``.

    Per member i: ``h_i = min(max_{j != y} Z_ij - Z_iy, kappa)``; returned: ``mean_i h_i``.
    Sign convention: the attack MAXIMISES it (it is minus CW's f6 = max(Z_y - max_{j!=y} Z_j,
    -kappa)); it is positive once a member misclassifies and saturates at margin kappa.

    Why the mean of member hinges (not the hinge of the mean logits): it is the same construction
    §4.1 uses for CE ("average loss of all the models in S"), and the per-member cap means a member
    already fooled by margin kappa stops contributing gradient while the others keep being pushed,
    rather than one member with large logits dominating an averaged-logit margin.
    """
    logits = _members(logits)
    num_classes = tf.shape(logits)[-1]
    onehot = tf.one_hot(tf.cast(labels, tf.int64), num_classes, on_value=True, off_value=False,
                        dtype=tf.bool)[:, None, :]
    onehot = tf.broadcast_to(onehot, tf.shape(logits))
    z_y = tf.reduce_sum(tf.where(onehot, logits, tf.zeros_like(logits)), axis=-1)
    z_other = tf.reduce_max(tf.where(onehot, tf.fill(tf.shape(logits), logits.dtype.min), logits),
                            axis=-1)
    hinge = tf.minimum(z_other - z_y, tf.cast(confidence, logits.dtype))
    return tf.reduce_mean(hinge, axis=1)


@functools.lru_cache(maxsize=None)
def cw_loss_fn(confidence: float = CW_CONFIDENCE) -> Callable:
    """One stable ``loss_fn(labels=, logits=)`` object per confidence (no CleverHans retracing)."""
    def loss_fn(labels, logits):
        return cw_margin_loss(labels, logits, confidence)
    loss_fn.__name__ = f"cw_margin_loss_k{confidence:g}"
    return loss_fn


LOSSES = ("ce", "prediction_ce", "cw")  # ensemble_ce (§4.1), prediction_ce, cw_margin_loss


def _loss_fn(loss: str, confidence: float = CW_CONFIDENCE) -> Callable:
    if loss == "ce":
        return ensemble_ce
    if loss == "prediction_ce":
        return prediction_ce
    if loss == "cw":
        return cw_loss_fn(float(confidence))
    raise ValueError(f"Unknown loss {loss!r}; valid: {', '.join(repr(v) for v in LOSSES)}.")


def input_gradient(logits_fn, loss_fn, x, y):
    """grad_x of sum_b loss_fn(y, logits_fn(x))_b (= per-example gradients; members in inference)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(labels=y, logits=logits_fn(x))
    return tape.gradient(loss, x)


# ----------------------------------------------------------------------------------------------
# Helpers.

def check_eps(eps) -> float:
    """eps must be a number in [0, 1] (the pixel scale of every input)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps={eps!r} is not a number; it must be in [0, 1] (pixel scale).") from None
    if not np.isfinite(value) or value < 0.0 or value > 1.0:
        raise ValueError(f"eps={eps!r} is outside [0, 1]; images are on the [0, 1] pixel scale "
                         f"(the paper uses 0.1/0.3 for MNIST, 0.03/0.09 for CIFAR-10).")
    return value


def check_attack(name: str) -> str:
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; valid names: {', '.join(ATTACKS)}.")
    return name


def seed_pair(seed):
    """int or [2] int tensor -> [2] int64 seed for the ``tf.random.stateless_*`` ops."""
    s = tf.convert_to_tensor(seed)
    if s.dtype != tf.int64:
        s = tf.cast(s, tf.int64)
    if s.shape.rank == 0:
        s = tf.stack([s, tf.constant(0, tf.int64)])
    return s


def project(x_adv, x, eps):
    """Back onto the L-inf eps-ball of the clean ``x`` and into [0, 1]."""
    return tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -eps, eps), CLIP_MIN, CLIP_MAX)


def random_start(x, eps, seed):
    """PGD start: ``clip(x + U(-eps, eps), 0, 1)`` with a stateless seed."""
    x = tf.convert_to_tensor(x, tf.float32)
    noise = tf.random.stateless_uniform(tf.shape(x), seed_pair(seed), -eps, eps, dtype=x.dtype)
    return tf.clip_by_value(x + noise, CLIP_MIN, CLIP_MAX)


def _prep(x, y):
    return tf.convert_to_tensor(x, tf.float32), tf.cast(tf.convert_to_tensor(y), tf.int64)


def check_nb_iter(nb_iter) -> int:
    """An iteration count: an integer >= 1."""
    try:
        value = int(nb_iter)
    except (TypeError, ValueError):
        raise ValueError(f"nb_iter={nb_iter!r} is not an integer; it must be >= 1.") from None
    if value != nb_iter or value < 1:
        raise ValueError(f"nb_iter={nb_iter!r} must be an integer >= 1.")
    return value


def _fgm_step(fn, x, y, step, loss_fn):
    """One CleverHans L-inf FGM step: clip(x + step * sign(grad), 0, 1)."""
    return fast_gradient_method(fn, x, step, np.inf, loss_fn=loss_fn, clip_min=CLIP_MIN,
                                clip_max=CLIP_MAX, y=y, targeted=False, sanity_checks=False)


# ----------------------------------------------------------------------------------------------
# Attacks.

def fgsm(logits_fn, x, y, eps, loss: str = "ce"):
    """FGSM, Eq 2: ``clip(x + eps * sign(grad_x mean_i CE_i), 0, 1)`` (CleverHans FGM).

    ``loss``: the objective (:data:`LOSSES`; default the §4.1 mean member CE).
    """
    eps = check_eps(eps)
    loss_fn = _loss_fn(loss)
    x, y = _prep(x, y)
    return _fgm_step(as_logits_fn(logits_fn), x, y, eps, loss_fn)


def rfgsm(logits_fn, x, y, eps, seed=0, variant: str = "paper", alpha: Optional[float] = None,
          rand_eps: Optional[float] = None, loss: str = "ce"):
    """R-FGSM: one random step, then an FGSM step; output projected to the eps-ball and [0, 1].

    * ``variant="paper"`` (default, §4.1: "applies FGSM after taking a single random step sampled
      from U(-eps, +eps)"): ``x1 = clip(x + U(-r, r), 0, 1)`` with ``r = rand_eps`` (default eps),
      ``x2 = x1 + eps * sign(grad J(x1))``, then projection onto the eps-ball of the clean ``x``.
    * ``variant="tramer"`` (Tramèr et al. 2017): ``x1 = clip(x + alpha * sign(N(0, I)), 0, 1)``,
      ``x2 = x1 + (eps - alpha) * sign(grad J(x1))`` (alpha default eps/2; already in the ball).

    ``rand_eps=0`` / ``alpha=0`` reduce it to FGSM. ``loss``: the objective (:data:`LOSSES`).
    """
    eps = check_eps(eps)
    loss_fn = _loss_fn(loss)
    x, y = _prep(x, y)
    fn = as_logits_fn(logits_fn)
    s = seed_pair(seed)
    if variant == "paper":
        r = eps if rand_eps is None else float(rand_eps)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"rand_eps={rand_eps} must be in [0, 1].")
        x1 = tf.clip_by_value(x + tf.random.stateless_uniform(tf.shape(x), s, -r, r, dtype=x.dtype),
                              CLIP_MIN, CLIP_MAX)
        step = eps
    elif variant == "tramer":
        a = eps / 2.0 if alpha is None else float(alpha)
        if not 0.0 <= a <= eps:
            raise ValueError(f"alpha={alpha} must be in [0, eps={eps}] for the Tramèr variant.")
        x1 = tf.clip_by_value(x + a * tf.sign(tf.random.stateless_normal(tf.shape(x), s, dtype=x.dtype)),
                              CLIP_MIN, CLIP_MAX)
        step = eps - a
    else:
        raise ValueError(f"Unknown R-FGSM variant {variant!r}; valid: 'paper', 'tramer'.")
    return project(_fgm_step(fn, x1, y, step, loss_fn), x, eps)


def pgd(logits_fn, x, y, eps, eps_iter, nb_iter, rand_init: bool = True, seed=0, loss: str = "ce",
        confidence: float = CW_CONFIDENCE):
    """L-inf PGD (Madry et al. 2017) maximising ``loss`` ('ce' = :func:`ensemble_ce`,
    'prediction_ce' = :func:`prediction_ce`, 'cw' = :func:`cw_margin_loss` with ``confidence``).

    ``x_0 = x`` (``rand_init=False``: exactly CleverHans ``projected_gradient_descent``, i.e.
    I-FGSM, Eqs 3-4) or ``random_start(x, eps, seed)``; then ``nb_iter`` times
    ``x_{t+1} = project(clip(x_t + eps_iter * sign(grad), 0, 1))`` with CleverHans FGM steps.
    """
    eps = check_eps(eps)
    eps_iter = float(eps_iter)
    if not 0.0 <= eps_iter <= eps:
        raise ValueError(f"eps_iter={eps_iter} must be in [0, eps={eps}].")
    nb_iter = check_nb_iter(nb_iter)
    loss_fn = _loss_fn(loss, confidence)
    x, y = _prep(x, y)
    fn = as_logits_fn(logits_fn)
    if not rand_init:
        return projected_gradient_descent(fn, x, eps, eps_iter, nb_iter, np.inf, loss_fn=loss_fn,
                                          clip_min=CLIP_MIN, clip_max=CLIP_MAX, y=y, targeted=False,
                                          rand_init=False, sanity_checks=False)
    adv = random_start(x, eps, seed)
    for _ in range(nb_iter):  # CleverHans' PGD loop, with our seeded start
        adv = project(_fgm_step(fn, adv, y, eps_iter, loss_fn), x, eps)
    return adv


def ifgsm(logits_fn, x, y, eps, nb_iter: int = NB_ITER, loss: str = "ce"):
    """I-FGSM, Eqs 3-4: k = nb_iter steps of eps/k from x, each projected (§4.1: k = 10).

    ``loss``: the objective (:data:`LOSSES`; default the §4.1 mean member CE).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    return pgd(logits_fn, x, y, eps, eps / nb_iter, nb_iter, rand_init=False, loss=loss)


def mifgsm(logits_fn, x, y, eps, nb_iter: int = NB_ITER, decay: float = MI_DECAY,
           loss: str = "ce"):
    """MI-FGSM (Dong et al. 2018), Eq 5 + Eq 4, on the ensemble-CE objective.

    ``g_{t+1} = mu * g_t + grad_t / ||grad_t||_1`` (L1 over each example's pixels; g_0 = 0),
    ``x_{t+1} = project(x_t + (eps/k) * sign(g_{t+1}))``, mu = ``decay`` = 1.0, k = ``nb_iter`` = 10.
    Same iterates as CleverHans' ``momentum_iterative_method`` (which divides by the *mean* |grad|,
    a per-example constant factor that sign() ignores), but with the ensemble loss (``loss``, one
    of :data:`LOSSES`).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    loss_fn = _loss_fn(loss)
    x, y = _prep(x, y)
    fn = as_logits_fn(logits_fn)
    step = eps / nb_iter
    axes = list(range(1, x.shape.rank))
    momentum = tf.zeros_like(x)
    adv = x
    for _ in range(nb_iter):
        grad = input_gradient(fn, loss_fn, adv, y)
        l1 = tf.reduce_sum(tf.abs(grad), axis=axes, keepdims=True)
        momentum = decay * momentum + grad / tf.maximum(l1, 1e-12)
        adv = project(adv + step * tf.sign(momentum), x, eps)
    return adv


def pgd_cw(logits_fn, x, y, eps, nb_iter: int = PGD_CW_ITER, confidence: float = CW_CONFIDENCE,
           eps_iter: Optional[float] = None, rand_init: bool = True, seed=0):
    """PGD-CW (§2.3, §4.1): PGD on the CW hinge with kappa = 50, 30 iterations.

    Paper-silent choices: step ``eps_iter = 2.5 * eps / nb_iter`` (Madry et al.'s rule: the walk
    can cross the ball 2.5 times) and a random start uniform in the eps-ball (Madry et al.).
    """
    eps = check_eps(eps)
    nb_iter = check_nb_iter(nb_iter)
    if eps_iter is None:
        eps_iter = min(PGD_CW_STEP_FACTOR * eps / nb_iter, eps)
    return pgd(logits_fn, x, y, eps, eps_iter, nb_iter, rand_init=rand_init, seed=seed, loss="cw",
               confidence=confidence)


_IMPLS = {"fgsm": fgsm, "rfgsm": rfgsm, "ifgsm": ifgsm, "mifgsm": mifgsm, "pgd_cw": pgd_cw}
_SEEDED = {"rfgsm", "pgd_cw"}


def check_options(name: str, options: dict) -> dict:
    """``options`` must be keyword arguments of attack ``name`` (a ``loss`` one of :data:`LOSSES`)."""
    impl = _IMPLS[check_attack(name)]
    allowed = set(inspect.signature(impl).parameters) - {"logits_fn", "x", "y", "eps", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for attack {name!r}; valid: "
                         f"{sorted(allowed) or 'none'}.")
    if "loss" in options:
        _loss_fn(options["loss"])
    return dict(options)


def _dry_run_logits(x):
    """A two-class 'model' of one pixel with a non-zero input gradient (for :func:`check_option_values`)."""
    s = tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))
    return tf.stack([s, -s], axis=-1)[:, None, :]


def check_option_values(name: str, eps, options: dict) -> dict:
    """``options`` (names checked by :func:`check_options`) are also valid *values* for attack
    ``name`` at ``eps``: the attack itself runs once on a one-pixel image of a two-class linear
    model, so a bad value (an unknown R-FGSM variant, ``alpha > eps``, ``nb_iter < 1``, a string
    for a number) fails before any real work, with the attack's own message -- no rule is written
    twice. Returns the options."""
    options = check_options(name, options)
    if not options:
        return options
    x = tf.fill([1, 1, 1, 1], 0.5)
    y = tf.zeros([1], tf.int64)
    kwargs = dict(options, seed=0) if name in _SEEDED else dict(options)
    try:
        _IMPLS[name](_dry_run_logits, x, y, eps, **kwargs)
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
            self._fn = tf.function(self._body, input_signature=sig)
        elif tuple(x.shape[1:]) != self._image_shape:
            raise ValueError(f"{self.name}: images of shape {tuple(x.shape[1:])}, but this attack was "
                             f"compiled for {self._image_shape}.")
        return self._fn(x, y, seed_pair(seed))

    @property
    def tracing_count(self) -> int:
        return 0 if self._fn is None else self._fn.experimental_get_tracing_count()


def make_attack(name: str, logits_fn, eps, **options) -> Attack:
    """Compiled attack ``(x, y, seed) -> x_adv``; unknown name / eps outside [0, 1] -> ValueError.

    ``options`` are the keyword arguments of the attack function (e.g. ``nb_iter``, ``variant``).
    """
    return Attack(name, logits_fn, eps, **options)

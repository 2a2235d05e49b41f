"""The peer methods' hyper-parameters (ADP, TRS, DVERGE) as validated frozen dataclasses, free of
TensorFlow: the report reads a run's TRS radius schedule from here without loading the maths."""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import Optional


def _range_text(low, high, low_open, high_open) -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"


def check_number(owner: str, name: str, value, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False) -> None:
    """Raises ValueError naming ``owner.name`` and the valid range unless ``value`` is a finite real
    (or integer) number inside it. Tensors/Variables pass unchecked (values that change at run time,
    e.g. a schedule fed to a compiled step, cannot be checked when tracing)."""
    tf = sys.modules.get("tensorflow")  # no TensorFlow is imported here (the report reads configs)
    if tf is not None and isinstance(value, (tf.Tensor, tf.Variable)):
        return
    kind = "an integer" if integer else "a real number"
    valid = _range_text(low, high, low_open, high_open)
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_type):
        raise ValueError(f"{owner}: {name} must be {kind} in {valid}, got {value!r}.")
    v = float(value)
    if (not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low)))
            or (high is not None and (v > high or (high_open and v == high)))):
        raise ValueError(f"{owner}: {name}={value!r} is outside the valid range {valid}.")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}.")


LOG_OFFSET = 1e-20  # authors' utils.py `log_offset`
DET_OFFSET = 1e-6  # authors' utils.py `det_offset` (delta)


@dataclasses.dataclass(frozen=True)
class ADPConfig:
    """ADP hyper-parameters (defaults: the paper's ADP_{2,0.5}; offsets as in the authors' code)."""

    alpha: float = 2.0  # weight of the ensemble entropy H(F)
    beta: float = 0.5  # weight of log(ED + delta)
    log_offset: float = LOG_OFFSET  # inside log() of the entropy
    det_offset: float = DET_OFFSET  # delta, added to the Gram matrix diagonal

    def validate(self) -> "ADPConfig":
        check_number("adp", "alpha", self.alpha, low=0.0)
        check_number("adp", "beta", self.beta, low=0.0)
        check_number("adp", "log_offset", self.log_offset, low=0.0, high=1e-3, low_open=True)
        check_number("adp", "det_offset", self.det_offset, low=0.0, high=1.0, low_open=True)
        return self

    def objective_kwargs(self, epoch: int = 0, epochs: int = 1) -> dict:
        """Keyword arguments for ``objective`` (ADP has no schedule; epoch/epochs are ignored)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TRSConfig:
    """TRS hyper-parameters (defaults from the authors' script_train.py, see the module docstring)."""

    coeff: float = 2.0  # weight of the |cosine| term (lambda_a = scale * coeff)
    lamda: float = 2.0  # weight of the smoothness term (lambda_b = scale * lamda)
    scale: float = 5.0  # common factor of both terms
    grad_batch_size: int = 128  # B of their batch-mean input gradients (fixed, see module docstring)
    plus_adv: bool = True  # smoothness also on PGD-perturbed inputs (second half of the batch)
    init_eps: float = 0.1  # PGD radius at epoch 0 (L_inf, [0, 1] pixel scale)
    adv_eps: float = 0.2  # PGD radius reached at the last epoch
    pgd_steps: int = 6  # PGD steps (step size eps / 3)

    def validate(self) -> "TRSConfig":
        for name in ("coeff", "lamda", "scale"):
            check_number("trs", name, getattr(self, name), low=0.0)
        check_number("trs", "grad_batch_size", self.grad_batch_size, low=1, integer=True)
        check_bool("trs", "plus_adv", self.plus_adv)
        check_number("trs", "init_eps", self.init_eps, low=0.0, high=1.0)
        check_number("trs", "adv_eps", self.adv_eps, low=0.0, high=1.0)
        check_number("trs", "pgd_steps", self.pgd_steps, low=1, integer=True)
        return self

    def smooth_eps(self, epoch: int, epochs: int) -> float:
        """PGD radius of epoch ``epoch`` (0-based) of ``epochs``; 0.0 without ``plus_adv``."""
        if not self.plus_adv:
            return 0.0
        check_number("trs", "epochs", epochs, low=1, integer=True)
        check_number("trs", "epoch", epoch, low=0, high=epochs - 1, integer=True)
        return self.init_eps + (self.adv_eps - self.init_eps) * epoch / epochs

    def objective_kwargs(self, epoch: int = 0, epochs: int = 1) -> dict:
        """Keyword arguments for ``objective`` at epoch ``epoch`` (add ``seed`` when plus_adv)."""
        return {"coeff": self.coeff, "lamda": self.lamda, "scale": self.scale,
                "grad_batch_size": self.grad_batch_size, "smooth_eps": self.smooth_eps(epoch, epochs),
                "pgd_steps": self.pgd_steps}


@dataclasses.dataclass(frozen=True)
class DVERGEConfig:
    """DVERGE hyper-parameters (defaults: the authors' CIFAR-10 arguments, see the module docstring)."""

    eps: float = 0.07  # L_inf radius of the distillation around the source image
    step_size: float = 0.007  # sign-step size
    steps: int = 10  # distillation steps
    layer: Optional[int] = None  # fixed 1-based feature layer; None = random each epoch
    rand_start: bool = False  # uniform random start in the eps-ball
    momentum: bool = True  # L1-normalised gradient accumulation (their default)
    mu: float = 1.0  # momentum decay
    include_clean: bool = False  # their --plus-adv form: coeff * cross + CE on x_clean
    coeff: float = 1.0  # weight of the cross-training term

    def validate(self) -> "DVERGEConfig":
        check_number("dverge", "eps", self.eps, low=0.0, high=1.0)
        check_number("dverge", "step_size", self.step_size, low=0.0, high=1.0, low_open=True)
        check_number("dverge", "steps", self.steps, low=1, integer=True)
        if self.layer is not None:
            check_number("dverge", "layer", self.layer, low=1, integer=True)
        check_bool("dverge", "rand_start", self.rand_start)
        check_bool("dverge", "momentum", self.momentum)
        check_number("dverge", "mu", self.mu, low=0.0)
        check_bool("dverge", "include_clean", self.include_clean)
        check_number("dverge", "coeff", self.coeff, low=0.0)
        return self

    def pick_layer(self, member, epoch: int, seed: int = 0) -> int:
        """The distillation layer of ``epoch``: ``layer`` if fixed, else a uniform draw from
        ``distill_layer_choices(member)``, reproducible from (seed, epoch)."""
        import numpy as np

        from tf_divtrain.methods.features import distill_layer_choices, feature_model

        if self.layer is not None:
            feature_model(member, self.layer)  # range check against this model
            return self.layer
        choices = distill_layer_choices(member)
        return int(np.random.default_rng([int(seed), int(epoch)]).choice(choices))

    def distill_kwargs(self) -> dict:
        """Keyword arguments for ``distill`` / ``distill_members`` (add ``seed`` if rand_start)."""
        return {"eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "rand_start": self.rand_start, "momentum": self.momentum, "mu": self.mu}

    def objective_kwargs(self, epoch: int = 0, epochs: int = 1) -> dict:
        """Keyword arguments for ``objective`` (no schedule; epoch/epochs are ignored)."""
        return {"include_clean": self.include_clean, "coeff": self.coeff}

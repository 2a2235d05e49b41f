"""The peers' ensemble-diversity methods next to GAL: ADP, TRS and DVERGE (issue 14, the maths).

Every method has a frozen config dataclass (defaults from the authors' code, ``validate()`` raising
ValueError that names the field and its valid range) and a per-example objective with the output
convention of ``tf_divtrain.training.per_example_objective``: a dict with ``loss`` [B] (the caller sums
and divides by the global batch), ``ce`` [B, N], ``logits`` [B, N, C] and method metrics of shape [B].
Member outputs are cast to float32 (float64 kept) before any loss maths, so mixed_bfloat16 is safe.

* ``adp.objective(members, x, y, training, **hparams)``   -- metrics adp_entropy, adp_logdet
* ``trs.objective(members, x, y, training, **hparams)``   -- metrics trs_cos, trs_smooth
* ``dverge.objective(members, x_distilled, y, training, include_clean, x_clean, coeff)`` -- metric
  dverge_cross_ce; the distilled inputs come from ``dverge.distill_members`` (see that module).

``config.objective_kwargs(epoch, epochs)`` gives the hyper-parameter keywords of the objective for an
epoch (TRS ramps its PGD radius per epoch; DVERGE picks its layer per epoch with ``pick_layer``).

``config_from_string(name, "alpha=2,beta=0.5")`` parses the CLI's ``--method_params`` into a validated
config (same errors as ``make_config``). ``tf_divtrain.methods.objective.MethodObjective`` wraps a
method as a training-step objective (``tf_divtrain.step`` protocol) for the Trainer's modes
``adp`` / ``trs`` / ``dverge``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Tuple

from tf_divtrain.methods.configs import ADPConfig, DVERGEConfig, TRSConfig

_MATHS = ("adp", "trs", "dverge")  # the modules with each method's TensorFlow maths


def __getattr__(name):
    """``methods.adp`` etc. import the maths on first use: the registry and the configs load no
    TensorFlow (the report parses a run's method_params through them)."""
    if name in _MATHS:
        return importlib.import_module(f"tf_divtrain.methods.{name}")
    raise AttributeError(f"module 'tf_divtrain.methods' has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    defaults: object  # a validated frozen config dataclass instance
    metrics: Tuple[str, ...]  # the method's [B] metrics in the objective's dict
    paper: str
    # Inner tapes (input gradients, PGD, feature distillation) that are not loss-scaled: under
    # mixed_float16 their small gradients could flush to zero, so that precision is refused.
    float16_unscaled: str = ""

    @property
    def objective(self) -> Callable:
        return importlib.import_module(f"tf_divtrain.methods.{self.name}").objective


METHODS = {
    "adp": Method("adp", ADPConfig().validate(), ("adp_entropy", "adp_logdet"),
                  "Pang et al. 2019, Improving Adversarial Robustness via Promoting Ensemble Diversity"),
    "trs": Method("trs", TRSConfig().validate(), ("trs_cos", "trs_smooth"),
                  "Yang et al. 2021, TRS: Transferability Reduced Ensemble via Promoting Gradient "
                  "Diversity and Model Smoothness",
                  "TRS's input-gradient tapes (|cos| and smoothness terms) and its PGD"),
    "dverge": Method("dverge", DVERGEConfig().validate(), ("dverge_cross_ce",),
                     "Yang et al. 2020, DVERGE: Diversifying Vulnerabilities for Enhanced Robust "
                     "Generation of Ensembles", "DVERGE's feature-distillation tapes"),
}


def get_method(name: str) -> Method:
    """The registry entry of ``name``; ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"Unknown diversity method {name!r}; valid: {', '.join(METHODS)}.")
    return METHODS[name]


def make_config(name: str, **overrides):
    """``name``'s default config with ``overrides`` applied, validated. Unknown fields -> ValueError."""
    defaults = get_method(name).defaults
    fields = [f.name for f in dataclasses.fields(defaults)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown hyper-parameter(s) {', '.join(unknown)}; valid: {', '.join(fields)}.")
    return dataclasses.replace(defaults, **overrides).validate()


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(kind: str, text: str):
    """``text`` as the field's type; on failure the raw string is returned, so ``validate()`` names
    the field, the expected type and the valid range (one source of error messages)."""
    low = text.strip().lower()
    if kind.startswith("Optional[") and low in ("none", ""):
        return None
    kind = kind[len("Optional["):-1] if kind.startswith("Optional[") else kind
    try:
        if kind == "bool":
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            return text
        if kind == "int":
            try:
                return int(low)
            except ValueError:
                return float(low)  # 1.5 -> "must be an integer" from validate()
        if kind == "float":
            return float(low)
    except ValueError:
        return text
    return text


def parse_params(name: str, text: str) -> dict:
    """``"alpha=2,beta=0.5"`` -> ``{"alpha": 2.0, "beta": 0.5}`` typed by ``name``'s config fields
    (bools: true/false/1/0/yes/no; ``layer=none``). Unknown names are kept (``make_config`` rejects
    them); malformed items and repeated names raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(get_method(name).defaults)}
    out = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{name}: method_params item {item!r} is not name=value; write e.g. "
                             f"--method_params={next(iter(fields))}=<value>,... (valid names: "
                             f"{', '.join(fields)}).")
        if key in out:
            raise ValueError(f"{name}: method_params sets {key!r} twice.")
        out[key] = _convert(str(fields[key].type), value) if key in fields else value
    return out


def config_from_string(name: str, text: str):
    """The validated config of method ``name`` from a ``--method_params`` string (empty = defaults)."""
    return make_config(name, **parse_params(name, text))

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
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Tuple

from tf_divtrain.methods import adp, dverge, trs


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    defaults: object  # a validated frozen config dataclass instance
    objective: Callable
    metrics: Tuple[str, ...]  # the method's [B] metrics in the objective's dict
    paper: str


METHODS = {
    "adp": Method("adp", adp.ADPConfig().validate(), adp.objective, ("adp_entropy", "adp_logdet"),
                  "Pang et al. 2019, Improving Adversarial Robustness via Promoting Ensemble Diversity"),
    "trs": Method("trs", trs.TRSConfig().validate(), trs.objective, ("trs_cos", "trs_smooth"),
                  "Yang et al. 2021, TRS: Transferability Reduced Ensemble via Promoting Gradient "
                  "Diversity and Model Smoothness"),
    "dverge": Method("dverge", dverge.DVERGEConfig().validate(), dverge.objective, ("dverge_cross_ce",),
                     "Yang et al. 2020, DVERGE: Diversifying Vulnerabilities for Enhanced Robust "
                     "Generation of Ensembles"),
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

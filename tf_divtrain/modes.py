"""The one registry of training modes: what each mode trains on and which objective it minimises.

A mode is its batch sources (D' = ``aug``, D_noise = ``noise``, D_adv = ``adv``, in batch order;
paper §4.1 and Ensemble Adversarial Training), its objective (mean member CE; Eq 9 = CE + λ GAL;
or a peer method from :mod:`tf_divtrain.methods`), the fewest members it needs, and the precisions
it refuses. The peer methods are entries of ``tf_divtrain.methods.METHODS``; each becomes a mode
here, so a new method is one file in ``tf_divtrain/methods/`` and one line in that registry. No
TensorFlow is loaded by this module: objectives are built on demand by :func:`objective`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from tf_divtrain import methods as methods_lib

OBJECTIVES = ("ce", "gal", "method")


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    sources: Tuple[str, ...]       # batch parts in order: aug (D'), noise (D_noise), adv (D_adv)
    objective: str                 # ce | gal | method
    help: str
    min_members: int = 1
    float16_unscaled: str = ""     # why mixed_float16 is refused ("" = it is not)

    @property
    def gal(self) -> bool:
        return self.objective == "gal"

    @property
    def adv(self) -> bool:
        """D_adv (FGSM on a static pre-trained model) is part of each batch: needs --static_model."""
        return "adv" in self.sources

    @property
    def method(self) -> bool:
        return self.objective == "method"


_CORE = (
    Mode("baseline", ("aug",), "ce", "T_Base: mean member CE on D' (paper §4.1)."),
    Mode("div", ("aug", "noise"), "gal", "T_Div: Eq 9 (CE + λ GAL) on {D', D_noise}.", min_members=2),
    Mode("ens_adv", ("aug", "adv"), "ce", "T_Ens: Ensemble Adversarial Training, CE on {D', D_adv}."),
    Mode("ens_adv_div", ("aug", "noise", "adv"), "gal", "T_Ens+Div: Eq 9 on {D', D_noise, D_adv}.",
         min_members=2),
)
MODES: Dict[str, Mode] = {m.name: m for m in _CORE}
MODES.update({name: Mode(name, ("aug",), "method", f"{m.paper} (tf_divtrain.methods.{name}).",
                         min_members=2, float16_unscaled=m.float16_unscaled)
              for name, m in methods_lib.METHODS.items()})


def get(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"Unknown mode {name!r}; valid: {', '.join(MODES)}.")
    return MODES[name]


def help_text() -> str:
    """The train CLI's ``--mode`` help: every mode with what it trains."""
    return "Training mode: " + " ".join(f"{m.name} = {m.help}" for m in MODES.values())


def objective(name: str, gal_lambda: float = 0.5, method_config=None, *, seed: int = 0,
              step=None):
    """The step objective of mode ``name`` (a ``tf_divtrain.step.Objective``): Eq 9 for GAL modes, a
    ``MethodObjective`` for the peer methods (``seed`` and the global-step variable ``step`` seed
    their per-step randomness), mean member CE otherwise."""
    from tf_divtrain import step as step_lib

    mode = get(name)
    if mode.gal:
        return step_lib.DiversityObjective(gal_lambda)
    if mode.method:
        from tf_divtrain.methods.objective import MethodObjective

        return MethodObjective(name, method_config, seed=seed, step=step)
    return step_lib.CrossEntropyObjective()


def check_precision(name: str, precision: str) -> Optional[str]:
    """Why ``precision`` is refused for mode ``name``, or None."""
    mode = get(name)
    if precision == "mixed_float16" and mode.float16_unscaled:
        return (f"mode={name} does not support precision=mixed_float16: {mode.float16_unscaled} are "
                f"not loss-scaled, so float16 gradients could flush to zero. Use "
                f"--precision=mixed_bfloat16 (or float32).")
    return None

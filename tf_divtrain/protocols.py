"""The package's contracts (import-light, typing only): ``EnsembleLike``, what attacks, evaluations
and analyses accept; ``Objective``, what a training step minimises."""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Sequence, runtime_checkable


@runtime_checkable
class EnsembleLike(Protocol):
    """An ensemble of N classifiers seen through its members' logits.

    ``member_logits(x) -> [B, N, C]`` float32 logits (inference mode by default) and
    ``probabilities(x) -> [B, C]``, the average of the members' softmax (the ensemble's
    prediction, paper §2). Implemented by ``models.Ensemble`` (the CLI's Keras members),
    ``export.LoadedEnsemble`` (a SavedModel export) and ``DiversityEnsemble`` (user models), so
    ``make_attack``, ``analysis.*`` and ``evaluation`` work on any of them. Attacks also accept a
    bare function ``x -> [B, N, C]`` (or ``[B, C]`` for one model).
    """

    def member_logits(self, x: Any, training: bool = False) -> Any: ...

    def probabilities(self, x: Any, training: bool = False) -> Any: ...


@runtime_checkable
class Objective(Protocol):
    """A training objective, the injection point of ``step.apply_step`` (Eq 9 and the methods).

    ``objective(members, x, y, training, loss_scale=None)`` returns per-example tensors: at least
    ``"loss"`` [B] (what is minimised, averaged over the global batch), ``"ce"`` [B, N] and
    ``"logits"`` [B, N, C] (float32, from the same forward pass); optionally ``"gal"`` and
    ``"coherence"`` [B]. ``loss_scale`` comes only under a mixed_float16 ``LossScaleOptimizer``
    (an objective with an inner input-gradient tape scales that inner loss by it); an objective
    may omit the parameter. Implemented by ``step.CrossEntropyObjective``,
    ``step.DiversityObjective`` and the methods' objectives (ADP, TRS, DVERGE).
    """

    def __call__(self, members: Sequence[Any], x: Any, y: Any, training: bool = True,
                 loss_scale: Optional[Any] = None) -> Dict[str, Any]: ...

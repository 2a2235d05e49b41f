"""``EnsembleLike``: what attacks, evaluations and analyses accept (import-light, typing only)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


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

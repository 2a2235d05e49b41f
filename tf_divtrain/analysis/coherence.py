"""Coherence (Eq 7) of the members' input gradients, per example (paper §3.2, Fig 4)."""

from __future__ import annotations

import numpy as np

from tf_divtrain import batching
from tf_divtrain import gal

from tf_divtrain.analysis.common import (AnalysisError, _compiled, num_members)


# ----------------------------------------------------------------------------------------------
# Coherence.

def coherence_values(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Eq 7 per example: max over member pairs of the cosine of their input gradients, ``[B]``."""
    if num_members(ensemble) < 2:
        raise AnalysisError("Coherence needs an ensemble of at least 2 members.")
    c = _compiled(ensemble)
    return batching.map_batches(lambda xb, yb: gal.coherence(c.member_grads(xb, yb)), x, y,
                                batch_size=batch_size)

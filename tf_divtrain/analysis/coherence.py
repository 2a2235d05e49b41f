"""Coherence (Eq 7) of the members' input gradients, per example (paper §3.2, Fig 4)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_divtrain import gal

from tf_divtrain.analysis.common import (AnalysisError, _compiled, num_members)


# ----------------------------------------------------------------------------------------------
# Coherence.

def coherence_values(ensemble, x: np.ndarray, y: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """Eq 7 per example: max over member pairs of the cosine of their input gradients, ``[B]``."""
    if num_members(ensemble) < 2:
        raise AnalysisError("Coherence needs an ensemble of at least 2 members.")
    c = _compiled(ensemble)
    out = []
    for i in range(0, len(x), batch_size):
        g = c.member_grads(tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]))
        out.append(gal.coherence(g).numpy())
    return np.concatenate(out, 0)

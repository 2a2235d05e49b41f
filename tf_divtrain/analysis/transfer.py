"""Transferability inside an ensemble: PGD on member i, accuracy of member j (paper §3.1)."""

from __future__ import annotations

import numpy as np

from tf_divtrain.analysis.common import (
    PGD_STEP_FACTOR, _attack_all, _compiled, _nan_to_none, _pgd_fn, check_eps)
from tf_divtrain.attacks.core import as_logits_fn


def transfer_matrix(ensemble, x: np.ndarray, y: np.ndarray, eps: float, nb_iter: int = 20,
                    batch_size: int = 100, seed: int = 0) -> dict:
    """Transferability of PGD examples between the members of one ensemble.

    ``matrix[i][j]`` = success rate on member j of adversarial examples crafted on member i alone
    (PGD with random start on member i's CE, ``nb_iter`` steps of ``2.5 eps / nb_iter``), i.e. the
    fraction misclassified by member j, measured over the examples that BOTH member i and member j
    classify correctly when clean (``counts[i][j]`` of them). The diagonal is each member's
    white-box success rate. ``mean_off_diagonal`` averages the off-diagonal entries.
    """
    eps = check_eps(eps, "transfer eps")
    c = _compiled(ensemble)
    n = c.n
    _, clean = c.predict(x, batch_size)  # [B, N]
    ok = clean == y[:, None]
    matrix = np.full((n, n), np.nan)
    counts = np.zeros((n, n), int)
    members = getattr(ensemble, "members", None)
    if members is None:  # the straightforward path: the whole ensemble, member i's logits kept
        fn = _pgd_fn(c.logits_fn, eps, nb_iter, x.shape[1:])
    for i in range(n):
        if members is None:
            adv = _attack_all(fn, x, y, batch_size, seed + 1000 * i, member=i)
        else:  # member i alone (1/N of the work; the same examples, tested)
            own = _pgd_fn(as_logits_fn(members[i]), eps, nb_iter, x.shape[1:], members_only=True)
            adv = _attack_all(own, x, y, batch_size, seed + 1000 * i, member=0)
        _, pred = c.predict(adv, batch_size)
        for j in range(n):
            both = ok[:, i] & ok[:, j]
            counts[i, j] = int(both.sum())
            if counts[i, j]:
                matrix[i, j] = float(np.mean(pred[both, j] != y[both]))
    off = matrix[~np.eye(n, dtype=bool)]
    off = off[np.isfinite(off)]
    return {"eps": eps, "nb_iter": int(nb_iter), "eps_iter": min(PGD_STEP_FACTOR * eps / nb_iter, eps),
            "matrix": _nan_to_none(matrix), "counts": counts.tolist(),
            "mean_off_diagonal": float(off.mean()) if off.size else None,
            "definition": "matrix[i][j] = fraction of examples misclassified by member j after PGD "
                          "on member i's CE, over examples both i and j classify correctly clean"}

"""Scoring: every target's per-example correctness on the clean and the adversarial examples of a
surrogate, with robust-to-all per eps (paper §4.1; DVERGE / TRS's robust-to-all)."""

from __future__ import annotations


import numpy as np

from tf_divtrain import inference
from tf_divtrain import stats
from tf_divtrain.evaluation.cache import craft_cached
from tf_divtrain.evaluation.validate import surrogate_row_label
from tf_divtrain.results import eps_key, robust_to_all



def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of argmax(average member softmax) == y (the ensemble's prediction, §4.1)."""
    return float(np.mean(correct_mask(model, x, y, batch_size)))


def correct_mask(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Per-example bool: argmax(average member softmax) == y (``inference.correct_mask``, one
    compiled logits function per model). ``mean()`` is :func:`accuracy`."""
    return inference.correct_mask(model, x, y, batch_size)



def _surrogate_block(label, surrogate, sur_id, target_models, target_clean, x, y, dataset,
                     attacks, eps, cache_dir, batch_size, seed, progress, attack_options,
                     precision, strategy=None) -> dict:
    """Crafts every (attack, eps) on one surrogate and scores every target plus the surrogate
    itself (white-box row). Returns ``{"label", "surrogate", "rows", "crafting"}``.
    ``strategy``: the ``tf.distribute`` strategy that crafts (``cache.craft_cached``); None = one
    process. Scoring runs in this process (every worker scores every example)."""
    clean = [target_clean[t_label] for t_label, _ in target_models]
    clean.append(correct_mask(surrogate, x, y, batch_size))
    rows = [{"label": t_label, "role": "target", "path": m.path, "metadata": m.metadata,
             "attacks": {a: {} for a in attacks}}
            for t_label, m in target_models]
    rows.append({"label": surrogate_row_label(label), "role": "surrogate", "path": surrogate.path,
                 "metadata": surrogate.metadata, "attacks": {a: {} for a in attacks}})
    for row, c in zip(rows, clean):
        row["clean"] = float(np.mean(c))
        row["per_example"] = {"n": int(len(c)), "encoding": stats.ENCODING,
                              "clean": stats.encode_mask(c), "attacks": {a: {} for a in attacks}}
    crafting = {a: {} for a in attacks}
    models_by_row = [m for _, m in target_models] + [surrogate]
    correct = [{} for _ in rows]  # per row: (attack, eps_key) -> per-example bool
    for a in attacks:
        for e in eps:
            options = dict(attack_options.get(a) or {})
            if precision != "float32":  # part of the cache key, not passed to the attack
                options["_crafting_precision"] = precision
            x_adv, info = craft_cached(surrogate, sur_id, dataset, a, e, x, y, cache_dir, batch_size,
                                       seed, progress, options or None, strategy=strategy)
            crafting[a][eps_key(e)] = {k: info.get(k) for k in
                                       ("seconds", "images_per_sec", "cached", "path")}
            for row, m, c in zip(rows, models_by_row, correct):
                c[(a, eps_key(e))] = correct_mask(m, x_adv, y, batch_size)
                row["attacks"][a][eps_key(e)] = float(np.mean(c[(a, eps_key(e))]))
                row["per_example"]["attacks"][a][eps_key(e)] = stats.encode_mask(c[(a, eps_key(e))])
    for row, c in zip(rows, correct):
        row["robust_to_all"] = robust_to_all(c)
    return {"label": label,
            "surrogate": {"label": label, "path": surrogate.path, "fingerprint": sur_id,
                          "metadata": surrogate.metadata},
            "rows": rows, "crafting": crafting}



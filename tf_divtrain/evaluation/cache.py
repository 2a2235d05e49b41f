"""Adversarial examples crafted once per (surrogate, attack, eps, subset, seed) and cached on disk:
``<cache_dir>/<attack>_eps<eps>_n<N>_<key>.npy`` plus a JSON sidecar written last, both atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import batching
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import io_utils
from tf_divtrain.export import fingerprint  # noqa: F401  (re-exported: the cache's key)
from tf_divtrain.evaluation import distributed
from tf_divtrain.evaluation.validate import attack_kwargs


log = logging.getLogger("tf_divtrain.evaluation")
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Crafting with an on-disk cache.

def cache_path(cache_dir: str, surrogate_id: str, dataset: str, attack: str, eps: float,
               num_examples: int, seed: int, batch_size: int, options: Optional[dict] = None) -> str:
    key = json.dumps({"v": CACHE_VERSION, "surrogate": surrogate_id, "dataset": dataset,
                      "attack": attack, "eps": float(eps), "n": int(num_examples), "seed": int(seed),
                      "batch_size": int(batch_size), "options": options or {}}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{attack}_eps{eps:g}_n{num_examples}_{digest}.npy")


def _atomic_save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            io_utils.fault_point("write:" + os.path.basename(path), tmp)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise io_utils.output_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def craft(attack_fn, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
          desc: str = "", progress: bool = True, strategy=None) -> np.ndarray:
    """Runs ``attack_fn(x_b, y_b, [seed, b])`` over batches (tqdm bar), returns float32 x_adv.

    ``strategy``: a ``tf.distribute`` strategy whose replicas craft one batch each per step
    (:mod:`tf_divtrain.evaluation.distributed`; the same examples, bitwise); None = this loop."""
    if strategy is not None:
        return distributed.craft_distributed(attack_fn, x, y, batch_size, seed, strategy, desc,
                                             progress)
    out = batching.map_batches(lambda xb, yb, b: attack_fn(xb, yb, tf.constant([seed, b], tf.int64)),
                               x, y, batch_size=batch_size, with_index=True, progress=progress,
                               desc=desc)
    return out.astype(np.float32, copy=False)


def craft_cached(surrogate, surrogate_id: str, dataset: str, attack: str, eps: float,
                 x: np.ndarray, y: np.ndarray, cache_dir: str, batch_size: int = 250, seed: int = 0,
                 progress: bool = True, options: Optional[dict] = None,
                 strategy=None) -> Tuple[np.ndarray, dict]:
    """x_adv for (surrogate, attack, eps, first len(x) test images, seed), from cache if present.

    Returns ``(x_adv, info)`` with info = {seconds, images_per_sec, cached, path}; seconds and
    images/s describe the original crafting run (stored next to the array as ``.json``) and
    include the one-off ``tf.function`` trace.

    ``strategy`` (``evaluate --strategy``; None = one process): the replicas craft
    (:func:`craft`); a cache hit counts only if every worker has it (otherwise all craft, since
    every worker must take part in every step), and only the chief writes the entry.
    """
    options = dict(options or {})
    path = cache_path(cache_dir, surrogate_id, dataset, attack, eps, len(x), seed, batch_size, options)
    meta_path = path[:-4] + ".json"
    hit = _read_entry(path, meta_path, x.shape)
    if strategy is not None:
        hit = hit if distributed.all_workers_agree(strategy, hit is not None) else None
    if hit is not None:
        return hit
    name = options.get("_attack", attack)  # a field-protocol set names its attack (issue 23)
    attack_fn = attacks_lib.make_attack(name, surrogate, eps, **attack_kwargs(options))
    t0 = time.perf_counter()
    x_adv = craft(attack_fn, x, y, batch_size, seed,
                  desc=f"{attacks_lib.DISPLAY_NAMES[name]} eps={eps:g}", progress=progress,
                  strategy=strategy)
    seconds = time.perf_counter() - t0  # includes the one-off trace
    info = {"seconds": seconds, "images_per_sec": len(x) / max(seconds, 1e-9),
            "num_examples": len(x), "batch_size": batch_size}
    if strategy is None or distribute_lib.is_chief(strategy):  # the other workers write nothing
        _atomic_save(path, x_adv)
        io_utils.atomic_write_json(meta_path, info)
    info.update(cached=False, path=path)
    return x_adv, info


def _read_entry(path: str, meta_path: str, shape) -> Optional[Tuple[np.ndarray, dict]]:
    """``(x_adv, info)`` of a complete cache entry of ``shape`` float32, else None."""
    if os.path.isfile(path):
        # An entry is complete when both the array and its sidecar (written last) read back;
        # anything less (a kill between the two, a damaged file) is recomputed -- crafting is
        # seeded, so the array comes out the same.
        try:
            arr = np.load(path, allow_pickle=False)
            info = io_utils.read_json(meta_path, "adversarial-cache entry", "evaluate (the entry "
                                      "is recomputed)", required=("seconds",))
            if arr.shape == shape and arr.dtype == np.float32:
                info.update(cached=True, path=path)
                return arr, info
            log.warning("cache entry %s holds %s %s, expected %s float32; recomputing it",
                            path, arr.shape, arr.dtype, shape)
        except (OSError, ValueError) as e:  # unreadable / truncated / no sidecar: recompute
            log.warning("cache entry %s is incomplete (%s); recomputing it", path,
                            str(e).splitlines()[0][:300])
    return None



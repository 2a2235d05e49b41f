"""Batched inference over NumPy arrays: the one loop every evaluation, attack and analysis uses.

``map_batches(fn, x, y, batch_size=...)`` calls ``fn`` on consecutive slices of equal-length arrays
(as float32 / int tensors) and concatenates what it returns (one tensor, or a tuple of them) along
the first axis as NumPy. ``with_index=True`` also passes the batch number (attacks derive their
per-batch random seed from it, so a result does not depend on how many batches ran before).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


def map_batches(fn: Callable, *arrays: np.ndarray, batch_size: int, with_index: bool = False,
                progress: bool = False, desc: str = ""):
    """``concat_b fn(arrays[0][b], arrays[1][b], ... [, b])`` over batches ``b`` of ``batch_size``."""
    if not arrays:
        raise ValueError("map_batches needs at least one array.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"map_batches: arrays of different lengths {[len(a) for a in arrays]}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", total=len(range(0, n, batch_size)))
    outs = []
    for b, i in enumerate(starts):
        args = [tf.convert_to_tensor(a[i:i + batch_size]) for a in arrays]
        if with_index:
            args.append(b)
        outs.append(fn(*args))
    if not outs:
        raise ValueError("map_batches: empty input.")
    if isinstance(outs[0], (tuple, list)):
        return tuple(np.concatenate([np.asarray(o[k]) for o in outs], axis=0)
                     for k in range(len(outs[0])))
    return np.concatenate([np.asarray(o) for o in outs], axis=0)


__all__ = ["map_batches"]

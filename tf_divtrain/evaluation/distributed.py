"""Crafting under a ``tf.distribute`` strategy (``evaluate --strategy=mirrored|multi_worker``,
issue 23): the same adversarial examples as one process, faster on several devices or machines.

**What a replica gets.** The unit of work is one *crafting batch*: rows ``[b * B, (b + 1) * B)`` of
the test subset with seed ``[seed, b]`` (``B`` = ``--batch_size``), exactly the batches and seeds of
the single-process loop (:func:`tf_divtrain.evaluation.cache.craft`). One distributed step hands
each of the R replicas one whole crafting batch (step s: batches ``s * R ... s * R + R - 1``), so
every attack call sees the same rows, the same seed and the same batch shape as in one process:

* the attacks' randomness is stateless over the whole batch (``random_start`` draws
  ``U(-eps, eps)`` of shape ``[B, ...]`` from the batch's [2] seed; M-DI²-FGSM draws one transform
  per batch and step), so splitting a batch into sub-batches would change the draws -- a whole batch
  per replica keeps them;
* a kernel's floating-point result can depend on the batch shape (oneDNN picks blockings per
  shape), which the sign steps of the attacks would amplify -- the same shape keeps the arithmetic.

The examples come out bitwise equal to the single-process ones (tests/test_eval_strategy.py checks
it on two logical CPUs and on two worker processes), so the cache key does not name the strategy:
an entry crafted by four workers is reused by one process and vice versa.

So ``--batch_size`` keeps its meaning (and its place in the cache key) under every strategy; a
step crafts R batches, and with fewer than R batches left some replicas craft a padding batch
(below): choose ``--batch_size`` at most ``num_examples / R`` to keep every replica busy.

**Input pipeline.** ``distribute_datasets_from_function``: every input pipeline (one per worker)
yields, per step, the crafting batches of its own replicas (no tf.data auto-sharding), padded with
one-image batches after the last one so that every replica takes part in every step (the
collectives of ``MultiWorkerMirroredStrategy`` need all of them). Padding results are dropped; it
is not an empty batch because a zero-row batch fails in TensorFlow's gradient of LeakyReLU
(measured, TF 2.21). Each element carries its rows' indices; the step all-gathers examples and
indices (``strategy.gather``), and the examples are put back in the original order by those
indices (checked to cover every row exactly once). Every worker thus holds every example and
scores every target itself; only the chief writes (``cache.craft_cached``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tf_divtrain import distribute as distribute_lib


def num_workers(strategy) -> int:
    """Processes in the strategy's cluster (1 for ``default`` and ``mirrored``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    return sum(len(v) for k, v in resolver.cluster_spec().as_dict().items() if k in ("chief", "worker"))


def describe(strategy, name: str) -> dict:
    """What results.json records about a distributed crafting run (not part of the cache key)."""
    return {"name": name, "replicas": int(strategy.num_replicas_in_sync),
            "workers": num_workers(strategy), "chief": distribute_lib.is_chief(strategy)}


def all_workers_agree(strategy, flag: bool) -> bool:
    """True only if ``flag`` is True on every worker (an all-reduce of the workers where it is
    False; a no-op with one worker).

    Used for cache hits: a worker whose cache entry is missing or damaged would craft while the
    others skip, and the collectives would wait for ever; so either all read, or all craft."""
    if num_workers(strategy) == 1:
        return bool(flag)
    value = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(0 if flag else 1, tf.int32))
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()) == 0


def craft_distributed(attack_fn, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                      strategy, desc: str = "", progress: bool = True) -> np.ndarray:
    """``attack_fn(x_b, y_b, [seed, b])`` over the crafting batches ``b``, one batch per replica and
    step under ``strategy`` (module docstring). Returns float32 x_adv in the order of ``x``."""
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"craft_distributed: {n} images, {len(y)} labels.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    replicas = strategy.num_replicas_in_sync
    batches = -(-n // batch_size)
    steps = -(-batches // replicas)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)

    def dataset_fn(ctx: tf.distribute.InputContext):
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local

        def batches_of_this_pipeline():
            for s in range(steps):
                for k in range(local):
                    b = s * replicas + first + k
                    if b < batches:
                        rows = slice(b * batch_size, min((b + 1) * batch_size, n))
                        yield x[rows], y[rows], np.int64(b), np.arange(n, dtype=np.int64)[rows]
                    else:  # padding: image 0 again, index -1 (dropped)
                        yield x[:1], y[:1], np.int64(b), np.full(1, -1, np.int64)

        ds = tf.data.Dataset.from_generator(batches_of_this_pipeline, output_signature=(
            tf.TensorSpec((None,) + x.shape[1:], tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((), tf.int64), tf.TensorSpec((None,), tf.int64)))
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(opts)

    seed_t = tf.constant(int(seed), tf.int64)

    def replica_step(xb, yb, b, idx):
        return attack_fn(xb, yb, tf.stack([seed_t, b])), idx

    def gathered(element):
        adv, idx = strategy.run(replica_step, args=element)
        return strategy.gather(adv, axis=0), strategy.gather(idx, axis=0)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    # One trace for any batch size; no autograph: the step has no Python control flow on tensors.
    step = tf.function(gathered, input_signature=[dist.element_spec], autograph=False)
    out = np.zeros_like(x)
    seen = np.zeros(n, np.int64)
    it = iter(dist)
    rng = range(steps)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=desc, unit="step", total=steps)
    for _ in rng:
        adv, idx = step(next(it))
        idx = idx.numpy()
        keep = idx >= 0
        out[idx[keep]] = adv.numpy()[keep]
        np.add.at(seen, idx[keep], 1)
    if not np.all(seen == 1):
        raise RuntimeError(f"distributed crafting covered rows {np.flatnonzero(seen != 1)[:10]} "
                           f"{sorted(set(seen.tolist()))} times, not once each (a bug).")
    return out


__all__ = ["craft_distributed", "all_workers_agree", "describe", "num_workers"]

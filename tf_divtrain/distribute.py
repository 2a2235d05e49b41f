"""``tf.distribute`` pieces shared by training and evaluation (``--strategy`` of ``train`` and
``evaluate``): the strategy names and their check, the strategy factory, who the chief is, and a
non-chief worker's private scratch directory.

* ``default``      -- one device (``tf.distribute.get_strategy()``).
* ``mirrored``     -- ``MirroredStrategy`` over the local devices (GPUs, or logical CPUs).
* ``multi_worker`` -- ``MultiWorkerMirroredStrategy``, the cluster from ``$TF_CONFIG``: the same
  command on every machine, each with its own task. Every worker computes; only the chief (task
  ``chief``, or worker 0 of a cluster without one) writes into the shared output directory, the
  others write to :func:`scratch_dir` (deleted after use; training) or nowhere (evaluation).

TensorFlow is imported only by :func:`make_strategy`, so configs can check a name without it.
"""

from __future__ import annotations

import os

STRATEGIES = ("default", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"
SCRATCH_DIR = ".worker_tmp"


def check_strategy(name: str) -> str:
    """``name`` is one of :data:`STRATEGIES`; ``multi_worker`` also needs ``$TF_CONFIG``.
    Raises ``ValueError`` (one sentence saying what to do)."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}.")
    if name == "multi_worker" and not os.environ.get(TF_CONFIG):
        raise ValueError(f"strategy=multi_worker reads the cluster from the {TF_CONFIG} environment "
                         f"variable, which is not set (see README, 'Several machines').")
    return name


def make_strategy(name: str):
    """default (one device) | mirrored (local devices) | multi_worker (cluster from TF_CONFIG)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name != "default":
        raise ValueError(f"Unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}.")
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """The chief: task 'chief', or worker 0 of a cluster without one; every single-process run."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def scratch_dir(out_dir: str, strategy) -> str:
    """``""`` on the chief; else this worker's private ``<out_dir>/.worker_tmp/task_<id>``, where
    a save that every worker must take part in (a checkpoint) lands and is deleted
    (tf.distribute's documented pattern; ``loop.Checkpointer`` deletes it)."""
    if is_chief(strategy):
        return ""
    return os.path.join(out_dir, SCRATCH_DIR, f"task_{strategy.cluster_resolver.task_id}")


__all__ = ["STRATEGIES", "check_strategy", "make_strategy", "is_chief", "scratch_dir"]

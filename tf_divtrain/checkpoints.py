"""Checkpoint save and restore that survive a kill, a full disk and a damaged file.

* :func:`save` -- ``CheckpointManager.save``; a failed write (full disk, vanished out_dir) raises
  ``io_utils.OutputError`` naming the directory. The ``checkpoint`` state file is TensorFlow's
  commit marker: a checkpoint whose save was cut off is never listed there, so never resumed from.
  Before each save the step's training metrics go to ``last_step.json`` (:func:`last_metrics`), so
  a run resumed after its last step (killed during the export or metrics.json) writes the same
  metrics.json as an uninterrupted one. ``train_time.json`` records, per saved step, the training
  time and the number of runs (the first and its resumptions) behind it (:func:`run_history`), so
  metrics.json of a run resumed over several sessions states its whole training time.
* :func:`restore_latest` -- restores the newest *readable* checkpoint the state file lists, newest
  first. A damaged one (truncated, bad checksum) is moved aside into ``checkpoints/damaged/`` (never
  deleted) with a warning naming it and the one resumed from; when none is readable it raises
  :class:`NoReadableCheckpoint`, whose message offers ``--fresh``.
"""

from __future__ import annotations

import errno
import glob
import os
import re
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from tf_divtrain import io_utils

LAST_STEP_FILE = "last_step.json"
TIME_FILE = "train_time.json"
DAMAGED_DIR = "damaged"


class NoReadableCheckpoint(io_utils.FileProblem):
    """Checkpoints exist in a run directory but none of them can be read."""


def _step_of(prefix: str) -> int:
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else -1


def candidates(ckpt_dir: str) -> List[str]:
    """Checkpoint prefixes to try, newest first: those the state file lists whose index is present
    (if the state file itself is unreadable: every ``*.index`` in the directory)."""
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except Exception:  # noqa: BLE001 -- a damaged state file: fall back to the files themselves
        state = None
    if state is not None:
        listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        paths = [p if os.path.isabs(p) else os.path.join(ckpt_dir, p) for p in listed if p]
    elif os.path.exists(os.path.join(ckpt_dir, "checkpoint")):
        paths = [p[:-len(".index")] for p in glob.glob(os.path.join(ckpt_dir, "*.index"))]
    else:
        return []  # no state file: nothing was ever committed (a first save cut off is ignored)
    paths = [p for p in paths if os.path.isfile(p + ".index")]
    return sorted(set(paths), key=_step_of, reverse=True)


def move_aside(prefix: str) -> str:
    """Moves a checkpoint's files into ``<dir>/damaged/`` (renamed if the name is taken)."""
    dest_dir = os.path.join(os.path.dirname(prefix), DAMAGED_DIR)
    os.makedirs(dest_dir, exist_ok=True)
    base, n = os.path.basename(prefix), 0
    while glob.glob(os.path.join(dest_dir, (f"{base}.{n}" if n else base) + ".*")):
        n += 1
    name = f"{base}.{n}" if n else base
    for f in glob.glob(glob.escape(prefix) + ".*"):
        os.replace(f, os.path.join(dest_dir, name + f[len(prefix):]))
    return os.path.join(dest_dir, name)


def restore_latest(checkpoint: tf.train.Checkpoint, ckpt_dir: str,
                   warn: Callable[[str], None] = print, chief: bool = True) -> Optional[str]:
    """Restores the newest readable checkpoint of ``ckpt_dir`` into ``checkpoint``; returns its
    prefix (None when there is none). Damaged ones are moved aside (by the ``chief`` only: other
    workers of a multi-worker run just skip them), with a ``warn`` line each."""
    tried = candidates(ckpt_dir)
    damaged = []
    for prefix in tried:
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except Exception as e:  # noqa: BLE001 -- truncation/corruption surface as many types
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            damaged.append(prefix)
            if not chief:
                continue
            moved = move_aside(prefix)
            warn(f"warning: checkpoint {prefix} is damaged ({type(e).__name__}: {why}); moved it to "
                 f"{moved}")
            continue
        if damaged and chief:
            warn(f"warning: resumed from {prefix} (step {_step_of(prefix)}), the newest readable "
                 f"checkpoint, instead of the damaged {', '.join(damaged)}")
            remaining = [p for p in tried if p not in damaged]
            tf.compat.v1.train.update_checkpoint_state(
                ckpt_dir, prefix, all_model_checkpoint_paths=list(reversed(remaining)))
        return prefix
    if damaged:
        raise NoReadableCheckpoint(
            f"no readable checkpoint in {ckpt_dir}: {len(damaged)} damaged one(s) moved to "
            f"{os.path.join(ckpt_dir, DAMAGED_DIR)}; pass --fresh to start the run over (the old "
            f"run directory is moved aside, not deleted)")
    return None


def save(manager: tf.train.CheckpointManager, step: int, metrics: Optional[dict] = None,
         scratch: bool = False, history: Optional[dict] = None) -> str:
    """``manager.save(step)`` (after writing ``metrics`` to ``last_step.json`` and ``history``,
    ``{"train_seconds", "sessions"}`` up to this step, to ``train_time.json``); a failed write
    raises ``io_utils.OutputError`` naming the directory. ``scratch``: the directory is a non-chief
    worker's, deleted after every save and re-created here."""
    directory = manager.directory
    if not os.path.isdir(directory):
        # Created once, by the first save; vanished later (the out_dir was deleted under a running
        # job) is an error, not a reason to start a headless run in a recreated directory.
        try:
            if manager.latest_checkpoint and not scratch:
                raise FileNotFoundError(errno.ENOENT, "the directory vanished during the run")
            os.makedirs(directory) if scratch else os.mkdir(directory)
        except OSError as e:
            raise io_utils.output_error(directory, e) from e
    if metrics is not None:
        io_utils.atomic_write_json(os.path.join(directory, LAST_STEP_FILE), {
            "step": int(step), "metrics": {k: np.asarray(v).tolist() for k, v in metrics.items()}})
    if history is not None:  # before the save: an entry without its checkpoint is never read
        record = _time_record(directory)
        record[str(int(step))] = {"train_seconds": float(history["train_seconds"]),
                                  "sessions": int(history["sessions"])}
        io_utils.atomic_write_json(os.path.join(directory, TIME_FILE), record)

    def committed(save_path):  # files written, state file not yet (tests stop here)
        data = sorted(glob.glob(glob.escape(save_path) + ".data-*"))
        io_utils.fault_point("checkpoint:saved", data[0] if data else save_path)

    options = tf.train.CheckpointOptions(experimental_write_callbacks=[committed])
    try:
        return manager.save(checkpoint_number=step, options=options)
    except (OSError, tf.errors.OpError) as e:
        raise io_utils.output_error(directory, e) from e


def last_metrics(ckpt_dir: str, step: int) -> dict:
    """The training metrics :func:`save` recorded for ``step`` ({} if it recorded another step)."""
    try:
        rec = io_utils.read_json(os.path.join(ckpt_dir, LAST_STEP_FILE), "last-step record",
                                 "train (the same command)", missing_ok=True)
    except io_utils.IncompleteFileError:
        return {}
    if not rec or rec.get("step") != int(step):
        return {}
    return {k: np.asarray(v) for k, v in rec.get("metrics", {}).items()}


def _time_record(ckpt_dir: str) -> dict:
    try:
        rec = io_utils.read_json(os.path.join(ckpt_dir, TIME_FILE), "training-time record",
                                 "train (the same command)", missing_ok=True)
    except io_utils.IncompleteFileError:
        return {}
    return rec if isinstance(rec, dict) else {}


def run_history(ckpt_dir: str, step: int) -> Optional[dict]:
    """``{"train_seconds", "sessions"}`` behind checkpoint ``step`` as :func:`save` recorded it;
    ``{"train_seconds": 0.0, "sessions": 0}`` for step 0 (a fresh run); None if not recorded (a
    checkpoint written before this record existed, or a damaged record)."""
    if int(step) == 0:
        return {"train_seconds": 0.0, "sessions": 0}
    entry = _time_record(ckpt_dir).get(str(int(step)))
    if not isinstance(entry, dict) or not {"train_seconds", "sessions"} <= set(entry):
        return None
    return {"train_seconds": float(entry["train_seconds"]), "sessions": int(entry["sessions"])}


__all__ = ["NoReadableCheckpoint", "candidates", "move_aside", "restore_latest", "save",
           "last_metrics", "run_history"]

"""The training loop and its hooks (the loop of ``training.train``; tensorflow/models "actions").

:func:`run_loop` only steps: it pulls a batch, calls the step, and hands the step's metrics to a
list of :class:`Hook` objects in order. Everything else a run does between steps is a hook:

* :class:`NaNGuard` -- the recovery action: stops the run on a non-finite loss (under
  mixed_float16 it tolerates ``max_skipped`` skipped steps in a row: the loss scaler recovers);
* :class:`ProgressBar` -- tqdm bar with CE / GAL / coherence / images per second;
* :class:`TensorBoardLogger` -- ``train/*`` scalars and a validation accuracy every ``every`` steps;
* :class:`Checkpointer` -- ``CheckpointManager.save`` every ``every`` steps, at each epoch end and
  at the last step;
* :class:`EpochCallback` -- calls ``fn(epoch)`` when an epoch starts (and for the epoch a resumed
  run starts in): per-epoch schedules of the training objective.

A user adds their own hook through ``training.train(cfg, hooks=[...])``; hooks run after the
built-in ones. A hook ends a run early and cleanly with ``state.stop = True`` (the step is
checkpointed, then evaluated and exported); an exception raised by a hook aborts the run (the last
checkpoint is kept, nothing is exported).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf


class TrainingError(RuntimeError):
    """A run cannot start or continue (config mismatch, NaN loss, ...)."""


@dataclasses.dataclass
class LoopState:
    """What hooks see after a step: ``step`` = steps done (1-based), the step's metrics (numpy),
    images per second since the loop started, and the loop's range. A hook sets ``stop = True``
    to end the run after this step (the checkpointer saves it; ``train()`` then evaluates and
    exports as usual)."""

    step: int
    total: int
    metrics: dict
    images_per_sec: float
    steps_per_epoch: int
    stop: bool = False


class Hook:
    """Base class: override any of the three callbacks."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based; also the epoch a resumed run starts in)."""

    def on_step_end(self, state: LoopState) -> None:
        """After every step."""

    def on_loop_end(self, state: Optional[LoopState]) -> None:
        """After the last step (``state`` is None when the loop ran no step)."""


def run_loop(step_fn: Callable, batches: Iterator, start: int, total: int, hooks: Sequence[Hook],
             batch_size: int, steps_per_epoch: int) -> dict:
    """Steps ``start`` .. ``total - 1``: ``metrics = step_fn(*next(batches))``, then every hook.

    Returns ``{"last": metrics of the last step, "seconds": loop time, "images": images seen}``.
    """
    last, state = {}, None
    seen, t0 = 0, time.time()
    for step in range(start, total):
        if step % steps_per_epoch == 0 or step == start:
            for h in hooks:
                h.on_epoch_begin(step // steps_per_epoch)
        x, y = next(batches)
        metrics = {k: v.numpy() for k, v in step_fn(x, y).items()}
        seen += batch_size
        state = LoopState(step + 1, total, metrics, seen / max(time.time() - t0, 1e-9), steps_per_epoch)
        for h in hooks:
            h.on_step_end(state)
        last = metrics
        if state.stop:
            break
    for h in hooks:
        h.on_loop_end(state)
    return {"last": last, "seconds": time.time() - t0, "images": seen}


class NaNGuard(Hook):
    """Stops the run on a non-finite loss: at once, or after ``max_skipped`` + 1 in a row.

    ``max_skipped`` > 0 only under a dynamic loss scaler (mixed_float16), which skips a non-finite
    step and halves its scale; that many skipped steps in a row means the run diverged.
    ``checkpoint_hint()`` names the last good checkpoint in the error message.
    """

    def __init__(self, max_skipped: int = 0, checkpoint_hint: Callable[[], str] = lambda: ""):
        self.max_skipped, self.checkpoint_hint, self.skipped = max_skipped, checkpoint_hint, 0

    def on_step_end(self, state: LoopState) -> None:
        loss = state.metrics["loss"]
        self.skipped = 0 if np.isfinite(loss) else self.skipped + 1
        if self.skipped > self.max_skipped:
            raise TrainingError(
                f"Non-finite loss ({loss}) at step {state.step}; stopped. The last good checkpoint "
                f"is kept in {self.checkpoint_hint()}. Lower --learning_rate or --gal_lambda.")


class ProgressBar(Hook):
    """A tqdm bar over the loop's steps (disabled when ``enabled`` is False)."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm  # local: only the loop needs it

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                        mininterval=5.0)

    def on_step_end(self, state: LoopState) -> None:
        m = state.metrics
        post = {"ce": f"{m['ce']:.3f}", "img/s": f"{state.images_per_sec:.0f}"}
        if "gal" in m:
            post.update(gal=f"{m['gal']:.3f}", coh=f"{m['coherence']:.3f}")
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_loop_end(self, state) -> None:
        self.bar.close()


class TensorBoardLogger(Hook):
    """``train/<metric>`` (``member_ce`` -> ``train/member_<i>_ce``), ``train/images_per_sec`` and
    ``val/ensemble_accuracy`` = ``val_accuracy()`` every ``every`` steps and at the last step."""

    def __init__(self, writer, every: int, val_accuracy: Optional[Callable[[], float]] = None):
        self.writer, self.every, self.val_accuracy = writer, every, val_accuracy

    def on_step_end(self, state: LoopState) -> None:
        if state.step % self.every and state.step != state.total:
            return
        with self.writer.as_default(step=state.step):
            for k, v in state.metrics.items():
                if np.ndim(v):
                    for i, c in enumerate(np.ravel(v)):
                        name = f"member_{i}_ce" if k == "member_ce" else f"{k}_{i}"
                        tf.summary.scalar(f"train/{name}", c)
                else:
                    tf.summary.scalar(f"train/{k}", v)
            tf.summary.scalar("train/images_per_sec", state.images_per_sec)
            if self.val_accuracy is not None:
                tf.summary.scalar("val/ensemble_accuracy", self.val_accuracy())


class Checkpointer(Hook):
    """``manager.save(step)`` every ``every`` steps, at every epoch end and at the last step.

    ``scratch_dir``: a non-chief worker's private save dir, deleted after each save (under
    multi_worker every worker takes part in a save; only the chief's lands in out_dir).
    ``history``: ``{"train_seconds", "sessions"}`` of the checkpoint the run resumed from (None:
    unknown); each save then records this run's time on top of it
    (:func:`tf_divtrain.checkpoints.run_history`).
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int, scratch_dir: str = "",
                 history: Optional[dict] = None):
        self.manager, self.every, self.scratch_dir = manager, every, scratch_dir
        self.history, self.t0 = history, None
        self.saved = None

    def on_epoch_begin(self, epoch: int) -> None:
        if self.t0 is None:  # the loop's first step (run_loop calls this before it)
            self.t0 = time.time()

    def _save(self, step: int, metrics: Optional[dict] = None) -> None:
        if isinstance(self.manager, tf.train.CheckpointManager):
            from tf_divtrain import checkpoints  # save errors -> OutputError; fault points (tests)

            history = None
            if self.history is not None and not self.scratch_dir and self.t0 is not None:
                history = {"train_seconds": self.history["train_seconds"] + time.time() - self.t0,
                           "sessions": self.history["sessions"] + 1}
            checkpoints.save(self.manager, step, None if self.scratch_dir else metrics,
                             scratch=bool(self.scratch_dir), history=history)
        else:  # any object with save(checkpoint_number=...)
            self.manager.save(checkpoint_number=step)
        self.saved = step
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def on_step_end(self, state: LoopState) -> None:
        s = state.step
        if s % self.every == 0 or s == state.total or s % state.steps_per_epoch == 0:
            self._save(s, state.metrics)

    def on_loop_end(self, state) -> None:
        if state is not None and self.saved != state.step:  # a hook stopped the run early
            self._save(state.step, state.metrics)


class EpochCallback(Hook):
    """Calls ``fn(epoch)`` at the start of every epoch (per-epoch schedules of an objective)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def on_epoch_begin(self, epoch: int) -> None:
        self.fn(epoch)


def as_hooks(hooks: Optional[Iterable[Hook]]) -> list:
    """Validates user hooks: every one must be a :class:`Hook`."""
    out = list(hooks or ())
    for h in out:
        if not isinstance(h, Hook):
            raise TypeError(f"hooks must be tf_divtrain.loop.Hook instances, got {type(h).__name__}; "
                            f"subclass Hook and override on_step_end / on_epoch_begin / on_loop_end.")
    return out


__all__ = ["TrainingError", "LoopState", "Hook", "run_loop", "NaNGuard", "ProgressBar",
           "TensorBoardLogger", "Checkpointer", "EpochCallback", "as_hooks"]

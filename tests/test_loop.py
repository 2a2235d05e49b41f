"""The training loop and its hooks (tf_divtrain.loop) and the batched-inference helper."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import batching, loop, training


class Recorder(loop.Hook):
    def __init__(self, log, name):
        self.log, self.name = log, name

    def on_epoch_begin(self, epoch):
        self.log.append((self.name, "epoch", epoch))

    def on_step_end(self, state):
        self.log.append((self.name, "step", state.step))

    def on_loop_end(self, state):
        self.log.append((self.name, "end", state.step if state else None))


def _fake(losses):
    """step_fn returning the given losses in turn, and an endless batch iterator."""
    it = iter(losses)

    def step_fn(x, y):
        return {"loss": tf.constant(next(it)), "ce": tf.constant(1.0)}

    return step_fn, iter(lambda: (tf.zeros([2]), tf.zeros([2])), None)


def test_run_loop_calls_hooks_in_order_and_epochs_from_a_resumed_start():
    log = []
    step_fn, batches = _fake([0.5] * 5)
    out = loop.run_loop(step_fn, batches, start=3, total=8, hooks=[Recorder(log, "a"), Recorder(log, "b")],
                        batch_size=2, steps_per_epoch=4)
    # A run resumed at step 3 is inside epoch 0; epoch 1 starts before the 5th step (step index 4).
    assert log[:4] == [("a", "epoch", 0), ("b", "epoch", 0), ("a", "step", 4), ("b", "step", 4)]
    assert ("a", "epoch", 1) in log and log.index(("a", "epoch", 1)) == log.index(("b", "step", 4)) + 1
    assert [e for e in log if e[1] == "step" and e[0] == "a"] == [("a", "step", s) for s in range(4, 9)]
    assert log[-2:] == [("a", "end", 8), ("b", "end", 8)]
    assert out["images"] == 10 and out["last"]["loss"] == pytest.approx(0.5)


def test_run_loop_with_nothing_to_do_still_ends_hooks():
    log = []
    step_fn, batches = _fake([])
    out = loop.run_loop(step_fn, batches, 5, 5, [Recorder(log, "a")], 2, 4)
    assert log == [("a", "end", None)] and out["last"] == {} and out["images"] == 0


def test_nan_guard_stops_at_once_or_after_the_allowed_skips():
    step_fn, batches = _fake([1.0, float("nan")])
    with pytest.raises(loop.TrainingError, match=r"Non-finite loss \(nan\) at step 2.*ckpt-1"):
        loop.run_loop(step_fn, batches, 0, 5, [loop.NaNGuard(0, lambda: "ckpt-1")], 2, 100)
    # mixed_float16: the loss scaler skips up to max_skipped non-finite steps in a row and recovers.
    step_fn, batches = _fake([np.inf, np.nan, 1.0, np.nan, np.nan, np.nan])
    guard = loop.NaNGuard(max_skipped=2)
    with pytest.raises(loop.TrainingError, match="at step 6"):
        loop.run_loop(step_fn, batches, 0, 6, [guard], 2, 100)


def test_checkpointer_saves_on_schedule_epoch_end_and_last_step():
    class FakeManager:
        def __init__(self):
            self.saved = []

        def save(self, checkpoint_number):
            self.saved.append(checkpoint_number)

    m = FakeManager()
    step_fn, batches = _fake([0.1] * 11)
    loop.run_loop(step_fn, batches, 0, 11, [loop.Checkpointer(m, every=4)], 2, steps_per_epoch=5)
    assert m.saved == [4, 5, 8, 10, 11]


def test_hooks_must_be_hooks():
    with pytest.raises(TypeError, match="tf_divtrain.loop.Hook"):
        loop.as_hooks([lambda state: None])


def test_train_runs_user_hooks_and_a_raising_hook_keeps_the_checkpoint(tmp_path, data_dir):
    seen = []

    class Stop(loop.Hook):
        def on_step_end(self, state):
            seen.append((state.step, sorted(state.metrics)))
            if state.step == 2:
                raise RuntimeError("user stop")

    cfg = training.TrainConfig(mode="div", ensemble_size=2, batch_size=32, max_steps=3,
                               train_examples=256, eval_examples=64, log_every=1, checkpoint_every=1,
                               progress=False, out_dir=str(tmp_path / "run"), data_dir=data_dir)
    with pytest.raises(RuntimeError, match="user stop"):
        training.train(cfg, hooks=[Stop()])
    assert [s for s, _ in seen] == [1, 2]
    assert {"loss", "ce", "gal", "coherence", "member_ce"} <= set(seen[0][1])
    # User hooks run after the built-in checkpointer: step 2 was saved before the hook stopped.
    assert tf.train.latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")).endswith("ckpt-2")
    assert not os.path.exists(os.path.join(cfg.out_dir, "metrics.json"))


def test_map_batches_equals_the_unbatched_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=23)
    got = batching.map_batches(lambda a: tf.reduce_sum(a, -1), x, batch_size=5)
    np.testing.assert_allclose(got, x.sum(-1), rtol=1e-6)
    s, yy = batching.map_batches(lambda a, b: (a * 2, b), x, y, batch_size=10)
    np.testing.assert_allclose(s, 2 * x)
    np.testing.assert_array_equal(yy, y)
    idx = batching.map_batches(lambda a, b: tf.fill([tf.shape(a)[0]], b), x, batch_size=10, with_index=True)
    np.testing.assert_array_equal(idx, [0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ValueError, match="different lengths"):
        batching.map_batches(lambda a, b: a, x, y[:3], batch_size=5)
    with pytest.raises(ValueError, match="batch_size"):
        batching.map_batches(lambda a: a, x, batch_size=0)


def test_a_hook_can_end_the_run_cleanly(tmp_path, data_dir):
    class StopAt2(loop.Hook):
        def on_step_end(self, state):
            state.stop = state.step == 2

    cfg = training.TrainConfig(mode="baseline", ensemble_size=2, batch_size=32, max_steps=5,
                               train_examples=256, eval_examples=64, log_every=10, checkpoint_every=10,
                               progress=False, out_dir=str(tmp_path / "run"), data_dir=data_dir)
    m = training.train(cfg, hooks=[StopAt2()])
    assert m["steps"] == 2 and os.path.isdir(os.path.join(cfg.out_dir, "saved_model"))
    # checkpoint_every=10 would not have saved step 2: the checkpointer saves where the loop stopped
    assert tf.train.latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")).endswith("ckpt-2")

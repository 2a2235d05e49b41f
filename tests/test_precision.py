"""Mixed precision: a bf16 / fp16 GAL step against the float32 one, float32 exports, checkpoints
that restore across precisions, fp16 inner loss scaling, and the precision setting's errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import export, gal, models, precision, training


def _objective_and_grads(prec, x, y, mode="div", seed=3):
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 3, seed=seed, precision=prec)
    with tf.GradientTape() as tape:
        out = training.per_example_objective(ens.members, x, y, mode, 0.5)
        loss = tf.reduce_mean(out["loss"])
    grads = tape.gradient(loss, ens.trainable_variables)
    return ens, out, loss, grads


def _cos(a, b):
    a, b = np.concatenate([g.numpy().ravel() for g in a]), np.concatenate([g.numpy().ravel() for g in b])
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_same_seed_same_float32_weights_in_every_precision():
    a = models.build_model("conv3", (28, 28, 1), 10, seed=5)
    b = models.build_model("conv3", (28, 28, 1), 10, seed=5, precision="mixed_bfloat16")
    assert all(v.dtype == "float32" for v in b.weights)
    for va, vb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(va, vb)
    assert keras.mixed_precision.global_policy().name == "float32"  # the scope restored it


def test_bf16_gal_step_matches_float32(mnist_batch):
    """Tolerances: bf16 has an 8-bit mantissa (relative step 2^-8 = 0.4 %); after ~10 layers
    of products the per-example CE, cosines and GAL agree with float32 to a few percent."""
    x, y = tf.constant(mnist_batch[0][:64]), tf.constant(mnist_batch[1][:64])
    _, out32, loss32, g32 = _objective_and_grads("float32", x, y)
    ens16, out16, loss16, g16 = _objective_and_grads("mixed_bfloat16", x, y)
    # Everything the package computes from member outputs is float32.
    for k in ("loss", "ce", "gal", "coherence", "logits"):
        assert out16[k].dtype == tf.float32, k
    assert ens16.members[0].layers[1].compute_dtype == "bfloat16"
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=0.02)
    np.testing.assert_allclose(out16["ce"].numpy(), out32["ce"].numpy(), rtol=0.05, atol=0.02)
    np.testing.assert_allclose(out16["gal"].numpy(), out32["gal"].numpy(), atol=0.03)
    np.testing.assert_allclose(out16["coherence"].numpy(), out32["coherence"].numpy(), atol=0.05)
    assert all(g.dtype == tf.float32 for g in g16)
    assert _cos(g16, g32) > 0.98  # the parameter update points the same way


def test_inner_loss_scale_prevents_float16_underflow():
    """Input gradients of ~1e-9 flush to zero in float16 (smallest subnormal 6e-8) unless the
    inner loss is scaled; scaled and unscaled back, they match float32."""
    def member(prec):
        with precision.policy_scope(prec):
            inp = keras.Input((8,))
            h = keras.layers.Dense(8, kernel_initializer=keras.initializers.Constant(3e-3))(inp)
            out = keras.layers.Dense(4, kernel_initializer=keras.initializers.Constant(3e-3))(h)
        return keras.Model(inp, out)

    x = tf.constant(np.random.default_rng(0).uniform(size=(4, 8)).astype("float32"))
    y = tf.constant([0, 1, 2, 3])
    ref, _, _ = gal.member_input_gradients([member("float32")] * 2, x, y)
    plain, _, _ = gal.member_input_gradients([member("mixed_float16")] * 2, x, y)
    scaled, _, _ = gal.member_input_gradients([member("mixed_float16")] * 2, x, y, loss_scale=2.0 ** 15)
    assert 0 < np.abs(ref.numpy()).max() < 5e-7
    assert np.count_nonzero(plain.numpy()) < ref.numpy().size // 2  # underflowed
    np.testing.assert_allclose(scaled.numpy(), ref.numpy(), rtol=0.02, atol=1e-11)


def test_fp16_trainer_step_uses_loss_scaling_and_stays_close(mnist_batch):
    # Real digits at half the resolution (14 x 14): the same Conv-3 layers and GAL step,
    # a quarter of the float16 convolution work (emulated on CPUs).
    x, y = tf.constant(mnist_batch[0][:32, ::2, ::2]), tf.constant(mnist_batch[1][:32])
    metrics = {}
    for prec in ("float32", "mixed_float16"):
        cfg = training.TrainConfig(mode="div", ensemble_size=2, batch_size=32, precision=prec).validate()
        tr = training.Trainer(cfg, (14, 14, 1), 10)
        metrics[prec] = {k: float(np.mean(v.numpy())) for k, v in tr.train_step(x, y).items()}
        if prec == "mixed_float16":
            assert isinstance(tr.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(metrics["mixed_float16"]["gal"])
    for k in ("loss", "ce"):
        np.testing.assert_allclose(metrics["mixed_float16"][k], metrics["float32"][k], rtol=0.02)
    # N = 2: GAL is one cosine, ~0 at initialisation: compare absolutely.
    np.testing.assert_allclose(metrics["mixed_float16"]["gal"], metrics["float32"]["gal"], atol=2e-3)


def test_bf16_run_exports_float32_and_checkpoints_restore_in_float32(tmp_path, data_dir, mnist):
    cfg = training.TrainConfig(mode="div", ensemble_size=2, batch_size=32, max_steps=2,
                               train_examples=256, eval_examples=64, log_every=1, progress=False,
                               precision="mixed_bfloat16", data_dir=data_dir,
                               out_dir=str(tmp_path / "bf16"))
    metrics = training.train(cfg)
    assert metrics["steps"] == 2
    loaded = export.load_ensemble(str(tmp_path / "bf16"))
    assert loaded.metadata["trained_precision"] == "mixed_bfloat16"
    x = mnist.x_test[:16]
    served = loaded.member_logits(x)
    assert served.dtype == tf.float32
    # The checkpoint (bf16 run) restores into a float32 trainer: the export is exactly those weights.
    f32 = training.Trainer(training.TrainConfig(mode="div", ensemble_size=2, batch_size=32), (28, 28, 1), 10)
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "bf16" / "checkpoints"))
    f32.checkpoint.restore(ckpt).assert_existing_objects_matched()
    np.testing.assert_allclose(served.numpy(), f32.ensemble.member_logits(x).numpy(), atol=1e-5)
    assert int(f32.step.numpy()) == 2
    # ... and the export can be rebuilt in bfloat16 on request (same weights, bf16 compute).
    rebuilt = export.load_ensemble(str(tmp_path / "bf16"), precision="mixed_bfloat16")
    assert rebuilt.members[0].layers[1].compute_dtype == "bfloat16"
    np.testing.assert_allclose(rebuilt.member_logits(x).numpy(), served.numpy(), rtol=0.05, atol=0.1)
    with open(tmp_path / "bf16" / "config.json") as f:
        assert json.load(f)["precision"] == "mixed_bfloat16"


def test_precision_setting_errors_and_auto(monkeypatch):
    with pytest.raises(ValueError, match="Unknown precision 'half'.*mixed_bfloat16"):
        precision.check_precision("half")
    with pytest.raises(ValueError, match="Unknown precision 'auto'"):
        training.TrainConfig(precision="auto").validate()  # the CLI resolves auto first
    monkeypatch.setattr(precision, "native_bfloat16", lambda: None)
    assert precision.resolve("auto") == "float32"
    monkeypatch.setattr(precision, "native_bfloat16", lambda: "CPU with amx_bf16")
    assert precision.resolve("auto") == "mixed_bfloat16"
    assert precision.resolve("float32") == "float32"
    with pytest.raises(ValueError, match="Unknown precision"):
        export.load_ensemble(os.devnull, precision="int8")


def test_evaluate_crafts_in_the_asked_precision_and_scores_in_float32(tmp_path, data_dir):
    from tf_divtrain import evaluation

    meta = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}
    sur = export.export_ensemble(models.build_ensemble("conv3", (28, 28, 1), 10, 2, seed=4),
                                 str(tmp_path / "sur"), dict(meta, models=["conv3", "conv3"]))
    tgt = export.export_ensemble(models.build_ensemble("conv3", (28, 28, 1), 10, 2, seed=6),
                                 str(tmp_path / "tgt"), dict(meta))  # no 'models': float32 only
    kw = dict(data_dir=data_dir, attacks=["fgsm"], eps=[0.3], num_examples=32, batch_size=32,
              cache_dir=str(tmp_path / "cache"), progress=False)
    r32 = evaluation.evaluate(sur, [("T", tgt)], **kw)
    r16 = evaluation.evaluate(sur, [("T", tgt)], precision="mixed_bfloat16", **kw)
    assert (r32["crafting_precision"], r16["crafting_precision"]) == ("float32", "mixed_bfloat16")
    assert r16["rows"][0]["clean"] == r32["rows"][0]["clean"]  # targets scored in float32 both times
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".npy")]) == 2  # the two precisions' examples are cached apart
    with pytest.raises(ValueError, match="does not name its members"):
        export.load_ensemble(tgt, precision="mixed_bfloat16")


def test_one_inter_op_thread_exactly_where_bfloat16_gal_is_not_repeatable(monkeypatch, capsys):
    """results/studies/determinism_probe: bfloat16 GAL steps of batch-norm members are bitwise
    repeatable only with one inter-op thread. The train CLI sets it for exactly that case (a user's
    --inter_op_threads wins), and a library caller gets a warning instead (threads cannot change
    once TensorFlow runs)."""
    from absl import flags

    from tf_divtrain import precision, train, training
    from tf_divtrain.training import run

    rule = precision.serial_ops_for_determinism
    assert rule("mixed_bfloat16", "gal", ["resnet20", "resnet20"], True)
    assert rule("mixed_bfloat16", "gal", ["resnet26", "resnet20", "conv4", "conv3", "conv3"], True)  # MIX
    assert not rule("float32", "gal", ["resnet20"], True)
    assert not rule("mixed_bfloat16", "ce", ["resnet20"], True)  # CE-only steps repeat
    assert not rule("mixed_bfloat16", "gal", ["conv4", "conv4"], True)  # no batch norm
    assert not rule("mixed_bfloat16", "gal", ["resnet20"], False)

    monkeypatch.delenv("TF_NUM_INTEROP_THREADS", raising=False)  # conftest sets it for the suite
    seen = {}
    monkeypatch.setattr(train, "configure_threads", lambda intra, inter, n: seen.update(inter=inter))
    monkeypatch.setattr(train.training, "train", lambda cfg: {"steps": 0})
    monkeypatch.setattr(train.precision_lib, "resolve", lambda p, log=None: p)
    for extra, inter in ((["--model=resnet20", "--mode=div", "--precision=mixed_bfloat16"], 1),
                         (["--model=resnet20", "--mode=div", "--precision=mixed_bfloat16",
                           "--inter_op_threads=2"], 2),
                         (["--model=resnet20", "--mode=div", "--precision=mixed_bfloat16",
                           "--deterministic=false"], 0),
                         (["--model=conv4", "--mode=div", "--precision=mixed_bfloat16"], 0),
                         (["--model=resnet20", "--mode=baseline", "--precision=mixed_bfloat16"], 0)):
        fv = flags.FlagValues()
        train.define_flags(fv)
        fv(["train", "--dataset=cifar10", "--ensemble_size=2", "--out_dir=unused", *extra])
        train.main(["train"], fv)
        assert seen["inter"] == inter, extra
        said = "one inter-op thread, so that a re-run gives the same weights" in capsys.readouterr().out
        assert said == (inter == 1), extra

    # A thread count from $TF_NUM_INTEROP_THREADS is the user's choice too: the CLI keeps it (TF
    # reads it), and one thread there satisfies the rule without a warning.
    assert run.inter_op_threads_requested(0) == 0 and run.inter_op_threads_requested(3) == 3
    for env, inter in (("2", 0), ("1", 0)):
        monkeypatch.setenv("TF_NUM_INTEROP_THREADS", env)
        assert run.inter_op_threads_requested(0) == int(env)
        fv = flags.FlagValues()
        train.define_flags(fv)
        fv(["train", "--dataset=cifar10", "--ensemble_size=2", "--out_dir=unused", "--model=resnet20",
            "--mode=div", "--precision=mixed_bfloat16"])
        train.main(["train"], fv)
        assert seen["inter"] == inter and "one inter-op thread" not in capsys.readouterr().out

    cfg = training.TrainConfig(model="resnet20", mode="div", ensemble_size=2, precision="mixed_bfloat16")
    assert "not bitwise repeatable with the default number of inter-op threads" in run.repeatability_warning(cfg, 0)
    assert "with 2 inter-op threads" in run.repeatability_warning(cfg, 2)
    assert run.repeatability_warning(cfg, 1) is None
    assert run.repeatability_warning(training.TrainConfig(model="conv3", mode="div",
                                                          precision="mixed_bfloat16"), 0) is None

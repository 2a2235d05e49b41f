"""Training step, loop, resume, export and error handling on real MNIST."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import data, ens_adv, export, gal, models, training

from conftest import cli_env
from fakes import cli_exit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(data_dir):
    return cli_env(data_dir)


def _cli(args, data_dir, **kw):
    return subprocess.run([sys.executable, "-m", "tf_divtrain.train", *args], env=_env(data_dir),
                          capture_output=True, text=True, cwd=REPO, **kw)


def _mean_cos(members, x, y):
    grads, _, _ = gal.member_input_gradients(members, tf.constant(x), tf.constant(y))
    return float(tf.reduce_mean(gal.mean_pairwise_cosine(grads)))


def test_div_lowers_gradient_alignment_more_than_baseline(mnist):
    x_ev, y_ev = mnist.x_test[:128], mnist.y_test[:128]
    drops = {}
    for mode in ("baseline", "div"):
        cfg = training.TrainConfig(mode=mode, ensemble_size=3, batch_size=64, seed=3, out_dir="unused")
        tr = training.Trainer(cfg, mnist.input_shape, 10)
        before = _mean_cos(tr.ensemble.members, x_ev, y_ev)
        stream = data.train_stream(mnist.x_train[:2000], mnist.y_train[:2000], "mnist", 64,
                                   training.MODES[mode], seed=3)
        for xb, yb in stream.take(8):
            m = tr.train_step(xb, yb)
        drops[mode] = before - _mean_cos(tr.ensemble.members, x_ev, y_ev)
        if mode == "div":
            assert np.isfinite(float(m["gal"])) and 0 <= float(m["coherence"]) <= 1
    assert drops["div"] > drops["baseline"] + 0.02, drops


def _expected_fgsm(ens, x, labels, eps):
    """Independent FGSM: grad of the mean member CE against ``labels``, per-example eps, clip."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        lg = ens.member_logits(xt)
        loss = tf.reduce_sum(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.repeat(tf.constant(labels)[:, None], lg.shape[1], 1), lg), axis=1))
    g = tape.gradient(loss, xt).numpy()
    return np.clip(x + eps[:, None, None, None] * np.sign(g), 0, 1)


@pytest.mark.parametrize("source", ["true", "predicted"])
def test_static_fgsm_random_eps_is_fgsm_per_example(mnist_batch, source):
    ens = models.build_ensemble("conv3", (28, 28, 1), 10, 2, seed=1)  # untrained: many wrong guesses
    x, y = mnist_batch[0][:32], mnist_batch[1][:32]
    seed = tf.constant([4, 2], tf.int64)
    adv = ens_adv.fgsm_random_eps(ens.member_logits, tf.constant(x), tf.constant(y), 0.3, seed,
                                   labels=source).numpy()
    eps = np.abs(tf.random.stateless_truncated_normal([32], seed, stddev=0.15).numpy())
    # The label source: the true labels, or the argmax of the static model's average softmax.
    probs = np.exp(ens.member_logits(x).numpy())
    probs = (probs / probs.sum(-1, keepdims=True)).mean(1)
    labels = y if source == "true" else probs.argmax(-1).astype(y.dtype)
    assert source == "true" or (labels != y).any()  # the two sources really differ here
    np.testing.assert_allclose(adv, _expected_fgsm(ens, x, labels, eps), atol=1e-6)
    assert eps.max() <= 0.3 + 1e-6


def test_batch_parts_per_mode():
    assert training.batch_parts("baseline", 128) == [128]
    assert training.batch_parts("div", 128) == [64, 64]
    # Same D_adv per step in both ens_adv modes; the rest split equally.
    assert training.batch_parts("ens_adv", 128) == [64, 64]
    assert training.batch_parts("ens_adv_div", 128) == [32, 32, 64]
    assert training.batch_parts("ens_adv_div", 128, 0.25) == [48, 48, 32]
    assert training.batch_parts("ens_adv", 10, 0.3) == [7, 3]


@pytest.mark.parametrize("kw, match", [({"adv_labels": "guess"}, "adv_labels"),
                                       ({"adv_share": 0.0}, "adv_share"),
                                       ({"adv_share": 1.0}, "adv_share"),
                                       ({"precision": "float8"}, "precision"),
                                       ({"strategy": "tpu"}, "strategy")])
def test_bad_adv_precision_strategy_settings(kw, match):
    cfg = training.TrainConfig(mode="ens_adv", static_model="x", **kw)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def _train_cfg(out_dir, **kw):
    base = dict(mode="div", ensemble_size=2, batch_size=32, max_steps=2, train_examples=256,
                eval_examples=64, log_every=1, checkpoint_every=1, progress=False, out_dir=str(out_dir))
    base.update(kw)
    return training.TrainConfig(**base)


def test_train_writes_outputs_and_export_roundtrip(tmp_path, data_dir, mnist):
    cfg = _train_cfg(tmp_path / "run", data_dir=data_dir)
    metrics = training.train(cfg)
    for name in ("config.json", "metrics.json", "saved_model/saved_model.pb", "logs"):
        assert os.path.exists(tmp_path / "run" / name), name
    assert metrics["steps"] == 2 and len(metrics["member_accuracy"]) == 2
    assert set(metrics["test_gradient_stats"]) == {"gal", "coherence", "mean_cosine", "examples",
                                                   "vanishing_examples", "member_gradients_without_direction"}
    assert glob.glob(str(tmp_path / "run" / "logs" / "events.out.tfevents.*"))
    # Rebuild the ensemble from the checkpoint and compare with the exported SavedModel.
    tr = training.Trainer(cfg, mnist.input_shape, 10)
    tr.checkpoint.restore(tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))).expect_partial()
    loaded = export.load_ensemble(str(tmp_path / "run"), expect_dataset="mnist")
    x = mnist.x_test[:20]
    np.testing.assert_allclose(loaded.probabilities(x).numpy(), tr.ensemble.probabilities(x).numpy(),
                               rtol=1e-6, atol=1e-7)
    assert loaded.member_logits(x[:3]).shape == (3, 2, 10)
    assert loaded.metadata["mode"] == "div" and loaded.metadata["models"] == ["conv3", "conv3"]
    raw = tf.saved_model.load(str(tmp_path / "run" / "saved_model"))
    out = raw.signatures["serving_default"](images=tf.constant(x[:5]))
    np.testing.assert_allclose(out["probabilities"].numpy(), loaded.probabilities(x[:5]).numpy(), atol=1e-7)
    xt = tf.constant(x[:4])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        p = loaded.probabilities(xt)
        obj = tf.reduce_sum(tf.math.log(tf.gather(p, mnist.y_test[:4], batch_dims=1)))
    g = tape.gradient(obj, xt).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
    # Each weight stored once: the variables file is about the size of the weights, not twice it.
    n_bytes = 4 * 2 * models.count_params(models.build_model("conv3", (28, 28, 1)))
    var_bytes = sum(os.path.getsize(f) for f in glob.glob(str(tmp_path / "run" / "saved_model" / "variables" / "*")))
    assert n_bytes <= var_bytes < 1.2 * n_bytes
    with pytest.raises(ValueError, match="trained on 'mnist', not 'cifar10'"):
        export.load_ensemble(str(tmp_path / "run"), expect_dataset="cifar10")
    with pytest.raises(FileNotFoundError, match="No tf_divtrain export"):
        export.load_ensemble(str(tmp_path / "nowhere"))


def _ckpt_weights(path):
    reader = tf.train.load_checkpoint(path)
    # Member weights (reached through the optimizer's variable list), Adam moments and the step.
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("optimizer/", "step/"))}


# Slow: a kill timed against a real process. test_faults' in-process chain (a crash at every write
# point, then the same run resumed, bitwise against an uninterrupted run) covers the behaviour in
# the default tier; its slow twin sends real SIGKILLs at every write point.
@pytest.mark.slow
@pytest.mark.e2e
def test_resume_after_kill_gives_the_same_weights(tmp_path, data_dir):
    k = 8
    args = ["--mode=div", "--ensemble_size=2", "--batch_size=64", "--train_examples=2000",
            f"--max_steps={k}", "--checkpoint_every=1", "--eval_examples=50", "--progress=false",
            "--log_every=100"]
    straight = _cli(args + [f"--out_dir={tmp_path}/straight"], data_dir)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = f"{tmp_path}/killed"
    proc = subprocess.Popen([sys.executable, "-m", "tf_divtrain.train", *args, f"--out_dir={run}"],
                            env=_env(data_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def latest_step():  # what a resume would see: the checkpoint state file, not a half-written save
        latest = tf.train.latest_checkpoint(f"{run}/checkpoints")
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    while latest_step() < k // 2:
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(f"{run}/checkpoints").rsplit("-", 1)[1])
    assert k // 2 <= killed_at < k and not os.path.exists(f"{run}/metrics.json")
    resumed = _cli(args + [f"--out_dir={run}"], data_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    a = _ckpt_weights(f"{tmp_path}/straight/checkpoints/ckpt-{k}")
    b = _ckpt_weights(f"{run}/checkpoints/ckpt-{k}")
    # 2 members x 10 weight tensors, x3 with Adam's two moments, + iterations, lr, step.
    assert a.keys() == b.keys() and len(a) == 2 * 10 * 3 + 3
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_config_mismatch_refuses_and_fresh_moves_aside(tmp_path, data_dir):
    run = tmp_path / "run"
    training.train(_train_cfg(run, data_dir=data_dir, max_steps=1))
    with pytest.raises(training.TrainingError, match=r"different config \(gal_lambda: 0.5 -> 0.1\)"):
        training.train(_train_cfg(run, data_dir=data_dir, max_steps=1, gal_lambda=0.1))
    # Changing only max_steps is a resumption, not a new config.
    m = training.train(_train_cfg(run, data_dir=data_dir, max_steps=2))
    assert m["steps"] == 2
    training.train(_train_cfg(run, data_dir=data_dir, max_steps=1, gal_lambda=0.1, fresh=True))
    backups = glob.glob(str(run) + ".old-*")
    assert len(backups) == 1 and os.path.exists(os.path.join(backups[0], "checkpoints"))
    assert json.load(open(run / "config.json"))["gal_lambda"] == 0.1


def test_unwritable_out_dir(tmp_path, data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(training.TrainingError, match="Cannot write to out_dir"):
        training.train(_train_cfg(blocker / "run", data_dir=data_dir))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    run = tmp_path / "nan"
    with pytest.raises(training.TrainingError, match="Non-finite loss") as e:
        training.train(_train_cfg(run, data_dir=data_dir, mode="baseline", learning_rate=1e30,
                                  max_steps=20))
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest is not None and latest in str(e.value)
    bad_step = int(str(e.value).split("at step ")[1].split(";")[0])
    assert int(latest.rsplit("-", 1)[1]) == bad_step - 1  # nothing saved from the NaN step on
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("kw, pattern", [
    (dict(noise_eps=1.5), r"noise_eps=1.5 is outside \[0, 1\]"),
    (dict(adv_eps=-0.1), r"adv_eps=-0.1 is outside \[0, 1\]"),
    (dict(gal_lambda=-1.0), "gal_lambda must be >= 0"),
    (dict(ensemble_size=1), "at least 2 members"),
    (dict(dataset="svhn"), "Unknown dataset 'svhn'"),
    (dict(model="vgg"), "Unknown model 'vgg'"),
    (dict(mode="adv"), "Unknown mode 'adv'"),
    (dict(mode="ens_adv", static_model=""), "needs --static_model"),
])
def test_config_validation(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        training.TrainConfig(mode=kw.pop("mode", "div"), **kw).validate()


@pytest.mark.e2e
def test_cli_validators_and_missing_static(tmp_path, data_dir, capsys):
    from tf_divtrain import train

    def run(*args):
        return cli_exit(capsys, train, ["train", "--out_dir=" + str(tmp_path / "x"),
                                        f"--data_dir={data_dir}", *args])

    code, err = run("--noise_eps=1.5")
    assert code != 0 and "noise_eps=1.5 is outside [0, 1]" in err  # TrainConfig.validate's rule
    code, err = run("--mode=div", "--ensemble_size=1")
    assert code != 0 and "at least 2 members" in err
    code, err = run("--mode=ens_adv", "--static_model=" + str(tmp_path / "none"), "--max_steps=1")
    assert code == 2 and "No tf_divtrain export found" in err
    assert not (tmp_path / "x").exists()  # refused before writing anything


@pytest.mark.e2e
def test_mirrored_step_equals_default_step(data_dir):
    script = os.path.join(REPO, "tests", "scripts", "mirrored_equivalence.py")
    r = subprocess.run([sys.executable, script, "div", data_dir], env=_env(data_dir),
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    vals = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines() if " " in line)
    assert float(vals["MOVED"]) > 1e-4  # the step really changed the weights
    assert float(vals["WEIGHT_DIFF"]) < 1e-5
    l0, l1 = map(float, vals["LOSS"].split())
    assert abs(l0 - l1) < 1e-5

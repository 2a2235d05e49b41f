"""Training modes adp / trs / dverge (issue 14) through the Trainer and train(): each mode moves its
own diversity term, the schedules (Trainer.begin_epoch), stateless seeds, determinism and resume,
metrics plumbing, and every bad-input error. Tiny settings: 2-3 Conv-3 members, batch 16-32."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import step as step_lib
from tf_divtrain import training
from tf_divtrain.methods import adp, config_from_string, dverge, parse_params, trs
from tf_divtrain.methods.objective import MethodObjective

from fakes import cli_exit


def _cfg(mode, **kw):
    base = dict(mode=mode, ensemble_size=3, batch_size=32, seed=1, out_dir="unused")
    base.update(kw)
    return training.TrainConfig(**base).validate()


def _trainer(mode, **kw):
    return training.Trainer(_cfg(mode, **kw), (28, 28, 1), 10)


def _weights(tr):
    return [w for m in tr.ensemble.members for w in m.get_weights()]


# ----------------------------------------------------------------------------------------------
# Each mode lowers its own diversity term (compared with baseline steps from the same init).


def _adp_term(members, x, y):
    out = adp.objective(members, x, y, training=False)  # defaults alpha 2, beta 0.5
    return float(np.mean(-2.0 * out["adp_entropy"] - 0.5 * out["adp_logdet"]))


def _trs_cos(members, x, y):
    return float(np.mean(trs.objective(members, x, y, training=False)["trs_cos"]))  # clean |cos|


@pytest.mark.parametrize("mode, term, params, margin", [
    ("adp", _adp_term, "", 2.0),  # measured: ADP ~ -4.3 vs baseline ~ +0.7..1.0 (seeds 1-3)
    ("trs", _trs_cos, "pgd_steps=1", 0.5),  # measured: TRS ~ 0.10 vs baseline ~ 0.55-0.63
])
def test_mode_lowers_its_term_more_than_baseline(mnist_batch, mode, term, params, margin):
    """Three steps on one fixed real batch, the method vs baseline from the same initial weights: the
    method's regulariser term on that batch ends far lower (ADP: -alpha H - beta log det, TRS: the
    mean |cosine| of member input gradients, as a ratio)."""
    x, y = tf.constant(mnist_batch[0][:32]), tf.constant(mnist_batch[1][:32])
    after = {}
    for run in (mode, "baseline"):
        tr = _trainer(run, method_params=params if run == mode else "")
        for _ in range(3):
            metrics = tr.train_step(x, y)
        after[run] = term(tr.ensemble.members, x, y)
    assert all(np.all(np.isfinite(v.numpy())) for v in metrics.values())
    if mode == "adp":
        assert after["adp"] < after["baseline"] - margin, after
    else:
        assert after["trs"] < margin * after["baseline"], after


def test_dverge_step_trains_on_other_members_distilled_images(mnist_batch):
    """The DVERGE step's loss is exactly the cross-training CE on the images distilled from this
    step's seeded targets (checked by recomputing them outside the Trainer), and one step lowers that
    loss more than a baseline step from the same weights (Adam's first step is a sign step, the
    steepest L-inf descent of the loss it is given: first-order, only the DVERGE step can be best)."""
    x, y = tf.constant(mnist_batch[0][:32]), tf.constant(mnist_batch[1][:32])
    params = "eps=0.3,step_size=0.05,steps=3"
    cfg = config_from_string("dverge", params)
    after = {}
    for run in ("dverge", "baseline"):
        tr = _trainer(run, method_params=params if run == "dverge" else "")
        check = MethodObjective("dverge", cfg, seed=1, step=tf.Variable(0, dtype=tf.int64))
        check.begin_epoch(0, 1, tr.ensemble.members)
        xd = dverge.distill_members(tr.ensemble.members, x, check.dverge_targets(x), check.layer,
                                    **cfg.distill_kwargs())
        loss = lambda: float(np.mean(dverge.objective(tr.ensemble.members, xd, y, training=False)["loss"]))  # noqa: E731
        before = loss()
        metrics = tr.train_step(x, y)
        if run == "dverge":
            assert float(metrics["loss"]) == pytest.approx(before, rel=1e-5)
            assert tr.objective.layer == check.layer
            assert float(metrics["dverge_cross_ce"]) > 0
        after[run] = loss()
    assert after["dverge"] < before and after["dverge"] < after["baseline"], (before, after)


# ----------------------------------------------------------------------------------------------
# Schedules, seeds, determinism.


def test_begin_epoch_sets_trs_radius_and_dverge_layer():
    tr = _trainer("trs", ensemble_size=2, method_params="init_eps=0.1,adv_eps=0.3")
    for epoch in range(4):
        assert tr.begin_epoch(epoch, 4) == {"trs_smooth_eps": pytest.approx(0.1 + 0.2 * epoch / 4)}
        assert float(tr.objective.smooth_eps.numpy()) == pytest.approx(0.1 + 0.2 * epoch / 4)
    assert _trainer("trs", ensemble_size=2, method_params="plus_adv=false").begin_epoch(3, 4) == {}
    assert _trainer("adp", ensemble_size=2).begin_epoch(3, 4) == {}
    tr = _trainer("dverge", ensemble_size=2, seed=0)
    cfg = tr.cfg.method_config()
    member = tr.ensemble.members[0]
    layers = [tr.begin_epoch(e, 10)["dverge_layer"] for e in range(10)]
    assert layers == [cfg.pick_layer(member, e, 0) for e in range(10)]
    assert set(layers) <= set(dverge.distill_layer_choices(member)) and len(set(layers)) > 1
    assert tr._trace_key() == layers[-1]
    fixed = _trainer("dverge", ensemble_size=2, method_params="layer=3")
    assert [fixed.begin_epoch(e, 3)["dverge_layer"] for e in range(3)] == [3, 3, 3]


def test_dverge_retraces_once_per_distinct_layer(mnist_batch):
    tr = _trainer("dverge", ensemble_size=2, batch_size=16, method_params="steps=1", seed=0)
    member = tr.ensemble.members[0]
    layers = [tr.cfg.method_config().pick_layer(member, e, 0) for e in range(3)]
    assert layers[0] != layers[1]  # seed 0: 12 then 6 on Conv-3
    x, y = tf.constant(mnist_batch[0][:16]), tf.constant(mnist_batch[1][:16])
    for epoch, steps in ((0, 2), (1, 2), (0, 1)):
        tr.begin_epoch(epoch, 3)
        for _ in range(steps):
            tr.train_step(x, y)
    assert tr._train_step.experimental_get_tracing_count() == 2  # epoch 0's trace is reused


def test_dverge_targets_are_a_seeded_derangement_of_the_batch():
    step = tf.Variable(0, dtype=tf.int64)
    obj = MethodObjective("dverge", seed=3, step=step)
    x = tf.reshape(tf.range(10, dtype=tf.float32), [10, 1, 1, 1])
    a = obj.dverge_targets(x).numpy().ravel()
    assert sorted(a) == list(range(10)) and np.all(a != np.arange(10))  # a permutation, no fixed point
    np.testing.assert_array_equal(obj.dverge_targets(x).numpy().ravel(), a)  # stateless
    step.assign(1)
    assert not np.array_equal(obj.dverge_targets(x).numpy().ravel(), a)  # a new draw per step
    with pytest.raises(ValueError, match="needs the global step"):
        MethodObjective("trs").step_seed(1)


@pytest.mark.parametrize("mode, params", [("dverge", "steps=2,rand_start=true"), ("trs", "pgd_steps=1")])
def test_same_seed_gives_the_same_weights(mnist_batch, mode, params):
    """Two runs with the same seed: bitwise the same weights after 2 steps (stateless random starts
    and targets); the step's randomness really enters (another seed for the objective alone moves
    the weights differently)."""
    x, y = tf.constant(mnist_batch[0][:16]), tf.constant(mnist_batch[1][:16])
    runs = []
    for seed in (2, 2, 3):
        tr = _trainer(mode, ensemble_size=2, batch_size=16, method_params=params)
        tr.objective.seed = seed  # same initial weights (cfg.seed), only the step seeds differ
        for _ in range(2):
            tr.train_step(x, y)
        runs.append(_weights(tr))
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - c).max()) for a, c in zip(runs[0], runs[2])) > 0


def test_modes_run_under_mixed_bfloat16(mnist_batch):
    x, y = tf.constant(mnist_batch[0][:16]), tf.constant(mnist_batch[1][:16])
    for mode, params, key in (("adp", "", "adp_logdet"), ("trs", "pgd_steps=1", "trs_cos"),
                              ("dverge", "steps=1", "dverge_cross_ce")):
        tr = _trainer(mode, ensemble_size=2, batch_size=16, method_params=params,
                      precision="mixed_bfloat16")
        before = _weights(tr)
        m = {k: np.asarray(v) for k, v in tr.train_step(x, y).items()}
        assert all(np.all(np.isfinite(v)) for v in m.values()) and key in m, (mode, m)
        assert any(float(np.abs(a - b).max()) > 0 for a, b in zip(before, _weights(tr))), mode
        assert tr.ensemble.members[0].compute_dtype == "bfloat16"


# ----------------------------------------------------------------------------------------------
# train(): begin_epoch from the loop (also on resume), metrics.json / TensorBoard, resume equality.


def _train_cfg(out_dir, data_dir, **kw):
    base = dict(mode="adp", ensemble_size=2, batch_size=16, epochs=3, train_examples=64,
                eval_examples=16, log_every=100, checkpoint_every=100, progress=False,
                out_dir=str(out_dir), data_dir=data_dir)
    base.update(kw)
    return training.TrainConfig(**base)


def test_train_calls_begin_epoch_each_epoch_and_on_resume(tmp_path, data_dir, monkeypatch):
    calls = []
    original = training.Trainer.begin_epoch

    def record(self, epoch, epochs):
        calls.append((epoch, epochs))
        return original(self, epoch, epochs)

    monkeypatch.setattr(training.Trainer, "begin_epoch", record)
    run = tmp_path / "adp"
    # 64 images / batch 16 = 4 steps per epoch; 3 epochs. Session 1: steps 0-5; session 2: 6-8.
    m = training.train(_train_cfg(run, data_dir, max_steps=6))
    assert calls == [(0, 3), (0, 3), (1, 3)]  # Trainer.__init__, then steps 0 and 4
    calls.clear()
    training.train(_train_cfg(run, data_dir, max_steps=9))
    assert calls == [(0, 3), (1, 3), (2, 3)]  # __init__, the resumed epoch (step 6), step 8
    # The method's [B] metrics reach metrics.json and TensorBoard; GAL/coherence stats for every mode.
    assert {"adp_entropy", "adp_logdet", "train_acc"} <= set(m["final_train"])
    assert {"gal", "coherence", "mean_cosine", "vanishing_examples"} <= set(m["test_gradient_stats"])
    tags = set()
    for f in (run / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            tags |= {v.tag for v in event.summary.value}
    assert {"train/adp_entropy", "train/adp_logdet", "train/loss"} <= tags
    assert json.load(open(run / "config.json"))["method_params"] == ""


def _ckpt(path):
    reader = tf.train.load_checkpoint(path)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("optimizer/", "step/"))}


def test_trs_resume_in_a_later_epoch_equals_an_uninterrupted_run(tmp_path, data_dir):
    """Stopped after step 5 (inside epoch 1, whose PGD radius differs from epoch 0's) and resumed:
    the same weights as 6 steps straight, so the resumed session sets epoch 1's schedule and draws
    the same PGD starts."""
    kw = dict(mode="trs", method_params="pgd_steps=1,init_eps=0.1,adv_eps=0.3")
    training.train(_train_cfg(tmp_path / "straight", data_dir, max_steps=6, **kw))
    training.train(_train_cfg(tmp_path / "split", data_dir, max_steps=5, **kw))
    training.train(_train_cfg(tmp_path / "split", data_dir, max_steps=6, **kw))
    a = _ckpt(str(tmp_path / "straight" / "checkpoints" / "ckpt-6"))
    b = _ckpt(str(tmp_path / "split" / "checkpoints" / "ckpt-6"))
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# metric_sums, parsing, bad input.


def test_metric_sums_adds_every_rank1_float_entry():
    out = {"loss": tf.ones([4]), "ce": tf.ones([4, 2]), "logits": tf.zeros([4, 2, 3]),
           "adp_entropy": tf.fill([4], 0.5), "dverge_cross_ce": tf.constant([1.0, 2, 3, 4], tf.float64),
           "clean_ce": tf.ones([4, 2]), "index": tf.range(4)}
    sums = step_lib.metric_sums(out, tf.zeros([4], tf.int64))
    assert float(sums["adp_entropy"]) == 2.0 and float(sums["dverge_cross_ce"]) == 10.0
    assert sums["dverge_cross_ce"].dtype == tf.float32
    assert "clean_ce" not in sums and "index" not in sums and float(sums["count"]) == 4


def test_method_params_parsing():
    assert parse_params("trs", "coeff=1, plus_adv=false,pgd_steps=3") == {
        "coeff": 1.0, "plus_adv": False, "pgd_steps": 3}
    assert parse_params("dverge", "layer=none,rand_start=1") == {"layer": None, "rand_start": True}
    assert config_from_string("adp", "").alpha == 2.0
    assert _cfg("dverge", method_params="eps=0.35,step_size=0.035").method_config().eps == 0.35
    assert _cfg("div").method_config() is None


@pytest.mark.parametrize("kw, pattern", [
    (dict(mode="gal"), r"Unknown mode 'gal'; valid: baseline, div, ens_adv, ens_adv_div, adp, trs, dverge"),
    (dict(mode="adp", method_params="gamma=1"), r"adp: unknown hyper-parameter\(s\) gamma; valid: alpha"),
    (dict(mode="adp", method_params="alpha="), r"adp: alpha must be a real number in \[0, inf\), got ''"),
    (dict(mode="adp", method_params="alpha"), r"'alpha' is not name=value; write e.g. --method_params=alpha="),
    (dict(mode="adp", method_params="alpha=1,alpha=2"), r"sets 'alpha' twice"),
    (dict(mode="trs", method_params="init_eps=1.5"), r"trs: init_eps=1.5 is outside the valid range \[0, 1\]"),
    (dict(mode="trs", method_params="pgd_steps=1.5"), r"trs: pgd_steps must be an integer"),
    (dict(mode="dverge", method_params="layer=0"), r"dverge: layer=0 is outside the valid range \[1, inf\)"),
    (dict(mode="div", method_params="alpha=1"), r"only for the modes adp, trs, dverge; mode=div takes none"),
    (dict(mode="dverge", ensemble_size=1), r"mode=dverge needs an ensemble of at least 2 members.*--ensemble_size"),
    (dict(mode="dverge", model="conv3,resnet20"), r"needs members of one architecture .* got conv3, resnet20"),
    (dict(mode="trs", precision="mixed_float16"), r"mode=trs does not support precision=mixed_float16: TRS's "
                                                  r"input-gradient tapes .* are not loss-scaled.*mixed_bfloat16"),
    (dict(mode="dverge", precision="mixed_float16"), r"DVERGE's feature-distillation tapes are not loss-scaled"),
])
def test_bad_method_settings_are_named(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _cfg(**kw)


def test_adp_accepts_mixed_float16():
    assert _cfg("adp", precision="mixed_float16").precision == "mixed_float16"  # no inner tape


def test_dverge_layer_out_of_range_names_the_fix(tmp_path, data_dir, capsys):
    with pytest.raises(ValueError, match=r"layer=13 is out of range .* valid layers are 1\.\.12.*"
                                         r"Fix: --method_params=layer=K with K one of the candidate "
                                         r"feature layers \[1, 3, 6, 10, 12\]"):
        _trainer("dverge", ensemble_size=2, method_params="layer=13")
    from tf_divtrain import train

    code, err = cli_exit(capsys, train, ["train", "--mode=dverge", "--ensemble_size=2",
                                         "--method_params=layer=13", "--max_steps=1",
                                         f"--data_dir={data_dir}", f"--out_dir={tmp_path}/x"])
    assert code == 2 and err.startswith("error: ") and "Fix: --method_params=layer=K" in err, err
    assert not (tmp_path / "x").exists()  # refused before writing anything

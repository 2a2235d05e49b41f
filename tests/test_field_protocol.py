"""evaluate --protocol=field (issue 23) end to end on tiny exports, checked against direct attack
calls and a by-hand robust-to-all; bad input fails before anything is written."""

import os

import keras
import numpy as np
import pytest
from absl import flags as absl_flags

from tf_divtrain import attacks, evaluate, evaluation, export, field, models

META = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}


def fit(ens, x, y, steps):
    opt = keras.optimizers.Adam(3e-3)
    import tensorflow as tf
    for i in range(steps):
        xb, yb = x[i * 50 % len(x):][:50], y[i * 50 % len(x):][:50]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                np.repeat(yb[:, None], ens.size, 1), ens.member_logits(xb), from_logits=True))
        opt.apply_gradients(zip(tape.gradient(loss, ens.trainable_variables), ens.trainable_variables))
    return ens


@pytest.fixture(scope="module")
def exports(tmp_path_factory, mnist, tiny_cnn):
    root = tmp_path_factory.mktemp("field_exports")
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    res = models.Ensemble([models.resnet20((28, 28, 1), 10, seed=0)])  # untrained: SGM's hook is what matters
    out = {"res": export.export_ensemble(res, str(root / "res"), dict(META, models=["resnet20"]))}
    for name, seed in (("a", 1), ("b", 7)):
        out[name] = export.export_ensemble(fit(models.Ensemble([tiny_cnn(seed, strides=3)]), x, y, 30),
                                           str(root / name), dict(META))
    return out


def test_field_protocol_end_to_end(exports, tmp_path, data_dir, mnist):
    kw = dict(dataset="mnist", data_dir=data_dir, eps=[0.2], num_examples=12, batch_size=6,
              seed=3, cache_dir=str(tmp_path / "c"), progress=False, protocol="field",
              field_options=dict(families=["mpgd", "sgm"], restarts=2, steps=2))
    targets = [("T_A", exports["a"]), ("T_B", exports["b"])]
    res = evaluation.evaluate(exports["res"], targets, **kw)
    names = ["mpgd_ce_r0", "mpgd_ce_r1", "mpgd_cw_r0", "mpgd_cw_r1", "sgm_ce", "sgm_cw"]
    assert res["attacks"] == names and res["protocol"] == "field"
    x, y = mnist.x_test[:12], mnist.y_test[:12]
    sur = export.load_ensemble(exports["res"])
    # the cached sets are the attacks called directly, batch b seeded [seed, b]
    direct = {
        "mpgd_cw_r1": lambda xb, yb, s: attacks.momentum_pgd(sur, xb, yb, 0.2, nb_iter=2, first_restart=1,
                                                             loss="cw", confidence=0.1, seed=s),
        "sgm_ce": lambda xb, yb, s: attacks.sgm(sur, xb, yb, 0.2, nb_iter=2, seed=s)}
    for name, fn in direct.items():
        want = np.concatenate([fn(x[i:i + 6], y[i:i + 6], np.array([3, i // 6])).numpy() for i in (0, 6)])
        got = np.load(res["crafting"][name]["0.2"]["path"])
        np.testing.assert_allclose(got, want, atol=1e-6)
        tgt = export.load_ensemble(exports["b"])
        row = next(r for r in res["rows"] if r["label"] == "T_B")
        np.testing.assert_array_equal(evaluation.per_example_mask(row, name, "0.2"),
                                      tgt.probabilities(got).numpy().argmax(1) == y)
    assert not np.array_equal(np.load(res["crafting"]["sgm_ce"]["0.2"]["path"]),
                              np.load(res["crafting"]["mpgd_ce_r0"]["0.2"]["path"]))
    for row in res["rows"]:
        masks = [evaluation.per_example_mask(row, n, "0.2") for n in names]
        accs = [row["attacks"][n]["0.2"] for n in names]
        assert row["robust_to_all"]["0.2"] == pytest.approx(np.mean(np.logical_and.reduce(masks)))
        clean = evaluation.per_example_mask(row)
        assert row["robust_to_all_and_clean"]["0.2"] == pytest.approx(
            np.mean(np.logical_and.reduce(masks + [clean])))
        assert row["worst_set"]["0.2"] == {"set": names[int(np.argmin(accs))], "accuracy": min(accs)}
        assert row["robust_to_all"]["0.2"] <= min(accs)
    a, b = res["rows"][0], res["rows"][1]
    assert evaluation.paired_cell(a, b, "sgm_cw", "0.2")["n"] == 12  # the paired statistics apply
    table = evaluation.format_table2(res)
    assert "Field protocol (DVERGE / TRS): 6 sets per eps" in table
    assert "12 test images (DVERGE / TRS: 1000)" in table and "2 steps per attack" in table
    assert "M-DI²-FGSM left out (not asked for)" in table and "PGD-50 left out" in table
    again = evaluation.evaluate(exports["res"], targets, **kw)
    assert all(c["0.2"]["cached"] for c in again["crafting"].values())
    paths = evaluation.write_reports(res, str(tmp_path / "out"))
    assert os.path.isfile(paths["json"]) and "SGM CE" in open(paths["table"]).read()


def test_field_grid_defaults_and_restart_rule():
    sets = field.attack_sets()
    assert len(sets) == 2 * 3 + 2 + 2 + 2 * 3  # M-PGD x3, M-DI, SGM, PGD-50 x3; CE and CW
    assert sets["mpgd_cw_r2"]["options"] == {"loss": "cw", "confidence": 0.1, "nb_iter": 100,
                                             "first_restart": 2}
    assert sets["pgd50_ce_r0"]["options"] == {"loss": "ce", "nb_iter": 50, "decay": 0.0,
                                              "first_restart": 0}
    assert field.default_eps("cifar10") == (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07)
    m = [np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 1], bool)]
    np.testing.assert_array_equal(field.robust_to_all(m), [1, 0, 0, 1])
    np.testing.assert_array_equal(field.robust_to_all(m, np.array([0, 1, 1, 1], bool)), [0, 0, 0, 1])


def test_field_bad_input_writes_nothing(exports, tmp_path, data_dir):
    cache = tmp_path / "c"
    kw = dict(dataset="mnist", data_dir=data_dir, num_examples=10, cache_dir=str(cache),
              progress=False)
    t = [("T_A", exports["a"])]
    cases = [(dict(protocol="fieldish"), "Unknown protocol"),
             (dict(protocol="field", field_options={"families": ["sgm"]}), "SGM needs residual"),
             (dict(protocol="field", field_options={"restarts": 0}), "restarts"),
             (dict(protocol="field", field_options={"families": ["pgd7"]}), "Unknown field attack"),
             (dict(protocol="field", eps=[1.5]), "outside"),
             (dict(protocol="field", attack_options={"fgsm": {}}), "paper protocol")]
    for extra, msg in cases:
        with pytest.raises(evaluation.EvaluationError, match=msg):
            evaluation.evaluate(exports["b"], t, **dict(kw, **extra))
    assert not cache.exists()
    # the default grid on a non-residual surrogate leaves SGM out and says so (no crafting here)
    fv = absl_flags.FlagValues()
    evaluate.define_flags(fv)
    out = tmp_path / "o"
    for bad in (["--protocol=fieldish"], ["--protocol=field", "--restarts=0"],
                ["--protocol=field", "--field_attacks=sgm"], ["--steps=5"]):
        fv.unparse_flags()
        fv(["prog", f"--surrogate_dir={exports['a']}", f"--targets=T={exports['b']}",
            f"--out_dir={out}", f"--data_dir={data_dir}", "--num_examples=10"] + bad)
        with pytest.raises(SystemExit) as e:
            evaluate.main(["prog"], fv)
        assert e.value.code == 2, bad
    assert not out.exists()

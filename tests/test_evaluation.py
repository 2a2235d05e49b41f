"""Transfer evaluation (Table 2 pipeline): validation, cache, reports, CLI end to end."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_divtrain import results as results_lib
from tf_divtrain import attacks, evaluation, export, models
from fakes import META, fit_briefly, tiny_member

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("exports")
    x, y = mnist.x_train[:2560], mnist.y_train[:2560]
    out = {}
    for name, seeds in (("surrogate", (1, 3)), ("base", (5, 7)), ("div", (9, 11))):
        ens = fit_briefly(models.Ensemble([tiny_member(s) for s in seeds]), x, y)
        out[name] = export.export_ensemble(ens, str(root / name), dict(META))
    out["fashion"] = export.export_ensemble(models.Ensemble([tiny_member(13)]), str(root / "fashion"),
                                            dict(META, dataset="fashion_mnist"))
    out["cifar_shape"] = export.export_ensemble(
        models.Ensemble([tiny_member(15, (32, 32, 3))]), str(root / "cifar_shape"),
        dict(META, input_shape=[32, 32, 3]))
    return out


def test_cache_hit_returns_identical_arrays_without_recomputing(exports, mnist, tmp_path, monkeypatch):
    sur = export.load_ensemble(exports["surrogate"])
    sid = evaluation.fingerprint(export.find_export(exports["surrogate"]))
    x, y = mnist.x_test[:40], mnist.y_test[:40]
    calls = []
    real = attacks.make_attack

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(evaluation.attacks_lib, "make_attack", counting)
    kw = dict(cache_dir=str(tmp_path), batch_size=16, seed=3, progress=False)
    first, info1 = evaluation.craft_cached(sur, sid, "mnist", "rfgsm", 0.3, x, y, **kw)
    second, info2 = evaluation.craft_cached(sur, sid, "mnist", "rfgsm", 0.3, x, y, **kw)
    assert calls == ["rfgsm"]  # crafted once
    assert info1["cached"] is False and info2["cached"] is True
    np.testing.assert_array_equal(first, second)
    assert info2["images_per_sec"] == pytest.approx(info1["images_per_sec"])
    assert np.all(np.abs(first - x) <= 0.3 + 1e-6) and not np.array_equal(first, x)
    # other key parts -> a different file, crafted anew
    evaluation.craft_cached(sur, sid, "mnist", "rfgsm", 0.3, x, y, **dict(kw, seed=4))
    evaluation.craft_cached(sur, sid, "mnist", "rfgsm", 0.1, x, y, **kw)
    assert calls == ["rfgsm"] * 3
    files = sorted(os.listdir(tmp_path))
    assert len([f for f in files if f.endswith(".npy")]) == 3
    assert not [f for f in files if ".tmp" in f]  # atomic writes leave no temp files
    # the cached array is the one batched crafting gives (batch b uses seed [3, b])
    atk = real("rfgsm", sur, 0.3)
    np.testing.assert_allclose(first[16:32], atk(x[16:32], y[16:32], np.array([3, 1])).numpy(), atol=1e-6)


def test_validation_errors_before_any_work(exports, tmp_path):
    t = [("T_Base", exports["base"])]
    common = dict(num_examples=10, cache_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(evaluation.EvaluationError, match="Unknown attack.*valid names: fgsm"):
        evaluation.evaluate(exports["surrogate"], t, "mnist", attacks=["fgsm", "deepfool"], **common)
    with pytest.raises(evaluation.EvaluationError, match=r"outside \[0, 1\]"):
        evaluation.evaluate(exports["surrogate"], t, "mnist", eps=[0.1, 3.0], **common)
    with pytest.raises(evaluation.EvaluationError, match="trained on 'fashion_mnist'.*'mnist'"):
        evaluation.evaluate(exports["surrogate"], [("T", exports["fashion"])], "mnist", **common)
    with pytest.raises(evaluation.EvaluationError, match="surrogate.*trained on 'mnist'.*'fashion_mnist'"):
        evaluation.evaluate(exports["surrogate"], t, "fashion_mnist", **common)
    with pytest.raises(evaluation.EvaluationError, match=r"inputs of shape \[32, 32, 3\]"):
        evaluation.evaluate(exports["surrogate"], [("T", exports["cifar_shape"])], "mnist", **common)
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(evaluation.EvaluationError, match=f"target T_X.*{missing}.*tf_divtrain.train"):
        evaluation.evaluate(exports["surrogate"], [("T_X", missing)], "mnist", **common)
    with pytest.raises(evaluation.EvaluationError, match=f"surrogate.*{missing}"):
        evaluation.evaluate(missing, t, "mnist", **common)
    with pytest.raises(evaluation.EvaluationError, match="LABEL=DIR"):
        evaluation.evaluate(exports["surrogate"], "runs/base", "mnist", **common)
    assert not os.path.exists(tmp_path / "c")  # nothing was crafted


def test_attack_loss_options_and_their_validation(exports, tmp_path):
    assert evaluation.attack_loss_options(attacks.ATTACKS, "ce") == {}  # default: old cache keys
    assert evaluation.attack_loss_options(attacks.ATTACKS, "prediction_ce") == {
        a: {"loss": "prediction_ce"} for a in ("fgsm", "rfgsm", "ifgsm", "mifgsm")}
    assert evaluation.attack_loss_options(["pgd_cw"], "prediction_ce") == {}
    with pytest.raises(evaluation.EvaluationError, match="Unknown attack loss 'cw'.*prediction_ce"):
        evaluation.attack_loss_options(["fgsm"], "cw")
    t = [("T_Base", exports["base"])]
    common = dict(num_examples=10, cache_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(evaluation.EvaluationError, match="Unknown loss 'mean'"):
        evaluation.evaluate(exports["surrogate"], t, "mnist", attack_options={"fgsm": {"loss": "mean"}},
                            **common)
    with pytest.raises(evaluation.EvaluationError, match=r"Unknown option\(s\) \['loss'\].*pgd_cw"):
        evaluation.evaluate(exports["surrogate"], t, "mnist",
                            attack_options={"pgd_cw": {"loss": "prediction_ce"}}, **common)
    # bad option VALUES fail as early, with the attack's own message (one dry run per eps)
    for opts, msg in (({"rfgsm": {"variant": "madry"}}, "Unknown R-FGSM variant 'madry'"),
                      ({"rfgsm": {"variant": "tramer", "alpha": 0.2}}, r"eps=0.1 .*alpha=0.2 must be in"),
                      ({"pgd_cw": {"nb_iter": 0}}, "nb_iter=0 must be an integer >= 1")):
        with pytest.raises(evaluation.EvaluationError, match=msg):
            evaluation.evaluate(exports["surrogate"], t, "mnist", attack_options=opts, eps=[0.3, 0.1],
                                **common)
    assert not os.path.exists(tmp_path / "c")  # nothing was crafted


def test_parse_attack_options_merges_and_validates():
    parse = evaluation.parse_attack_options
    assert parse(None, attacks.ATTACKS) == {}
    assert parse('{"rfgsm": {"variant": "tramer"}, "pgd_cw": {"nb_iter": 100}}', attacks.ATTACKS,
                 "prediction_ce") == {
        "fgsm": {"loss": "prediction_ce"}, "rfgsm": {"loss": "prediction_ce", "variant": "tramer"},
        "ifgsm": {"loss": "prediction_ce"}, "mifgsm": {"loss": "prediction_ce"},
        "pgd_cw": {"nb_iter": 100}}
    assert parse('{"ifgsm": {"loss": "prediction_ce"}}', ["ifgsm"], "prediction_ce") == {
        "ifgsm": {"loss": "prediction_ce"}}  # the same value both ways is fine
    for text, msg in (("{rfgsm", "not valid JSON"), ('["rfgsm"]', "map attack names"),
                      ('{"rfgsm": 3}', "map attack names"), ('{"deepfool": {}}', "Unknown attack"),
                      ('{"mifgsm": {}}', "not among the attacks run"),
                      ('{"fgsm": {"nb_iter": 3}}', r"Unknown option\(s\) \['nb_iter'\] for attack 'fgsm'"),
                      ('{"fgsm": {"loss": "ce"}}', "loss='ce' but --attack_loss=prediction_ce"),
                      ('{"fgsm": {"loss": "hinge"}}', "Unknown loss 'hinge'")):
        with pytest.raises(evaluation.EvaluationError, match=msg):
            parse(text, ["fgsm", "rfgsm"], "prediction_ce" if "'ce' but" in msg else "ce")


def test_cli_passes_attack_options_to_evaluate(monkeypatch):
    from absl import flags as absl_flags

    from tf_divtrain import evaluate

    seen = {}

    class Stop(Exception):
        pass

    def fake_evaluate(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(evaluate.evaluation, "evaluate", fake_evaluate)
    fv = absl_flags.FlagValues()
    evaluate.define_flags(fv)
    fv(["prog", "--surrogate_dir=s", "--targets=T=t", "--out_dir=o", "--attacks=rfgsm,pgd_cw",
        "--attack_loss=prediction_ce", '--attack_options={"pgd_cw": {"confidence": 5.0}}'])
    with pytest.raises(Stop):
        evaluate.main(["prog"], fv)
    assert seen["attack_options"] == {"rfgsm": {"loss": "prediction_ce"}, "pgd_cw": {"confidence": 5.0}}
    fv.attack_options = '{"fgsm": {}}'  # fgsm is not among --attacks: a usage error, exit 2
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["prog"], fv)
    assert exit_info.value.code == 2


def test_prediction_ce_evaluation_crafts_its_own_examples(exports, tmp_path, data_dir):
    kw = dict(dataset="mnist", data_dir=data_dir, attacks=["fgsm"], eps=[0.3], num_examples=20,
              batch_size=10, cache_dir=str(tmp_path / "c"), progress=False)
    t = [("T_Base", exports["base"])]
    paper = evaluation.evaluate(exports["surrogate"], t, **kw)
    opts = evaluation.attack_loss_options(["fgsm"], "prediction_ce")
    adaptive = evaluation.evaluate(exports["surrogate"], t, attack_options=opts, **kw)
    p_path = paper["crafting"]["fgsm"]["0.3"]["path"]
    a_path = adaptive["crafting"]["fgsm"]["0.3"]["path"]
    assert p_path != a_path and adaptive["crafting"]["fgsm"]["0.3"]["cached"] is False
    sur = export.load_ensemble(exports["surrogate"])
    x_adaptive = np.load(a_path)
    assert not np.array_equal(x_adaptive, np.load(p_path))  # the paper's objective: other examples
    from tf_divtrain import data as data_lib
    d = data_lib.load_dataset("mnist", data_dir, test_size=20)
    expected = np.concatenate([attacks.fgsm(sur, d.x_test[i:i + 10], d.y_test[i:i + 10], 0.3,
                                            loss="prediction_ce").numpy() for i in (0, 10)])
    np.testing.assert_allclose(x_adaptive, expected, atol=1e-6)
    assert adaptive["attack_options"] == opts
    assert "Attack options (not the paper's defaults): FGSM loss=prediction_ce." in (
        evaluation.format_table2(adaptive))
    assert "Attack options" not in evaluation.format_table2(paper)


def test_table2_format_bold_and_cells():
    row = {"label": "T_Base", "role": "target", "clean": 0.994,
           "attacks": {"fgsm": {"0.1": 0.914, "0.3": 0.097}, "ifgsm": {"0.1": 0.861, "0.3": 0.007},
                       "mifgsm": {"0.1": 0.857, "0.3": 0.026}}}
    sur = {"label": evaluation.SURROGATE_LABEL, "role": "surrogate", "clean": 1.0,
           "attacks": {"fgsm": {"0.1": 0.5, "0.3": 0.0}, "ifgsm": {"0.1": 0.0, "0.3": 0.0},
                       "mifgsm": {"0.1": 0.2, "0.3": 0.0}}}
    res = {"dataset": "mnist", "num_examples": 1000, "eps": [0.1, 0.3],
           "attacks": ["fgsm", "ifgsm", "mifgsm"], "surrogate": {"path": "s"}, "rows": [row, sur]}
    lines = [l for l in evaluation.format_table2(res).splitlines() if l.startswith("|")]
    assert lines[0] == "| TARGET | CLEAN | FGSM | I-FGSM | MI-FGSM |"
    assert lines[2] == "| T_Base | 99.4 | 91.4 / 9.7 | 86.1 / **0.7** | **85.7** / 2.6 |"
    assert lines[3].startswith(f"| *{evaluation.SURROGATE_LABEL}* | 100.0 | 50.0 / **0.0** | "
                               "**0.0** / **0.0**")


@pytest.mark.e2e
def test_cli_end_to_end(exports, tmp_path, data_dir, capsys):
    """The evaluate CLI's main in process (its own FlagValues); the smoke preset runs it as a
    subprocess (tests/test_smoke_e2e.py)."""
    from absl import flags

    from tf_divtrain import evaluate

    out = tmp_path / "eval"
    argv = ["evaluate", f"--surrogate_dir={exports['surrogate']}",
            f"--targets=T_Base={exports['base']},T_Div={exports['div']}", "--dataset=mnist",
            f"--data_dir={data_dir}", "--num_examples=60", "--batch_size=25", f"--out_dir={out}",
            "--noprogress"]
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(argv)
    assert evaluate.main(["evaluate"], fv) == 0
    assert "| TARGET | CLEAN | FGSM | R-FGSM | I-FGSM | MI-FGSM | PGD-CW |" in capsys.readouterr().out

    res = json.loads((out / "results.json").read_text())
    assert res["eps"] == [0.1, 0.3] and res["attacks"] == list(attacks.ATTACKS)  # MNIST defaults
    assert res["num_examples"] == 60
    assert [r["label"] for r in res["rows"]] == ["T_Base", "T_Div", evaluation.SURROGATE_LABEL]
    for r in res["rows"]:
        assert 0.0 <= r["clean"] <= 1.0
        assert set(r["attacks"]) == set(attacks.ATTACKS)
        assert all(set(v) == {"0.1", "0.3"} for v in r["attacks"].values())
    sur = res["rows"][-1]
    assert sur["clean"] > 0.5  # the briefly trained surrogate learned something
    assert min(sur["attacks"]["ifgsm"].values()) < sur["clean"]  # white-box attack bites
    for a in attacks.ATTACKS:
        for e in ("0.1", "0.3"):
            c = res["crafting"][a][e]
            assert c["cached"] is False and c["images_per_sec"] > 0 and os.path.isfile(c["path"])

    for r in res["rows"]:  # robust-to-all: per eps and overall, never above any cell it covers
        rta = r["robust_to_all"]
        assert set(rta) == {"0.1", "0.3", "all"}
        for e in ("0.1", "0.3"):
            assert rta[e] <= min(r["attacks"][a][e] for a in attacks.ATTACKS) + 1e-12
        assert rta["all"] <= min(rta["0.1"], rta["0.3"]) + 1e-12
    for r in res["rows"]:  # per-example correctness agrees with every stored accuracy
        assert evaluation.per_example_mask(r).mean() == pytest.approx(r["clean"])
        for a in attacks.ATTACKS:
            for e in ("0.1", "0.3"):
                assert evaluation.per_example_mask(r, a, e).shape == (60,)
                assert evaluation.per_example_mask(r, a, e).mean() == pytest.approx(r["attacks"][a][e])
    assert res["schema_version"] == 2 and len(res["by_surrogate"]) == 1  # bare dir -> one block "S"
    assert res["by_surrogate"][0]["label"] == "S" and res["by_surrogate"][0]["rows"] == res["rows"]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * (1 + 5 * 2 + 3)
    assert {r["label"] for r in rows} == {"T_Base", "T_Div", evaluation.SURROGATE_LABEL}
    assert {r["surrogate"] for r in rows} == {"S"}
    by = {(r["label"], r["attack"], r["eps"]): float(r["accuracy"]) for r in rows}
    expected = res["rows"][1]["attacks"]["mifgsm"]["0.3"]
    assert by[("T_Div", "mifgsm", "0.3")] == pytest.approx(expected, abs=1e-6)
    assert by[("T_Div", "robust_to_all", "all")] == pytest.approx(
        res["rows"][1]["robust_to_all"]["all"], abs=1e-6)

    table = [l for l in (out / "table2.md").read_text().splitlines() if l.startswith("|")]
    assert table[0] == ("| TARGET | CLEAN | FGSM | R-FGSM | I-FGSM | MI-FGSM | PGD-CW | "
                        "ROBUST TO ALL | ALL EPS |")
    assert [l.split("|")[1].strip() for l in table[2:]] == ["T_Base", "T_Div",
                                                            f"*{evaluation.SURROGATE_LABEL}*"]
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 9 and all(" / " in c for c in cells[2:8])
        assert sum(c.count("**") for c in cells[2:7]) >= 4  # >= one bold value per eps
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a missing export through the CLI: one error line naming the path, exit 2
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(argv[:1] + [f"--surrogate_dir={tmp_path / 'nope'}"] + argv[2:])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["evaluate"], fv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and str(tmp_path / "nope") in err


def test_cli_flag_validators():
    from absl import flags as absl_flags

    from tf_divtrain import evaluate

    def parse(*args):
        fv = absl_flags.FlagValues()
        evaluate.define_flags(fv)
        fv(["prog", "--surrogate_dir=s", "--targets=T=t", "--out_dir=o", *args])
        return fv

    fv = parse()
    assert parse("--surrogate_dir=S5=a,S_div=b").surrogate_dir == "S5=a,S_div=b"
    assert fv.attacks == list(attacks.ATTACKS) and fv.eps is None and fv.num_examples == 1000
    assert parse("--eps=0.03,0.09", "--attacks=fgsm,pgd_cw").eps == ["0.03", "0.09"]
    assert fv.attack_loss == "ce" and parse("--attack_loss=prediction_ce").attack_loss == "prediction_ce"
    for bad, msg in (("--eps=0.1,1.5", r"\[0, 1\]"), ("--eps=abc", r"\[0, 1\]"),
                     ("--attacks=fgsm,cw", "subset of fgsm"), ("--dataset=svhn", "must be one of"),
                     ("--targets=runs/base", "LABEL=DIR"), ("--num_examples=0", "num_examples"),
                     ("--surrogate_dir=S=a,S=b", "unique labels"),
                     ("--surrogate_dir==a", "LABEL=DIR / DIR"),
                     ("--attack_loss=mean", "<ce|prediction_ce>")):
        with pytest.raises(absl_flags.IllegalFlagValueError, match=msg):
            parse(bad)


# ----------------------------------------------------------------------------------------------
# Issue 14: robust-to-all accuracy, several (labelled) surrogates.

class FakeModel:
    """Predicts class round(x[:, 0, k, 0]): each model reads its own pixel of a hand-built batch."""

    def __init__(self, k, path):
        self.k, self.path, self.metadata = k, path, dict(META)

    def member_logits(self, x, training=False):  # one member, EnsembleLike
        cls = tf.cast(tf.round(x[:, 0, self.k, 0]), tf.int32)
        return 10.0 * tf.one_hot(cls, 10)[:, None, :]

    def probabilities(self, x, training=False):
        return tf.nn.softmax(self.member_logits(tf.convert_to_tensor(x, tf.float32))[:, 0], -1)


# Per-example correctness of target A, hand-chosen, per (attack, eps).
HAND = {("fgsm", "0.1"): [1, 1, 1, 1, 0], ("ifgsm", "0.1"): [1, 1, 1, 0, 1],
        ("fgsm", "0.3"): [1, 1, 0, 1, 0], ("ifgsm", "0.3"): [1, 0, 1, 1, 0]}


def test_robust_to_all_from_per_example_correctness():
    masks = {k: np.array(v, bool) for k, v in HAND.items()}
    rta = evaluation.robust_to_all(masks)
    # survivors: eps 0.1 -> examples {0, 1, 2}; eps 0.3 -> {0, 3}; everything -> {0}
    assert rta == {"0.1": pytest.approx(0.6), "0.3": pytest.approx(0.4), "all": pytest.approx(0.2)}
    assert rta["0.3"] < min(np.mean(masks[(a, "0.3")]) for a in ("fgsm", "ifgsm")) == 0.6
    assert rta["all"] <= min(m.mean() for m in masks.values())
    rng = np.random.default_rng(0)
    for _ in range(20):  # random masks: never above the weakest cell it covers
        m = {(a, e): rng.random(50) < 0.8 for a in ("fgsm", "ifgsm", "pgd_cw") for e in ("0.1", "0.3")}
        r = evaluation.robust_to_all(m)
        for e in ("0.1", "0.3"):
            assert r[e] <= min(v.mean() for (a, ee), v in m.items() if ee == e)
        assert r["all"] <= min(r["0.1"], r["0.3"])
    with pytest.raises(results_lib.ResultsError, match="one length"):  # the results schema's own check
        evaluation.robust_to_all({("fgsm", "0.1"): np.ones(3, bool), ("ifgsm", "0.1"): np.ones(4, bool)})


def test_surrogate_block_robust_to_all_on_fake_models(monkeypatch):
    """The whole per-surrogate scoring on a hand-built case: target A survives exactly HAND."""
    y = np.arange(5)
    x = np.zeros((5, 1, 2, 1), np.float32)
    x[:, 0, :, 0] = y[:, None]  # clean: both models correct everywhere
    x_adv = {}
    for (a, e), ok in HAND.items():
        xa = x.copy()
        xa[:, 0, 0, 0] = np.where(ok, y, (y + 1) % 10)  # pixel 0: target A's prediction
        xa[:, 0, 1, 0] = (y + 1) % 10  # pixel 1: the surrogate is always fooled
        x_adv[(a, e)] = xa
    crafted = []

    def fake_craft(sur, sid, dataset, attack, eps, xx, yy, *args, **kw):
        crafted.append((sid, attack, evaluation.eps_key(eps)))
        return x_adv[(attack, evaluation.eps_key(eps))], {"cached": False, "path": f"{sid}_{attack}"}

    monkeypatch.setattr(evaluation.score, "craft_cached", fake_craft)  # where _surrogate_block looks it up
    target, sur = FakeModel(0, "a"), FakeModel(1, "s")
    block = evaluation._surrogate_block("S_x", sur, "fp", [("A", target)], {"A": np.ones(5, bool)}, x, y, "mnist",
                                        ("fgsm", "ifgsm"), (0.1, 0.3), "unused", 2, 0, False, {},
                                        "float32")
    assert len(crafted) == 4  # one crafting per cell, nothing extra for robust-to-all
    a_row, s_row = block["rows"]
    assert a_row["attacks"]["fgsm"] == {"0.1": pytest.approx(0.8), "0.3": pytest.approx(0.6)}
    assert a_row["robust_to_all"] == {"0.1": pytest.approx(0.6), "0.3": pytest.approx(0.4),
                                      "all": pytest.approx(0.2)}
    assert s_row["label"] == "S_x (white-box)" and s_row["clean"] == 1.0
    assert s_row["robust_to_all"] == {"0.1": 0.0, "0.3": 0.0, "all": 0.0}
    for (a, e), ok in HAND.items():  # per-example correctness stored for the paired tests
        np.testing.assert_array_equal(evaluation.per_example_mask(a_row, a, e), np.array(ok, bool))
        assert not evaluation.per_example_mask(s_row, a, e).any()
    assert evaluation.per_example_mask(a_row).all() and a_row["clean"] == 1.0
    assert block["label"] == "S_x" and block["surrogate"]["fingerprint"] == "fp"
    # the Markdown / CSV reports of that block
    res = {"dataset": "mnist", "num_examples": 5, "eps": [0.1, 0.3], "attacks": ["fgsm", "ifgsm"],
           "surrogate": block["surrogate"], "rows": block["rows"], "crafting": block["crafting"]}
    lines = [l for l in evaluation.format_table2(res).splitlines() if l.startswith("|")]
    assert lines[0] == "| TARGET | CLEAN | FGSM | I-FGSM | ROBUST TO ALL | ALL EPS |"
    assert lines[2] == "| A | 100.0 | **80.0** / **60.0** | **80.0** / **60.0** | 60.0 / 40.0 | 20.0 |"  # ties
    csv_rows = list(csv.DictReader(evaluation._csv_text(res).splitlines()))
    assert [(r["eps"], r["accuracy"]) for r in csv_rows if r["label"] == "A"
            and r["attack"] == "robust_to_all"] == [("0.1", "0.600000"), ("0.3", "0.400000"),
                                                   ("all", "0.200000")]


def test_parse_surrogates(tmp_path):
    p = evaluation.parse_surrogates
    assert p("runs/s") == [("S", "runs/s")]
    assert p("S5=runs/s5, S_div=runs/d") == [("S5", "runs/s5"), ("S_div", "runs/d")]
    assert p(["a", "b", ("S2", "c")]) == [("S", "a"), ("S3", "b"), ("S2", "c")]
    weird = tmp_path / "lr=0.1"
    weird.mkdir()
    assert p(str(weird)) == [("S", str(weird))]  # an existing dir with '=' is a bare dir
    for bad, msg in (("S=a,S=b", "unique"), ("=a", "empty label"), ("S=", "no directory"),
                     (" , ", "No surrogate")):
        with pytest.raises(evaluation.EvaluationError, match=msg):
            p(bad)


def test_several_labelled_surrogates(exports, tmp_path):
    """Two surrogates (a baseline and the 'diverse' one, as an adaptive attacker would use): one
    block each, crafted and cached separately; the first block is also the version-1 top level."""
    from tf_divtrain import report

    cache = str(tmp_path / "cache")
    kw = dict(dataset="mnist", attacks=["fgsm", "ifgsm"], num_examples=30, batch_size=15,
              cache_dir=cache, progress=False)
    res = evaluation.evaluate(f"S_base={exports['surrogate']},S_div={exports['div']}",
                              [("T_Base", exports["base"])], **kw)
    assert res["schema_version"] == 2
    assert [b["label"] for b in res["by_surrogate"]] == ["S_base", "S_div"]
    b0, b1 = res["by_surrogate"]
    assert res["rows"] == b0["rows"] and res["crafting"] == b0["crafting"]
    assert res["surrogate"] == b0["surrogate"]
    assert b0["surrogate"]["fingerprint"] != b1["surrogate"]["fingerprint"]
    assert [r["label"] for r in b1["rows"]] == ["T_Base", "S_div (white-box)"]
    assert b0["rows"][0]["clean"] == b1["rows"][0]["clean"]  # same target, same clean images
    paths = {c["path"] for b in (b0, b1) for per in b["crafting"].values() for c in per.values()}
    assert len(paths) == 2 * 2 * 2 and all(os.path.isfile(q) for q in paths)  # cached per surrogate
    for b in (b0, b1):
        for r in b["rows"]:
            for e in ("0.1", "0.3"):
                assert r["robust_to_all"][e] <= min(r["attacks"][a][e] for a in ("fgsm", "ifgsm"))
    assert res["by_surrogate"] == evaluation.surrogate_blocks(res)
    assert evaluation.surrogate_blocks({"rows": [1], "surrogate": {"path": "p"}})[0]["label"] == "S"

    # The same first surrogate alone (bare dir, as run_all.sh passes it): the cached arrays are
    # reused and the numbers are those of block 0.
    single = evaluation.evaluate(exports["surrogate"], [("T_Base", exports["base"])], **kw)
    assert all(c["cached"] for per in single["crafting"].values() for c in per.values())
    assert single["rows"][0]["attacks"] == b0["rows"][0]["attacks"]
    assert single["rows"][0]["robust_to_all"] == b0["rows"][0]["robust_to_all"]
    assert single["rows"][-1]["label"] == evaluation.SURROGATE_LABEL

    out = tmp_path / "eval"
    evaluation.write_reports(res, str(out))
    md = (out / "table2.md").read_text()
    assert md.count("### Surrogate ") == 2 and "### Surrogate S_div (" in md
    assert "| *S_div (white-box)* |" in md
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["surrogate"] for r in rows} == {"S_base", "S_div"} and len(rows) == 2 * 2 * (1 + 4 + 3)
    assert json.loads((out / "results.json").read_text())["by_surrogate"][1]["label"] == "S_div"

    text = report.table2_side_by_side("mnist_conv3", res)
    assert "| T_Base | ours vs S_base |" in text and "| T_Base | ours vs S_div |" in text
    assert "| T_Base | paper | 99.4 | 91.4 / 9.7 | 86.1 / 0.7 | — |" in text
    assert "| S_div (white-box sanity) | ours |" in text
    assert text.splitlines()[0].endswith("| ROBUST TO ALL (all eps) |")
    # the version-1 schema (the committed results/cpu) still renders, without the new column
    v1 = {k: res[k] for k in ("eps", "attacks", "rows")}
    v1["rows"] = [{k: v for k, v in r.items() if k != "robust_to_all"} for r in b0["rows"]]
    old = report.table2_side_by_side("mnist_conv3", v1)
    assert "| T_Base | ours |" in old and "ROBUST" not in old and "| S (white-box sanity) | ours |" in old

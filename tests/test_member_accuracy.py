"""tf_divtrain.experiments.member_accuracy: members clean and under the evaluation's cached examples."""

import json

import keras
import numpy as np
import pytest

from tf_divtrain import evaluation, export, models

from tf_divtrain.experiments import member_accuracy
META = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}


def test_breakdown_against_hand_counts():
    y = np.array([0, 1, 2, 3])
    clean = (np.array([0, 1, 9, 9]), np.array([[0, 0], [1, 2], [2, 9], [9, 9]]))
    attacked = {("fgsm", "0.1"): (np.array([0, 9, 2, 9]), np.array([[0, 5], [9, 9], [2, 2], [3, 9]]))}
    b = member_accuracy.breakdown(y, clean, attacked)
    assert b["clean"] == {"ensemble": 0.5, "members": [0.75, 0.25], "errors": 2, "mean_member": 0.5}
    c = b["cells"]["fgsm@0.1"]
    assert c["members"] == [0.75, 0.25] and c["mean_member"] == 0.5
    assert (c["fooled"], c["corrected"], c["ensemble"]) == (1, 1, 0.5)  # 0.5 = 0.5 - 1/4 + 1/4


def test_parse_cells():
    assert member_accuracy.parse_cells("fgsm@0.1, pgd_cw@0.30") == [("fgsm", "0.1"), ("pgd_cw", "0.3")]
    res = {"attacks": ["fgsm", "ifgsm"], "eps": [0.1, 0.3]}
    assert member_accuracy.parse_cells("all", res) == [("fgsm", "0.1"), ("fgsm", "0.3"),
                                                       ("ifgsm", "0.1"), ("ifgsm", "0.3")]
    for bad in ("fgsm", "deepfool@0.1"):
        with pytest.raises(member_accuracy.MemberAccuracyError, match="ATTACK@EPS"):
            member_accuracy.parse_cells(bad)


def test_rescores_the_evaluation_member_by_member(tmp_path, mnist, data_dir):
    def member(seed):
        return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(seed))])
    sur = export.export_ensemble(models.Ensemble([member(1)]), str(tmp_path / "s"), dict(META))
    members = [member(2), member(3), member(4)]
    tgt = export.export_ensemble(models.Ensemble(members), str(tmp_path / "t"), dict(META))
    res = evaluation.evaluate(sur, [("T", tgt)], "mnist", data_dir=data_dir, attacks=["fgsm"],
                              eps=[0.3], num_examples=60, batch_size=30,
                              cache_dir=str(tmp_path / "c"), progress=False)
    out = member_accuracy.run(res, ["all"], member_accuracy.parse_cells("all", res), root=str(tmp_path),
                              data_dir=data_dir)
    assert list(out["targets"]) == ["T"] and list(out["targets"]["T"]["cells"]) == ["fgsm@0.3"]
    b = out["targets"]["T"]
    x, y = mnist.x_test[:60], mnist.y_test[:60]
    x_adv = np.load(res["crafting"]["fgsm"]["0.3"]["path"])
    for data, got in ((x, b["clean"]), (x_adv, b["cells"]["fgsm@0.3"])):  # the Keras members themselves
        want = [float(np.mean(np.argmax(m(data).numpy(), -1) == y)) for m in members]
        np.testing.assert_allclose(got["members"], want)
    assert b["cells"]["fgsm@0.3"]["ensemble"] == res["rows"][0]["attacks"]["fgsm"]["0.3"]
    c = b["cells"]["fgsm@0.3"]
    assert c["ensemble"] == pytest.approx(b["clean"]["ensemble"] - (c["fooled"] - c["corrected"]) / 60)
    # the CLI: results.json on disk -> <out>.md and <out>.json (every target, every cell by default)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert member_accuracy.main([f"--eval={path}", f"--root={tmp_path}", f"--data_dir={data_dir}",
                                 f"--out={tmp_path / 'm' / 'member_accuracy'}"]) == 0
    written = json.loads((tmp_path / "m" / "member_accuracy.json").read_text())
    assert written["targets"]["T"]["cells"]["fgsm@0.3"] == c
    assert "| T | fgsm@0.3 |" in (tmp_path / "m" / "member_accuracy.md").read_text()
    res["rows"][0]["clean"] += 0.05  # not the evaluated images / model -> refuses
    with pytest.raises(member_accuracy.MemberAccuracyError, match="T clean: re-scored"):
        member_accuracy.run(res, ["T"], [("fgsm", "0.3")], root=str(tmp_path), data_dir=data_dir)
    with pytest.raises(member_accuracy.MemberAccuracyError, match="no crafted examples for fgsm@0.1"):
        member_accuracy.run(res, ["T"], [("fgsm", "0.1")], root=str(tmp_path), data_dir=data_dir)
    with pytest.raises(member_accuracy.MemberAccuracyError, match=r"\['T_X'\] not in results.json"):
        member_accuracy.run(res, ["T_X"], [("fgsm", "0.3")], root=str(tmp_path), data_dir=data_dir)

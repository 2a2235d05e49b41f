"""evaluate --strategy (issue 23): crafting under tf.distribute gives the single process's
adversarial examples bitwise -- MirroredStrategy on two logical CPUs, and two local worker
processes (MultiWorkerMirroredStrategy, cluster from TF_CONFIG on loopback) -- only the chief
writes, and bad input is one line. Tiny exports, 36 images in batches of 8 (the last step pads a
replica), FGSM and a 3-step PGD-CW (random start)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags

from tf_divtrain import evaluate as evaluate_cli
from tf_divtrain import evaluation, export, io_utils, models
from fakes import META, fit_briefly, launch_workers, tiny_member

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACK_OPTIONS = '{"pgd_cw": {"nb_iter": 3}}'
SETTINGS = ["--dataset=mnist", "--attacks=fgsm,pgd_cw", f"--attack_options={ATTACK_OPTIONS}",
            "--eps=0.1", "--num_examples=36", "--batch_size=8", "--seed=3", "--noprogress"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("strategy_exports")
    x, y = mnist.x_train[:640], mnist.y_train[:640]
    out = {}
    for name, seeds in (("surrogate", (1, 3)), ("target", (5,))):
        ens = fit_briefly(models.Ensemble([tiny_member(s) for s in seeds]), x, y, steps=10)
        out[name] = export.export_ensemble(ens, str(root / name), dict(META))
    return out


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("TF_CONFIG", io_utils.FAULT_ENV):
        env.pop(k, None)
    return env


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.e2e
def test_mirrored_on_two_logical_cpus_equals_default(exports, tmp_path, data_dir):
    script = os.path.join(REPO, "tests", "scripts", "eval_mirrored.py")
    r = subprocess.run([sys.executable, script, exports["surrogate"], exports["target"], data_dir,
                        str(tmp_path)], env=_env(), capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["strategy"] == {"name": "mirrored", "replicas": 2, "workers": 1, "chief": True}
    assert out["default_has_no_strategy"]  # default: results.json exactly as before
    assert out["per_example_equal"] == [True, True]  # target row and surrogate row
    for a in ("fgsm", "pgd_cw"):  # same cache key (the strategy is not in it), same arrays
        assert out["cells"][a] == {"same_key": True, "bitwise": True}
    assert out["cells"]["mdi2fgsm"]["bitwise"] and out["cells"]["mdi2fgsm"]["moved"] > 0
    assert "could not start from $TF_CONFIG" in out["bad_tf_config"]
    assert "\n" not in out["bad_tf_config"] and not out["c2_exists"]


@pytest.mark.e2e
def test_two_workers_craft_what_one_process_crafts_and_only_the_chief_writes(exports, tmp_path,
                                                                              data_dir):
    out = tmp_path / "multi"
    argv = [sys.executable, "-m", "tf_divtrain.evaluate", f"--surrogate_dir={exports['surrogate']}",
            f"--targets=T={exports['target']}", f"--data_dir={data_dir}", f"--out_dir={out}",
            "--strategy=multi_worker", *SETTINGS]
    # Worker 1 would crash at any write through io_utils (cache arrays, sidecars, reports).
    procs = launch_workers(argv, _env(), env_for=lambda i: {io_utils.FAULT_ENV: "write:*=crash"} if i else {},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the single-process reference, in this process while the workers run
        ref = evaluation.evaluate(
            exports["surrogate"], [("T", exports["target"])], dataset="mnist", data_dir=data_dir,
            eps=[0.1], attacks=["fgsm", "pgd_cw"], num_examples=36, batch_size=8, seed=3,
            cache_dir=str(tmp_path / "ref_cache"), progress=False,
            attack_options=evaluation.parse_attack_options(ATTACK_OPTIONS, ["fgsm", "pgd_cw"]))
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "not the chief" in logs[1] and "wrote nothing" in logs[1]
    res = json.loads((out / "results.json").read_text())
    assert res["crafting_strategy"] == {"name": "multi_worker", "replicas": 2, "workers": 2,
                                        "chief": True}
    for a, b in zip(ref["rows"], res["rows"]):
        assert a["label"] == b["label"] and a["per_example"] == b["per_example"]
        assert a["attacks"] == b["attacks"] and a["robust_to_all"] == b["robust_to_all"]
    for a in ("fgsm", "pgd_cw"):
        p_ref, p_multi = ref["crafting"][a]["0.1"]["path"], res["crafting"][a]["0.1"]["path"]
        assert os.path.basename(p_ref) == os.path.basename(p_multi)
        assert np.array_equal(np.load(p_ref), np.load(p_multi))  # bitwise
    # Only the chief's files, complete: no temporaries, no scratch directory.
    names = _files(out)
    assert [n for n in names if not n.startswith("adv_cache/")] == [
        "accuracy.png", "results.csv", "results.json", "table2.md"]
    assert len([n for n in names if n.endswith(".npy")]) == 2
    assert len([n for n in names if n.endswith(".json") and n.startswith("adv_cache/")]) == 2
    assert len(names) == 8


def test_bad_strategy_input_is_one_line_and_writes_nothing(exports, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    common = dict(dataset="mnist", attacks=["fgsm"], eps=[0.1], num_examples=4,
                  cache_dir=str(tmp_path / "c"), progress=False)
    t = [("T", exports["target"])]
    with pytest.raises(evaluation.EvaluationError, match="TF_CONFIG environment variable, which is not set"):
        evaluation.evaluate(exports["surrogate"], t, strategy="multi_worker", **common)
    with pytest.raises(evaluation.EvaluationError, match="Unknown strategy 'tpu'"):
        evaluation.evaluate(exports["surrogate"], t, strategy="tpu", **common)

    fv = absl_flags.FlagValues()
    evaluate_cli.define_flags(fv)
    with pytest.raises(absl_flags.IllegalFlagValueError, match="default|mirrored|multi_worker"):
        fv(["prog", "--surrogate_dir=s", "--targets=T=t", "--out_dir=o", "--strategy=tpu"])
    fv(["prog", f"--surrogate_dir={exports['surrogate']}", f"--targets=T={exports['target']}",
        f"--out_dir={tmp_path / 'out'}", "--strategy=multi_worker", *SETTINGS])
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["prog"], fv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: strategy=multi_worker reads the cluster")
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()

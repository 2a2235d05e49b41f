"""The pipeline as data and rules, in-process: presets, the plan's staleness rules, the results
schema's readers, and the report rendered without TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from tf_divtrain import io_utils
from tf_divtrain import results as results_lib
from tf_divtrain.pipeline import cli, plan, presets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(name, tmp_path, **env):
    p, rows = presets.resolve(name, env)
    ctx = plan.context(p, dict(env, RESULTS_ROOT=str(tmp_path)), "python")
    return {s.name: s for s in plan.build(p, rows, ctx, knobs=presets.knob_values(p, env))}, ctx


def _flag(argv, name):
    vals = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return vals[-1] if vals else None


def _cfg(flagfile):
    with open(os.path.join(REPO, "flags", f"{flagfile}.cfg")) as f:
        return dict(l.strip()[2:].split("=", 1) for l in f if l.startswith("--"))


def test_cifar_paper_trains_the_conv4_row_at_the_papers_length(tmp_path):
    stages, ctx = _plan("cifar-paper", tmp_path)
    roles = ("surrogate", "static", "base", "div", "ens", "ensdiv")
    assert [n for n in stages if n.startswith("train_")] == [f"train_cifar10_conv4_{r}" for r in roles]
    modes = {"surrogate": "baseline", "static": "baseline", "base": "baseline", "div": "div",
             "ens": "ens_adv", "ensdiv": "ens_adv_div"}
    for r in roles:
        argv = stages[f"train_cifar10_conv4_{r}"].argv
        cfg = _cfg(_flag(argv, "flagfile")[len("flags/"):-len(".cfg")])
        assert _flag(argv, "max_steps") is None and _flag(argv, "epochs") is None  # the flagfile's
        assert (cfg["epochs"], cfg["batch_size"], cfg["mode"]) == ("20", "128", modes[r])
        # 50,000 training images / 128 = 390 steps per epoch: 7,800 steps.
        assert 20 * (50000 // int(cfg["batch_size"])) == 7800
        assert (cfg["gal_lambda"], cfg["noise_eps"], cfg["adv_eps"]) == ("0.5", "0.09", "0.09")
        assert _flag(argv, "precision") == "auto"  # never a forced bfloat16
        assert cfg["ensemble_size"] == ("1" if r == "static" else "5")
        assert ("--static_model=" in " ".join(argv)) == (r in ("ens", "ensdiv"))
    ev = stages["evaluate_cifar10_conv4"].argv
    assert _flag(ev, "num_examples") == "1000" and _flag(ev, "attacks") is None  # the five attacks
    assert _flag(ev, "targets").count("=") == 4
    an = stages["analyze_cifar10_conv4"].argv
    assert _flag(an, "num_examples") == "1000" and _flag(an, "gaas_num_examples") == "500"
    assert (_flag(an, "transfer_num_examples"), _flag(an, "whitebox_num_examples")) == ("500", "200")
    aa = stages["autoattack_cifar10_conv4"].argv  # white-box PGD and AutoAttack: the same images
    assert _flag(aa, "num_examples") == _flag(an, "whitebox_num_examples")
    assert _flag(an, "gaas_k") == "4,16,36,64" and _flag(an, "gaas_eps") == "0.03,0.06,0.09"
    assert _flag(an, "analyses") is None  # coherence, GAAS, transferability and white-box
    assert "members_cifar10_conv4" in stages and "report" in stages
    assert "cifar-paper" in cli.usage()


def test_cifar_paper_resnet20_row_only_behind_its_switch(tmp_path):
    """Issue 22, item 4: RESNET20_ROW=1 adds the ResNet-20 row's surrogate, T_Base and T_Div, all
    at RESNET20_STEPS (1,560 = 4 epochs by default), after every Conv-4 stage, so that the Conv-4
    row's plan (and a run resumed on it) is unchanged."""
    off, _ = _plan("cifar-paper", tmp_path)
    assert not [n for n in off if "resnet20" in n]
    on, _ = _plan("cifar-paper", tmp_path, RESNET20_ROW="1")
    names = list(on)
    assert names[:len(off) - 1] == list(off)[:-1]  # the Conv-4 row's stages first, unchanged
    trains = [n for n in names if n.startswith("train_cifar10_resnet20_")]
    assert trains == [f"train_cifar10_resnet20_{r}" for r in ("surrogate", "base", "div")]
    for n in trains:
        assert _flag(on[n].argv, "max_steps") == "1560"  # 1,560 x 128 / 50,000 = 3.99 epochs
        assert _flag(on[n].argv, "flagfile") == f"flags/{n[len('train_'):]}.cfg"
        assert _flag(on[n].argv, "precision") == "auto"
    ev = on["evaluate_cifar10_resnet20"].argv
    assert _flag(ev, "num_examples") == "1000" and _flag(ev, "targets").count("=") == 2
    an = on["analyze_cifar10_resnet20"].argv
    assert (_flag(an, "analyses"), _flag(an, "num_examples")) == ("coherence", "1000")
    short, _ = _plan("cifar-paper", tmp_path, RESNET20_ROW="1", RESNET20_STEPS="390")
    assert {_flag(short[n].argv, "max_steps") for n in trains} == {"390"}
    with pytest.raises(presets.PresetError, match=r"RESNET20_ROW='2' must be 0 or 1 \(1 = add the ResNet-20 row"):
        presets.resolve("cifar-paper", {"RESNET20_ROW": "2"})


def test_stage_decision_follows_outputs_and_inputs(tmp_path):
    stages, ctx = _plan("cpu", tmp_path)
    ev = stages["evaluate_mnist_conv3"]
    assert ev.decide() == (True, [])  # no output yet
    os.makedirs(os.path.dirname(ev.done))
    labels = ["T_Base", "T_Div", "T_Ens", "T_Ens+Div"]
    rows = [{"label": l, "per_example": {"n": 1}} for l in labels[:3]]
    with open(ev.done, "w") as f:
        json.dump({"rows": rows}, f)
    go, msg = ev.decide()
    assert go and "lacks some of: T_Base T_Div T_Ens T_Ens+Div" in msg[0]
    rows.append({"label": "T_Ens+Div", "per_example": {"n": 1}})
    with open(ev.done, "w") as f:
        json.dump({"rows": rows}, f)
    go, msg = ev.decide()
    assert not go and "done already" in msg[0]
    m = os.path.join(ctx.work, "mnist_conv3", "surrogate", "metrics.json")
    os.makedirs(os.path.dirname(m))
    with open(m, "w") as f:
        f.write("{}")
    t = os.path.getmtime(ev.done) + 5
    os.utime(m, (t, t))  # the surrogate was retrained after the evaluation
    go, msg = ev.decide()
    assert go and "a model was retrained after" in msg[0]


@pytest.mark.e2e
def test_damaged_results_file_is_named_with_the_stage_to_rerun(tmp_path):
    stages, ctx = _plan("cpu", tmp_path)
    ev = stages["evaluate_mnist_conv3"]
    os.makedirs(os.path.dirname(ev.done))
    with open(ev.done, "w") as f:
        f.write('{"rows": [{"label": "T_B')  # cut off mid-file
    with pytest.raises(io_utils.IncompleteFileError, match=r"results\.json is not a complete evaluation "
                                                           r"results file .*re-run evaluate"):
        ev.decide()
    r = subprocess.run([sys.executable, "-m", "tf_divtrain.pipeline", "--dry-run", "cpu"], cwd=REPO,
                       env=dict(os.environ, RESULTS_ROOT=str(tmp_path)), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "re-run evaluate" in r.stderr


def test_bad_preset_arguments_and_knobs():
    with pytest.raises(presets.PresetError, match="unknown preset"):
        presets.resolve("gpu-please", {})
    with pytest.raises(presets.PresetError, match="CPU_STEPS='ten' must be a whole number"):
        presets.resolve("cpu", {"CPU_STEPS": "ten"})
    # 0 steps would reach train as --max_steps=0, i.e. the flagfile's full length: refused.
    with pytest.raises(presets.PresetError, match="CPU_STEPS='0' must be at least 1"):
        presets.resolve("cpu", {"CPU_STEPS": "0"})
    with pytest.raises(presets.PresetError, match="FIELD_EXAMPLES='0' must be at least 1"):
        presets.resolve("cifar-paper", {"FIELD_EXAMPLES": "0"})
    with pytest.raises(presets.PresetError, match="CIFAR_FULL_ROWS='2' must be 0 or 1"):
        presets.resolve("cpu-cifar", {"CIFAR_FULL_ROWS": "2"})
    assert len(presets.resolve("cpu-cifar", {"CIFAR_FULL_ROWS": "0"})[1]) == 3  # a switch may be 0
    with pytest.raises(presets.PresetError, match="need the static role"):
        presets.paper_row("r", roles=("surrogate", "ens"))
    p, rows = presets.resolve("cpu", {})
    with pytest.raises(presets.PresetError, match="PRESET_PRECISION"):
        plan.context(p, {"PRESET_PRECISION": "bf16"}, "python")
    with pytest.raises(presets.PresetError, match="--only"):
        plan.build(p, rows, plan.context(p, {}, "python"), only="everything")
    assert cli.main(["--only=everything", "cpu"], env={}) == 2


def test_results_covers_and_masks():
    pe = {"n": 3, "clean": results_lib.stats.encode_mask([True, False, True]),
          "attacks": {"fgsm": {"0.1": results_lib.stats.encode_mask([False, False, True])}}}
    res = {"rows": [{"label": "T_Base", "per_example": pe}],
           "by_surrogate": [{"label": "S3", "rows": [{"label": "T_Base", "per_example": pe}]}]}
    assert results_lib.covers(res, ["T_Base", "S3"]) and not results_lib.covers(res, ["T_Div"])
    assert not results_lib.covers({"rows": [{"label": "T_Base"}]}, ["T_Base"])  # no per-example
    assert results_lib.per_example_mask(res["rows"][0]).tolist() == [True, False, True]
    assert results_lib.per_example_mask(res["rows"][0], "fgsm", "0.1").tolist() == [False, False, True]
    assert results_lib.eps_key(0.30) == "0.3" and results_lib.safe_label("T_Ens+Div") == "T_Ens+Div"


@pytest.mark.e2e
def test_report_and_pipeline_load_no_tensorflow():
    """Rendering every committed report (and a field-protocol section) and planning every preset
    import neither TensorFlow nor Keras nor CleverHans' TF2 code: an import hook makes any such
    import fail."""
    code = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras') or name.startswith('cleverhans.tf2'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import tf_divtrain.report as report
from tf_divtrain.pipeline import cli, plan, presets
for name in presets.PRESETS:
    p, rows = presets.resolve(name, {})
    plan.build(p, rows, plan.context(p, {}, 'python'))
for name in ('cpu', 'cpu-cifar', 'cpu-methods', 'mnist-paper'):
    text = report.build_report(name, 'results/' + name)
    assert '# ' in text
import json, os, tempfile  # the field-protocol section (issue 23) too
from fakes import _field_results  # tests/ is on PYTHONPATH
d = tempfile.mkdtemp()
os.makedirs(os.path.join(d, 'mnist_conv3', 'eval_field'))
spec = {'clean': '1101', 'S': {s: {'0.1': '1001', '0.3': '0001'} for s in ('mpgd_ce_r0', 'mdi2fgsm_ce')}}
with open(os.path.join(d, 'mnist_conv3', 'eval_field', 'results.json'), 'w') as f:
    json.dump(_field_results({'T_Base': spec, 'T_Div': spec}), f)
assert '| T_Div | 75.0 | 50.0 (50.0) / 50.0 (M-PGD CE r0) |' in report.build_report('cpu', d)
print('ok')
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_run_all_sh_is_a_thin_entry():
    with open(os.path.join(REPO, "run_all.sh")) as f:
        lines = f.read().splitlines()
    assert len(lines) < 60 and any("-m tf_divtrain.pipeline" in l for l in lines)


def test_studies_are_entries_of_the_same_runner(tmp_path):
    """The one-off studies: their stages, where they write, and a study that needs another
    preset's models says so instead of training them again."""
    stages, ctx = _plan("precision-study", tmp_path, STUDY_STEPS="7")
    assert ctx.results == os.path.join(str(tmp_path), "studies", "precision_study")
    trains = {n: s for n, s in stages.items() if n.startswith("train_")}
    assert len(trains) == 8 and all(_flag(s.argv, "max_steps") == "7" for s in trains.values())
    assert _flag(trains["train_div_float32"].argv, "precision") == "float32"
    assert _flag(trains["train_div_mixed_bfloat16_seed1"].argv, "seed") == "1"
    ev = stages["evaluate_surrogate_float32"].argv
    assert _flag(ev, "surrogate_dir").endswith("work/surrogate_float32") and _flag(ev, "targets").count("=") == 6
    stages, ctx = _plan("ens-ablation", tmp_path)
    with pytest.raises(presets.PresetError, match="cpu/work/mnist_conv3/surrogate/metrics.json.*run that preset"):
        stages["train_ens_true_half"].decide()
    assert _flag(stages["train_ensdiv_true_third"].argv, "adv_share") == "0.333"
    stages, ctx = _plan("resnet20-length", tmp_path)
    assert [_flag(s.argv, "max_steps") for s in stages.values()] == ["260", "390", "390"]
    assert _flag(stages["train_base_260"].argv, "out_dir") == _flag(stages["train_base_390"].argv, "out_dir")


def test_field_stages_of_cpu_methods_and_cifar_paper(tmp_path):
    """Issue 23's runs as stages of kind ``field``: the field protocol from S3/S5/S8 (cpu-methods) or
    the bare S (cifar-paper) into <row>/eval_field/, ART's AutoAttack on every target into
    <row>/autoattack/; sized by knobs, run alone by --only=field, never part of --only=evaluate."""
    stages, ctx = _plan("cpu-methods", tmp_path)
    ev, aa = stages["field_mnist_conv3"], stages["autoattack_mnist_conv3"]
    assert (ev.kind, aa.kind) == ("field", "field") and "--protocol=field" in ev.argv
    w = os.path.join(ctx.work, "mnist_conv3")
    assert _flag(ev.argv, "surrogate_dir") == ",".join(f"{s}={w}/{s.lower()}" for s in ("S3", "S5", "S8"))
    assert _flag(ev.argv, "targets") == _flag(stages["evaluate_mnist_conv3"].argv, "targets")
    assert _flag(ev.argv, "out_dir") == os.path.join(ctx.results, "mnist_conv3", "eval_field")
    assert _flag(ev.argv, "cache_dir") == f"{w}/adv_cache" and _flag(ev.argv, "num_examples") == "300"
    assert _flag(ev.argv, "eps") is None  # the protocol's MNIST default 0.1, 0.2, 0.3
    assert _flag(aa.argv, "analyses") == "autoattack" and _flag(aa.argv, "num_examples") == "200"
    assert _flag(aa.argv, "ensembles") == _flag(stages["analyze_mnist_conv3"].argv, "ensembles")
    assert aa.done == os.path.join(ctx.results, "mnist_conv3", "autoattack", "analysis.json")
    names = list(stages)
    assert names.index("field_mnist_conv3") > names.index("compare_mnist_conv3_prediction_ce")
    assert names[-1] == "report"
    # a retrained field surrogate makes the stage out of date; a missing label too
    os.makedirs(os.path.dirname(ev.done))
    with open(ev.done, "w") as f:
        json.dump({"rows": [{"label": l, "per_example": {"n": 1}} for l in
                            ("T_Base", "T_Div", "T_ADP", "T_DVERGE", "T_TRS", "S3", "S5")]}, f)
    go, msg = ev.decide()
    assert go and "lacks some of: T_Base T_Div T_ADP T_DVERGE T_TRS S3 S5 S8" in msg[0]
    only, _ = _plan("cpu-methods", tmp_path, FIELD_EXAMPLES="40", AUTOATTACK_EXAMPLES="8")
    p, rows = presets.resolve("cpu-methods", {"FIELD_EXAMPLES": "40"})
    kinds = {s.name: s.kind for s in plan.build(p, rows, ctx, only="field")}
    assert kinds == {"field_mnist_conv3": "field", "autoattack_mnist_conv3": "field"}
    assert "field_mnist_conv3" not in {s.name for s in plan.build(p, rows, ctx, only="evaluate")}
    assert _flag(only["field_mnist_conv3"].argv, "num_examples") == "40"
    assert _flag(only["autoattack_mnist_conv3"].argv, "num_examples") == "8"

    stages, ctx = _plan("cifar-paper", tmp_path)
    ev = stages["field_cifar10_conv4"]
    w = os.path.join(ctx.work, "cifar10_conv4")
    assert _flag(ev.argv, "surrogate_dir") == f"{w}/surrogate"  # bare: one block "S", as the row's eval
    assert _flag(ev.argv, "eps") == "0.01,0.03,0.05,0.07" and _flag(ev.argv, "num_examples") == "200"
    assert _flag(ev.argv, "dataset") == "cifar10"
    assert _flag(stages["autoattack_cifar10_conv4"].argv, "targets") is None
    assert _flag(stages["autoattack_cifar10_conv4"].argv, "ensembles").count("=") == 4
    assert "field_" not in " ".join(_plan("cpu", tmp_path)[0])  # only the rows that ask for it


def test_stage_runs_group_sessions_until_an_ok_one(tmp_path):
    """Old 4-column rows and new 5-column rows read alike; failed and interrupted sessions belong
    to the run their stage finishes next; a re-run after an ok run starts a new run."""
    from tf_divtrain.pipeline import clock

    rows = ["stage\tseconds\tstatus\tcommand", "a\t10\tok\tcmd a", "b\t5\tinterrupted\tcmd b\tT1",
            "b\t7\tfailed\tcmd b\tT2", "a\t3\tok\tcmd a\tT3", "b\t11\tok\tcmd b\tT4",
            "c\t2\tinterrupted\tcmd c\tT5"]
    (tmp_path / "stage_times.tsv").write_text("\n".join(rows) + "\n")
    got = [(r.stage, r.seconds, len(r.sessions), r.status) for r in clock.stage_runs(str(tmp_path))]
    assert got == [("a", 3, 1, "ok"), ("b", 23, 3, "ok"), ("c", 2, 1, "interrupted")]
    # a row cut off by a kill is skipped, and the next row starts on a line of its own
    with open(tmp_path / "stage_times.tsv", "a") as f:
        f.write("c\t4")
    clock._append(str(tmp_path), clock.Session("c", 5, "ok", "cmd c", "T6"))
    got = [(r.stage, r.seconds, len(r.sessions)) for r in clock.stage_runs(str(tmp_path))]
    assert got[-1] == ("c", 7, 2)

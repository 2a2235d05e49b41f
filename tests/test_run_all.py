"""run_all.sh / the pipeline end to end on the smoke preset (every stage, tiny settings), and every
preset's commands and staleness rules by dry run (the report itself: test_report.py)."""

import json
import os
import pytest


from fakes import PE, _mnist_metrics, run_all_sh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path, data_dir):
    return run_all_sh(args, tmp_path, data_dir)


@pytest.mark.e2e
def test_help_and_bad_arguments(tmp_path, data_dir):
    r = _run(["--help"], tmp_path, data_dir)
    assert r.returncode == 0 and "Presets:" in r.stdout and "smoke" in r.stdout
    r = _run(["gpu-please"], tmp_path, data_dir)
    assert r.returncode == 2 and "unknown argument" in r.stderr


# ---------------------------------------------------------------------------------------------
# CIFAR-10 presets: the command plumbing (dry run, no training) and the report's CIFAR rendering.

def _dry(preset, tmp_path, data_dir, **env):
    r = _run_env(["--dry-run", preset], tmp_path, data_dir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cmds = {}
    for line in r.stdout.splitlines():
        if ": would run: " in line:
            name, cmd = line[3:].split(": would run: ", 1)
            cmds[name] = cmd
    return r.stdout, cmds


def _run_env(args, tmp_path, data_dir, extra):
    return run_all_sh(args, tmp_path, data_dir, extra)


def _flag(cmd, name):
    vals = [t.split("=", 1)[1] for t in cmd.split() if t.startswith(f"--{name}=")]
    return vals[-1] if vals else None  # absl: the last occurrence wins


def test_help_states_cifar_presets_and_their_reductions(tmp_path, data_dir):
    r = _run(["--help"], tmp_path, data_dir)
    for needle in ("cpu-cifar", "smoke-cifar", "CIFAR_STEPS", "CIFAR_RESNET_STEPS", "CIFAR_MIX_STEPS",
                   "CIFAR_FULL_ROWS", "CIFAR_ROW_EVAL_EXAMPLES", "PRESET_TRAIN_FLAGS", "k = 25",
                   "instead of 20 epochs", "instead of 40 epochs", "--dry-run"):
        assert needle in r.stdout, needle


def test_cpu_cifar_dry_run_rows_roles_steps_and_flags(tmp_path, data_dir):
    out, cmds = _dry("cpu-cifar", tmp_path, data_dir, PRESET_TRAIN_FLAGS="--log_every=7",
                     CIFAR_STEPS="11", CIFAR_RESNET_STEPS="12", CIFAR_MIX_STEPS="13")
    assert not (tmp_path / "cpu-cifar").exists()  # a dry run writes nothing
    trains = {k[len("train_"):]: v for k, v in cmds.items() if k.startswith("train_")}
    conv4 = {k.split("_")[-1] for k in trains if k.startswith("cifar10_conv4_")}
    assert conv4 == {"surrogate", "static", "base", "div", "ens", "ensdiv"}
    for row in ("cifar10_resnet20", "cifar10_mix"):
        assert {k.split("_")[-1] for k in trains if k.startswith(row + "_")} == {"surrogate", "base", "div"}
    steps = {"cifar10_conv4": "11", "cifar10_resnet20": "12", "cifar10_mix": "13"}
    for name, cmd in trains.items():
        row = name.rsplit("_", 1)[0]
        assert _flag(cmd, "max_steps") == steps[row], name  # every model of a row: same length
        assert _flag(cmd, "log_every") == "7", name  # PRESET_TRAIN_FLAGS reaches every training
        assert f"--flagfile=flags/{name}.cfg" in cmd
    an = cmds["analyze_cifar10_conv4"]
    assert _flag(an, "gaas_k") == "4,16,36,64" and _flag(an, "gaas_eps") == "0.03,0.06,0.09"
    assert _flag(an, "dataset") == "cifar10" and _flag(an, "analyses") is None  # all four analyses
    assert "T_Ens+Div=" in _flag(an, "ensembles")
    ev = cmds["evaluate_cifar10_conv4"]
    assert _flag(ev, "num_examples") == "1000" and _flag(ev, "attacks") is None  # all five attacks
    assert _flag(ev, "targets").count("=") == 4
    for row in ("cifar10_resnet20", "cifar10_mix"):
        ev, an = cmds[f"evaluate_{row}"], cmds[f"analyze_{row}"]
        assert [t.split("=")[0] for t in _flag(ev, "targets").split(",")] == ["T_Base", "T_Div"]
        assert _flag(ev, "num_examples") == "500" and _flag(an, "analyses") == "coherence"
    assert "report" in cmds


def test_cpu_cifar_full_rows_and_defaults(tmp_path, data_dir):
    _, cmds = _dry("cpu-cifar", tmp_path, data_dir, CIFAR_FULL_ROWS="1")
    for row in ("cifar10_resnet20", "cifar10_mix"):
        roles = [k.split("_")[-1] for k in cmds if k.startswith(f"train_{row}_")]
        assert roles == ["surrogate", "static", "base", "div", "ens", "ensdiv"]
        assert "--static_model=" in cmds[f"train_{row}_ensdiv"]
        assert _flag(cmds[f"evaluate_{row}"], "targets").count("=") == 4
    # Defaults: the targets of a row share one step count; the static model stays one member.
    for row in ("cifar10_conv4", "cifar10_resnet20", "cifar10_mix"):
        n = {_flag(v, "max_steps") for k, v in cmds.items() if k.startswith(f"train_{row}_")}
        assert len(n) == 1 and int(n.pop()) > 0
    assert _flag(cmds["train_cifar10_conv4_static"], "ensemble_size") is None


def test_stage_reruns_when_results_lack_a_target(tmp_path, data_dir):
    ev = tmp_path / "cpu-cifar" / "cifar10_resnet20" / "eval"
    ev.mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({"rows": [{"label": "T_Base", "per_example": PE},
                                                          {"label": "T_Div", "per_example": PE}]}))
    out, cmds = _dry("cpu-cifar", tmp_path, data_dir)
    assert "evaluate_cifar10_resnet20" not in cmds and "evaluate_cifar10_resnet20: done already" in out
    out, cmds = _dry("cpu-cifar", tmp_path, data_dir, CIFAR_FULL_ROWS="1")
    assert "lacks some of: T_Base T_Div T_Ens T_Ens+Div" in out and "evaluate_cifar10_resnet20" in cmds


def test_evaluation_without_per_example_results_is_rescored(tmp_path, data_dir):
    labels = ["T_Base", "T_Div", "T_Ens", "T_Ens+Div"]
    ev = tmp_path / "cpu" / "mnist_conv3" / "eval"
    ev.mkdir(parents=True)
    rows = [{"label": l, "per_example": PE} for l in labels] + [{"label": "S (white-box)"}]
    (ev / "results.json").write_text(json.dumps({"rows": rows}))  # written before per-example storage
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "or per-example results; re-running (cached attacks are reused)" in out
    assert "evaluate_mnist_conv3" in cmds and "--cache_dir=" in cmds["evaluate_mnist_conv3"]
    rows[-1]["per_example"] = PE
    (ev / "results.json").write_text(json.dumps({"rows": rows}))
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "evaluate_mnist_conv3" not in cmds and "evaluate_mnist_conv3: done already" in out


def test_stage_reruns_when_a_model_was_retrained_after_it(tmp_path, data_dir):
    labels = ["T_Base", "T_Div", "T_Ens", "T_Ens+Div"]
    row = tmp_path / "cpu" / "mnist_conv3"
    (row / "eval").mkdir(parents=True)
    (row / "analysis").mkdir()
    (row / "eval" / "results.json").write_text(json.dumps({"rows": [{"label": l, "per_example": PE}
                                                                      for l in labels]}))
    (row / "analysis" / "analysis.json").write_text(json.dumps({"ensembles": {l: {} for l in labels}}))
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "evaluate_mnist_conv3" not in cmds and "analyze_mnist_conv3" not in cmds
    div = tmp_path / "cpu" / "work" / "mnist_conv3" / "div"
    div.mkdir(parents=True)
    (div / "metrics.json").write_text("{}")
    t = os.path.getmtime(row / "eval" / "results.json") + 10
    os.utime(div / "metrics.json", (t, t))  # T_Div retrained after the evaluation and the analysis
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "evaluate_mnist_conv3: a model was retrained after" in out and "evaluate_mnist_conv3" in cmds
    assert "analyze_mnist_conv3: a model was retrained after" in out and "analyze_mnist_conv3" in cmds


def test_paper_preset_keeps_the_paper_settings(tmp_path, data_dir):
    _, cmds = _dry("paper", tmp_path, data_dir)
    epochs = {"mnist_conv3": "10", "cifar10_conv4": "20", "cifar10_resnet20": "40", "cifar10_mix": "40"}
    for row, ep in epochs.items():
        roles = [k.split("_")[-1] for k in cmds if k.startswith(f"train_{row}_")]
        assert roles == ["surrogate", "static", "base", "div", "ens", "ensdiv"], row
        for role in roles:
            cmd = cmds[f"train_{row}_{role}"]
            assert _flag(cmd, "max_steps") is None and _flag(cmd, "epochs") is None
            with open(os.path.join(REPO, "flags", f"{row}_{role}.cfg")) as f:
                cfg = f.read()
            assert f"--epochs={ep}\n" in cfg and "--batch_size=128\n" in cfg, (row, role)
            if role != "static":
                assert "--ensemble_size=5\n" in cfg
    for row in ("cifar10_conv4", "cifar10_resnet20", "cifar10_mix"):
        assert _flag(cmds[f"analyze_{row}"], "gaas_k") == "4,16,36,64"
        assert _flag(cmds[f"evaluate_{row}"], "num_examples") == "1000"


def test_mnist_paper_dry_run_trains_full_epochs_and_evaluates_all_test_images(tmp_path, data_dir):
    out, cmds = _dry("mnist-paper", tmp_path, data_dir, PRESET_TRAIN_FLAGS="--precision=auto")
    roles = ("surrogate", "static", "base", "div", "ens", "ensdiv")
    assert set(cmds) >= {f"train_mnist_conv3_{r}" for r in roles}
    for r in roles:  # the flagfiles' 10 epochs: no step cap; the extra flags reach every training
        cmd = cmds[f"train_mnist_conv3_{r}"]
        assert "--max_steps" not in cmd and "--precision=auto" in cmd, cmd
    assert "--num_examples=10000" in cmds["evaluate_mnist_conv3"]


# ---------------------------------------------------------------------------------------------
# cpu-methods: GAL next to ADP / DVERGE / TRS against several surrogates (issue 14).

def test_cpu_methods_dry_run_trains_targets_and_four_surrogates(tmp_path, data_dir):
    out, cmds = _dry("cpu-methods", tmp_path, data_dir, CPU_STEPS="7", PRESET_TRAIN_FLAGS="--log_every=3")
    assert not (tmp_path / "cpu-methods").exists()  # a dry run writes nothing
    trains = {k[len("train_mnist_conv3_"):]: v for k, v in cmds.items() if k.startswith("train_")}
    assert list(trains) == ["base", "div", "adp", "dverge", "trs", "s3", "s5", "s8", "sdiv"]
    flagfile = {"base": "base", "div": "div", "adp": "adp", "dverge": "dverge", "trs": "trs",
                "s3": "surrogate", "s5": "surrogate", "s8": "surrogate", "sdiv": "div"}
    for name, cmd in trains.items():
        assert f"--flagfile=flags/mnist_conv3_{flagfile[name]}.cfg" in cmd, cmd
        assert _flag(cmd, "max_steps") == "7" and _flag(cmd, "log_every") == "3", cmd  # one length
        assert _flag(cmd, "out_dir").endswith(f"/cpu-methods/work/mnist_conv3/{name}")
        with open(os.path.join(REPO, "flags", f"mnist_conv3_{flagfile[name]}.cfg")) as f:
            cfg = f.read()
        seed = _flag(cmd, "seed") or cfg.split("--seed=")[1].split()[0]
        size = _flag(cmd, "ensemble_size") or cfg.split("--ensemble_size=")[1].split()[0]
        expected = {"s3": ("13", "3"), "s5": ("10", "5"), "s8": ("18", "8"), "sdiv": ("20", "5")}
        assert (seed, size) == expected.get(name, ("0", "5")), name  # targets: seed 0, 5 members
        assert "--batch_size=128\n" in cfg and "--epochs=10\n" in cfg
    for name in ("adp", "dverge", "trs"):
        with open(os.path.join(REPO, "flags", f"mnist_conv3_{name}.cfg")) as f:
            assert f"--mode={name}\n" in f.read()
    ev = cmds["evaluate_mnist_conv3"]
    assert [s.split("=")[0] for s in _flag(ev, "surrogate_dir").split(",")] == ["S3", "S5", "S8", "S_div"]
    assert [t.split("=")[0] for t in _flag(ev, "targets").split(",")] == [
        "T_Base", "T_Div", "T_ADP", "T_DVERGE", "T_TRS"]
    assert _flag(ev, "num_examples") == "1000" and _flag(ev, "attacks") is None
    bench = cmds["benchmark_mnist_conv3_method_steps"]  # every method's step cost, one load
    assert bench.split()[1:3] == ["-m", "tf_divtrain.experiments.method_steps"]
    assert _flag(bench, "precision") == "auto"
    assert _flag(bench, "out").endswith("/cpu-methods/mnist_conv3/method_steps.json")
    assert _flag(bench, "md").endswith("/cpu-methods/mnist_conv3/METHOD_STEPS.md")
    pce = cmds["evaluate_mnist_conv3_prediction_ce"]  # the attack objective, from S5 and S_div
    assert [s.split("=")[0] for s in _flag(pce, "surrogate_dir").split(",")] == ["S5", "S_div"]
    assert _flag(pce, "targets") == _flag(ev, "targets") and _flag(pce, "num_examples") == "1000"
    assert _flag(pce, "attack_loss") == "prediction_ce" and _flag(pce, "attacks") == "fgsm,rfgsm,ifgsm,mifgsm"
    assert _flag(pce, "cache_dir") == _flag(ev, "cache_dir")  # the option is part of the cache key
    cmp_cmd = cmds["compare_mnist_conv3_prediction_ce"]
    assert cmp_cmd.split()[1:3] == ["-m", "tf_divtrain.experiments.compare_evals"]
    assert _flag(cmp_cmd, "a") == _flag(pce, "out_dir") + "/results.json"
    assert _flag(cmp_cmd, "b") == _flag(ev, "out_dir") + "/results.json"
    an = cmds["analyze_mnist_conv3"]
    assert _flag(an, "analyses") == "coherence,transfer,whitebox" and _flag(an, "num_examples") == "500"
    assert _flag(an, "transfer_num_examples") == "100" and _flag(an, "whitebox_iters") == "20"
    assert "--preset=cpu-methods" in cmds["report"]
    # Resumable: an evaluation that lacks a surrogate block is re-run, a complete one skipped.
    ev_dir = tmp_path / "cpu-methods" / "mnist_conv3" / "eval"
    ev_dir.mkdir(parents=True)
    rows = [{"label": t, "per_example": PE} for t in ("T_Base", "T_Div", "T_ADP", "T_DVERGE", "T_TRS")]
    blocks = [{"label": s} for s in ("S3", "S5", "S8")]
    (ev_dir / "results.json").write_text(json.dumps({"rows": rows, "by_surrogate": blocks}))
    out, cmds = _dry("cpu-methods", tmp_path, data_dir)
    assert "lacks some of" in out and "S_div" in out and "evaluate_mnist_conv3" in cmds
    blocks.append({"label": "S_div"})
    (ev_dir / "results.json").write_text(json.dumps({"rows": rows, "by_surrogate": blocks}))
    out, cmds = _dry("cpu-methods", tmp_path, data_dir)
    assert "evaluate_mnist_conv3" not in cmds and "evaluate_mnist_conv3: done already" in out
    # The attack-objective stages resume too: both done -> skipped; the paper-objective evaluation
    # newer than the comparison -> only the comparison runs again.
    pce_dir = tmp_path / "cpu-methods" / "mnist_conv3" / "adaptive_loss"
    pce_dir.mkdir()
    (pce_dir / "results.json").write_text("{}")
    (pce_dir / "comparison.md").write_text("")
    old = os.path.getmtime(ev_dir / "results.json") - 10
    os.utime(ev_dir / "results.json", (old, old))
    out, cmds = _dry("cpu-methods", tmp_path, data_dir)
    assert "evaluate_mnist_conv3_prediction_ce" not in cmds and "compare_mnist_conv3_prediction_ce" not in cmds
    os.utime(ev_dir / "results.json", (old + 100, old + 100))
    out, cmds = _dry("cpu-methods", tmp_path, data_dir)
    assert "evaluate_mnist_conv3_prediction_ce" not in cmds and "compare_mnist_conv3_prediction_ce" in cmds


@pytest.mark.e2e
def test_skipped_trainings_are_not_stamped_with_todays_load(tmp_path, data_dir):
    """Runs copied into work/ (or finished in an earlier session) keep no load average of today."""
    w = tmp_path / "cpu-methods" / "work" / "mnist_conv3"
    names = ("base", "div", "adp", "dverge", "trs", "s3", "s5", "s8", "sdiv")
    for name in names:
        (w / name).mkdir(parents=True)
        (w / name / "metrics.json").write_text(json.dumps(_mnist_metrics("baseline")))
        (w / name / "config.json").write_text("{}")
    r = _run_env(["--only=train", "cpu-methods"], tmp_path, data_dir, {})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    train = tmp_path / "cpu-methods" / "mnist_conv3" / "train"
    for name in names:
        assert (train / name / "metrics.json").is_file() and (train / name / "config.json").is_file()
        assert not (train / name / "loadavg.txt").exists(), name
    assert r.stdout.count("done already") == len(names)


def test_member_accuracy_stage_follows_the_evaluation(tmp_path, data_dir):
    """members_<row> re-scores every target's members on the evaluation's own examples; it runs
    when its output is missing or older than the evaluation, and is skipped otherwise."""
    out, cmds = _dry("mnist-paper", tmp_path, data_dir)
    cmd = cmds["members_mnist_conv3"]
    assert cmd.split()[1:3] == ["-m", "tf_divtrain.experiments.member_accuracy"]
    assert _flag(cmd, "eval") == _flag(cmds["evaluate_mnist_conv3"], "out_dir") + "/results.json"
    assert _flag(cmd, "targets") is None and _flag(cmd, "cells") is None  # all targets, all cells
    ev = tmp_path / "cpu" / "mnist_conv3" / "eval"
    ev.mkdir(parents=True)
    (ev / "member_accuracy.json").write_text("{}")
    (ev / "results.json").write_text("{}")
    old = os.path.getmtime(ev / "results.json") - 100
    os.utime(ev / "member_accuracy.json", (old, old))  # older than the evaluation: re-run
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "members_mnist_conv3" in cmds
    os.utime(ev / "member_accuracy.json", (old + 200, old + 200))
    out, cmds = _dry("cpu", tmp_path, data_dir)
    assert "members_mnist_conv3" not in cmds and "members_mnist_conv3: done already" in out
    out, cmds = _dry("smoke", tmp_path, data_dir)
    assert "members_mnist_conv3" not in out  # skipped in the smoke preset ...
    out, cmds = _dry("smoke", tmp_path, data_dir, MEMBERS_STAGE="1")
    assert "members_mnist_conv3" in cmds  # ... unless asked for

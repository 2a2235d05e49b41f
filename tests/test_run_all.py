"""run_all.sh end to end on the smoke preset (every stage, tiny settings), plus the report logic."""

import json
import os
import subprocess
import sys

import pytest

from tf_divtrain import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PE = {"n": 1, "clean": "gA=="}  # stands in for a row's per-example results (only presence is read)


def _run(args, tmp_path, data_dir):
    env = dict(os.environ, TF_DIVTRAIN_DATA=data_dir, RESULTS_ROOT=str(tmp_path),
               PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(["bash", os.path.join(REPO, "run_all.sh"), *args], env=env,
                          capture_output=True, text=True, cwd=REPO)


def test_help_and_bad_arguments(tmp_path, data_dir):
    r = _run(["--help"], tmp_path, data_dir)
    assert r.returncode == 0 and "Presets:" in r.stdout and "smoke" in r.stdout
    r = _run(["gpu-please"], tmp_path, data_dir)
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_smoke_preset_end_to_end_and_resume(tmp_path, data_dir):
    r = _run(["smoke"], tmp_path, data_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = tmp_path / "smoke"
    for f in ("mnist_conv3/eval/results.json", "mnist_conv3/eval/table2.md",
              "mnist_conv3/eval/results.csv", "mnist_conv3/analysis/analysis.json",
              "mnist_conv3/analysis/coherence_hist.png", "mnist_conv3/analysis/gaas.png",
              "REPORT.md", "stage_times.tsv", "logs/train_mnist_conv3_div.log"):
        assert (res / f).exists(), f
    text = (res / "REPORT.md").read_text()
    for needle in ("| T_Div | ours |", "| T_Div | paper | 99.2 |", "T_Div > T_Base", "Coherence",
                   "Ensemble size 3 instead of 5", "train_mnist_conv3_ensdiv"):
        assert needle in text, needle
    # Weights stay out of the results that get committed: they live under work/ (git-ignored).
    assert (res / "work" / "mnist_conv3" / "div" / "saved_model" / "saved_model.pb").exists()
    again = _run(["smoke"], tmp_path, data_dir)
    assert again.returncode == 0
    assert again.stdout.count("done already") == 8  # 6 trainings + evaluate + analyze skipped
    assert "members_mnist_conv3" not in r.stdout  # MEMBERS_STAGE=0 in the smoke presets


def _results(acc):
    """A results dict in evaluation's schema; acc: label -> (clean, {attack: (a1, a2)})."""
    rows = [{"label": k, "role": "target", "clean": c,
             "attacks": {a: {"0.1": v[0], "0.3": v[1]} for a, v in att.items()}}
            for k, (c, att) in acc.items()]
    return {"eps": [0.1, 0.3], "attacks": ["fgsm", "ifgsm"], "rows": rows, "dataset": "mnist",
            "num_examples": 10, "seed": 0}


def test_ordering_checks_state_each_cell():
    res = _results({"T_Base": (0.99, {"fgsm": (0.9, 0.1), "ifgsm": (0.8, 0.05)}),
                    "T_Div": (0.98, {"fgsm": (0.95, 0.3), "ifgsm": (0.7, 0.2)}),
                    "T_Ens": (0.99, {"fgsm": (0.97, 0.5), "ifgsm": (0.97, 0.4)}),
                    "T_Ens+Div": (0.99, {"fgsm": (0.97, 0.6), "ifgsm": (0.96, 0.5)})})
    lines = report.ordering_checks(res, {"ensembles": {"T_Base": {"coherence": {"mean": 0.8}},
                                                       "T_Div": {"coherence": {"mean": 0.3}}}})
    div = next(l for l in lines if l.startswith("- **T_Div > T_Base**"))
    assert "holds in 3 of 4 cells" in div and "I-FGSM@0.1: 70.0 vs 80.0 **does not hold**" in div
    ens = next(l for l in lines if l.startswith("- **T_Ens+Div ≥ T_Ens**"))
    assert "holds in 3 of 4 cells" in ens  # equal counts as holding for the >= ordering
    assert any("Lower coherence for T_Div than T_Base" in l and "holds" in l for l in lines)


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
    env = dict(os.environ, TF_DIVTRAIN_DATA=data_dir, RESULTS_ROOT=str(tmp_path),
               PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("CIFAR_STEPS", "CIFAR_RESNET_STEPS", "CIFAR_MIX_STEPS", "CIFAR_FULL_ROWS",
              "CIFAR_ROW_EVAL_EXAMPLES", "PRESET_TRAIN_FLAGS"):
        env.pop(k, None)
    env.update(extra)
    return subprocess.run(["bash", os.path.join(REPO, "run_all.sh"), *args], env=env,
                          capture_output=True, text=True, cwd=REPO)


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


def _metrics(mode, steps, members=5, acc=0.5, model="conv4"):
    return {"config": {"dataset": "cifar10", "mode": mode, "batch_size": 128, "max_steps": steps,
                       "train_examples": 0, "model": model},
            "steps": steps, "ensemble_accuracy": acc, "member_accuracy": [acc] * members,
            "test_gradient_stats": {"gal": 1.0, "coherence": 0.5, "mean_cosine": 0.3},
            "images_per_sec_this_session": 100.0, "train_seconds_this_session": 10.0}


def _cifar_results(labels):
    att = {a: {"0.03": 0.4, "0.09": 0.1} for a in ("fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw")}
    rows = [{"label": "S", "role": "surrogate", "clean": 0.6, "attacks": att}]
    for i, lbl in enumerate(labels):
        a = {k: {"0.03": v["0.03"] + 0.05 * i, "0.09": v["0.09"] + 0.02 * i} for k, v in att.items()}
        rows.append({"label": lbl, "role": "target", "clean": 0.55, "attacks": a})
    return {"eps": [0.03, 0.09], "attacks": ["fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw"],
            "rows": rows, "dataset": "cifar10", "num_examples": 1000, "seed": 0}


def _gaas(p):
    return {"definition": "d", "num_examples": 100, "num_correct": 50,
            "results": {e: {k: {"p_all": p, "mean_num_adversarial": 10 * p} for k in ("4", "16", "36", "64")}
                        for e in ("0.03", "0.06", "0.09")}}


def test_report_renders_cifar_rows_missing_targets_and_k25_note(tmp_path):
    res = tmp_path / "cpu-cifar"
    w = res / "work"
    for role, mode in (("surrogate", "baseline"), ("static", "baseline"), ("base", "baseline"),
                       ("div", "div"), ("ens", "ens_adv"), ("ensdiv", "ens_adv_div")):
        d = w / "cifar10_conv4" / role
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(mode, 120, 1 if role == "static" else 5)))
    for role, mode in (("surrogate", "baseline"), ("base", "baseline"), ("div", "div")):
        d = w / "cifar10_resnet20" / role
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(mode, 60, model="resnet20")))
    for row, labels in (("cifar10_conv4", ["T_Base", "T_Div", "T_Ens", "T_Ens+Div"]),
                        ("cifar10_resnet20", ["T_Base", "T_Div"])):
        (res / row / "eval").mkdir(parents=True)
        (res / row / "eval" / "results.json").write_text(json.dumps(_cifar_results(labels)))
    coh = {"n": 500, "mean": 0.5, "median": 0.5, "q25": 0.4, "q75": 0.6}
    an = {"analyses": ["coherence", "gaas", "transfer"],
          "subset_sizes": {"coherence": 500, "gaas": 100, "transfer": 100},
          "settings": {"gaas_k": [4, 16, 36, 64], "gaas_eps": [0.03, 0.06, 0.09]},
          "ensembles": {"T_Base": {"coherence": dict(coh, mean=0.8), "gaas": _gaas(0.2),
                                   # short CIFAR runs: no example two members both get right
                                   "transfer": {"definition": "d", "eps": 0.09, "nb_iter": 10,
                                                "mean_off_diagonal": None,
                                                "matrix": [[None, None], [None, 1.0]]}},
                        "T_Div": {"coherence": dict(coh, mean=0.1), "gaas": _gaas(0.0)},
                        "T_Ens": {"coherence": coh, "gaas": _gaas(0.1)},
                        "T_Ens+Div": {"coherence": coh, "gaas": _gaas(0.1)}}}
    (res / "cifar10_conv4" / "analysis").mkdir(parents=True)
    (res / "cifar10_conv4" / "analysis" / "analysis.json").write_text(json.dumps(an))
    text = report.build_report("cpu-cifar", str(res))
    # Every planned row is present; MIX (no outputs at all) renders as not run with the paper's row.
    for needle in ("## CONV-4 (CIFAR-10)", "## RESNET-20 (CIFAR-10)", "## MIX (CIFAR-10)", "## Coverage"):
        assert needle in text, needle
    mix = text[text.index("## MIX (CIFAR-10)"):]
    assert "**Not run**" in mix and "| T_Base | paper | 89.7 |" in mix and "| T_Div | paper | 88.2 |" in mix
    assert "| MIX (CIFAR-10) | not run | not run | not run | not run | not run | not run | not run | not run |" in text
    resnet = text[text.index("## RESNET-20 (CIFAR-10)"):text.index("## MIX (CIFAR-10)")]
    for needle in ("| T_Ens | ours | not run |", "| T_Ens+Div | ours | not run |",
                   "| T_Base | paper | 88.9 |", "| T_Div | paper | 84.0 |",
                   "Targets not run: T_Ens, T_Ens+Div and the static model",
                   "**T_Ens+Div ≥ T_Ens** under attack: not checked — T_Ens+Div, T_Ens not run",
                   "**T_Div > T_Base** under attack: holds in 10 of 10 cells",
                   "60 steps of batch 128 = 0.15 epochs per model instead of the paper's 40 epochs",
                   "Analyses (coherence, GAAS, transferability, white-box): not run"):
        assert needle in resnet, needle
    conv4 = text[text.index("## CONV-4 (CIFAR-10)"):text.index("## RESNET-20 (CIFAR-10)")]
    for needle in ("| T_Base | paper | 85.1 |", "| T_Div | paper | 82.4 |",
                   "120 steps of batch 128 = 0.31 epochs per model instead of the paper's 20 epochs",
                   "GAAS orders k = 4, 16, 36, 64 instead of the paper's 4, 25, 36, 64",
                   "No Hadamard matrix of order 25 exists", "k = 36 passes", "k = 64 passes",
                   "`analysis.check_gaas_k(25)` raises an error", "up to order 100 it constructs exactly 4, 16, 36, 64",
                   "holds in 12 of 12 cells (0 of them ties)", "**T_Ens+Div ≥ T_Ens** under attack: holds",
                   "Lower coherence for T_Div than T_Base** (Fig. 4): mean 0.100 vs 0.800 — holds",
                   "| T_Base | 50 / 100 | 0.03 |", "transferability on 100 test images",
                   "not run: white-box", "mean off-diagonal n/a: no example that two members"):
        assert needle in conv4, needle
    # T_Ens vs T_Ens+Div GAAS: equal everywhere -> every cell is a tie, reported as such.
    assert "Fewer GAAS directions for T_Ens+Div than T_Ens" in conv4 and "(12 of them ties)" in conv4


def test_report_flags_targets_of_different_lengths(tmp_path):
    w = tmp_path / "r" / "work" / "cifar10_conv4"
    for role, steps in (("surrogate", 100), ("base", 100), ("div", 80)):
        (w / role).mkdir(parents=True)
        (w / role / "metrics.json").write_text(json.dumps(_metrics("baseline", steps)))
    text = report.build_report("cpu-cifar", str(tmp_path / "r"))
    assert "The targets trained different lengths" in text


def test_report_states_the_training_precision(tmp_path):
    w = tmp_path / "r" / "work" / "cifar10_conv4"
    for role, prec in (("surrogate", "float32"), ("base", "mixed_bfloat16"), ("div", "mixed_bfloat16")):
        (w / role).mkdir(parents=True)
        m = _metrics("baseline", 100)
        m["config"]["precision"] = prec
        (w / role / "metrics.json").write_text(json.dumps(m))
    text = report.build_report("cpu-cifar", str(tmp_path / "r"))
    assert "- Training precision: float32 (S), mixed_bfloat16 (T_Base, T_Div)" in text
    for role in ("base", "div"):
        m = json.loads((w / role / "metrics.json").read_text())
        m["config"]["precision"] = "float32"
        (w / role / "metrics.json").write_text(json.dumps(m))
    assert "Training precision" not in report.build_report("cpu-cifar", str(tmp_path / "r"))


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


def _mnist_metrics(mode, steps=500, members=5, acc=0.98, ips=64.0, seconds=1000.0, params="", seed=0):
    return {"config": {"dataset": "mnist", "mode": mode, "batch_size": 128, "max_steps": steps,
                       "train_examples": 0, "model": "conv3", "epochs": 10, "learning_rate": 0.001,
                       "seed": seed, "method_params": params, "gal_lambda": 0.5, "noise_eps": 0.3},
            "steps": steps, "ensemble_accuracy": acc, "member_accuracy": [acc] * members,
            "test_gradient_stats": {"gal": 1.0, "coherence": 0.5, "mean_cosine": 0.3},
            "images_per_sec_this_session": ips, "train_seconds_this_session": seconds}


def _block(label, targets, base=0.5):
    att = ("fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw")
    rows = [{"label": t, "role": "target", "clean": 0.99,
             "attacks": {a: {"0.1": base + 0.01 * i, "0.3": base / 10 + 0.01 * i} for a in att},
             "robust_to_all": {"0.1": 0.4 + 0.01 * i, "0.3": 0.02, "all": 0.01 * i}}
            for i, t in enumerate(targets)]
    rows.append({"label": f"{label} (white-box)", "role": "surrogate", "clean": 0.98,
                 "attacks": {a: {"0.1": 0.1, "0.3": 0.0} for a in att}})
    return {"label": label, "rows": rows}


def _comparison(text):
    section = text[text.index("## Comparison"):text.index("## Training cost per step")]
    return [l for l in section.splitlines() if l.startswith("| T_")]


def test_methods_report_one_table_with_not_run_cells(tmp_path):
    res = tmp_path / "cpu-methods"
    w = res / "work" / "mnist_conv3"
    runs = {"base": _mnist_metrics("baseline", ips=160.0), "div": _mnist_metrics("div", ips=48.0),
            "adp": _mnist_metrics("adp", params="alpha=2,beta=0.5"),
            "trs": _mnist_metrics("trs", ips=16.0, seconds=4000.0, params="init_eps=0.1,adv_eps=0.2"),
            "s3": _mnist_metrics("baseline", members=3, seed=13), "s5": _mnist_metrics("baseline", seed=10)}
    for name, m in runs.items():  # DVERGE, S8 and S_div were not trained
        (w / name).mkdir(parents=True)
        (w / name / "metrics.json").write_text(json.dumps(m))
    train = res / "mnist_conv3" / "train"
    for name, load in (("base", "0.9 1.1 1.8 2/300 1"), ("trs", "4.1 4.0 3.9 3/300 1")):
        (train / name).mkdir(parents=True)
        (train / name / "loadavg.txt").write_text(load)
    (res / "mnist_conv3" / "eval").mkdir(parents=True)
    blocks = [_block("S3", ["T_Base", "T_Div", "T_ADP", "T_TRS"]), _block("S5", ["T_Base", "T_Div", "T_ADP", "T_TRS"], 0.6)]
    results = {"eps": [0.1, 0.3], "attacks": ["fgsm", "rfgsm", "ifgsm", "mifgsm", "pgd_cw"],
               "rows": blocks[0]["rows"], "by_surrogate": blocks, "dataset": "mnist", "num_examples": 1000, "seed": 0}
    (res / "mnist_conv3" / "eval" / "results.json").write_text(json.dumps(results))
    an = {"analyses": ["coherence", "transfer", "whitebox"],
          "subset_sizes": {"coherence": 500, "transfer": 100, "whitebox": 100},
          "settings": {"transfer_eps": 0.3, "transfer_iters": 10, "whitebox_eps": [0.1, 0.3], "whitebox_iters": 20},
          "ensembles": {"T_Base": {"coherence": {"mean": 0.807}, "transfer": {"mean_off_diagonal": 0.995},
                                   "whitebox": {"worst_case_accuracy": {"0.1": 0.3, "0.3": 0.0}}},
                        "T_Div": {"coherence": {"mean": 0.041}, "transfer": {"mean_off_diagonal": 0.51},
                                  "whitebox": {"worst_case_accuracy": {"0.1": 0.78, "0.3": 0.01}}}}}
    (res / "mnist_conv3" / "analysis").mkdir(parents=True)
    (res / "mnist_conv3" / "analysis" / "analysis.json").write_text(json.dumps(an))
    bench = {"members": 5, "batch_size": 128, "precision": "mixed_bfloat16", "cores": 2, "reps": 8,
             "load_average_before": [1.0, 1.1, 1.2], "load_average_after": [2.0, 1.5, 1.3],
             "timestamp_utc": "2026-01-01 00:00:00",
             "modes": {m: {"median_step_s": s_, "images_per_s": 128 / s_, "over_baseline": s_ / 0.25,
                           "over_div": s_ / 0.5} for m, s_ in (("baseline", 0.25), ("div", 0.5), ("trs", 2.0))}}
    (res / "mnist_conv3" / "method_steps.json").write_text(json.dumps(bench))
    text = report.build_report("cpu-methods", str(res))
    cost = text[text.index("## Training cost per step"):text.index("## Paired comparisons")]
    for needle in ("| T_Base | baseline | 0.25 | 512 | 1.00 | 0.50 |", "| T_Div | div | 0.50 | 256 | 2.00 | 1.00 |",
                   "| T_TRS | trs | 2.00 | 64 | 8.00 | 4.00 |", "| T_ADP | adp | not run |",
                   "before 1.0 / 1.1 / 1.2, after 2.0 / 1.5 / 1.3"):
        assert needle in cost, (needle, cost)
    table = _comparison(text)
    line = lambda t, s: next(l for l in table if l.startswith(f"| {t} |") and f"| {s} |" in l)  # noqa: E731
    assert len([l for l in table if "| S3 |" in l]) == 5 and len(table) == 5 * 4  # 5 targets x 4 surrogates
    base = line("T_Base", "S3")
    for needle in ("| 99.0 |", "| 50.0 / 5.0 |", "| 40.0 / 2.0 (0.0) |", "| 0.807 | 0.995 | 30.0 / 0.0 |",
                   "| 0.80 (load 1.8) |"):
        assert needle in base, (needle, base)
    assert "| 60.0 / 6.0 |" in line("T_Base", "S5")
    trs_line = line("T_TRS", "S3")  # 4th target of the block: +0.03
    assert "| 53.0 / 8.0 |" in trs_line and "| 43.0 / 2.0 (3.0) |" in trs_line
    # Analyses not run for TRS; its cost: 128 / 16 img/s = 8 s/step, 500 steps in 4000 s, load 3.9 on
    # this machine's cores (shared if > 1.5 x cores).
    assert "| not run | not run | not run / not run |" not in trs_line
    assert trs_line.count("not run") == 3 and "| 8.00 (load 3.9" in trs_line
    shared = 3.9 > 1.5 * (os.cpu_count() or 1)
    assert ("shared)" in trs_line) == shared
    # DVERGE: nothing at all; S8 / S_div: no evaluation blocks -> every cell "not run".
    dv = line("T_DVERGE", "S5")
    assert dv.count("not run") == 1 + 5 + 1 + 3 + 1, dv
    s8 = line("T_Div", "S8")
    assert "| 99.0 |" in s8 and s8.count("not run") == 6  # clean: the evaluation's (same for every block)
    for needle in ("# GAL next to ADP, DVERGE and TRS", "500 steps of batch 128 (1.07 epochs)",
                   "radius was 0.1, 0.11 (of 0.1 → 0.2)", "same seed-0 initial weights", "first 1000 test images",
                   "coherence on 500 test images", "| S8 | surrogate: baseline, 8 members | not run |",
                   "alpha = 2.0, beta = 0.5", "init_eps = 0.1, adv_eps = 0.2", "trains from scratch",
                   "λ = 0.5, D_noise ε = 0.3", "| S3 | surrogate: baseline, 3 members | baseline | 3 | 13 |"):
        assert needle in text, needle


def test_methods_report_with_nothing_run(tmp_path):
    (tmp_path / "r").mkdir()
    text = report.build_report("cpu-methods", str(tmp_path / "r"))
    table = _comparison(text)
    assert len(table) == 20 and all(l.count("not run") == 11 for l in table), table[0]
    assert "Transfer evaluation: not run" in text and "Training: not run" in text
    assert "Step cost benchmark: not run" in text


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

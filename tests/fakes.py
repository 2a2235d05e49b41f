"""Fake run outputs in the results schema (results.json, analysis.json, metrics.json) for the
report and pipeline tests, small and hand-made so every rendered number can be checked; the
run_all.sh runner those tests share; tiny exportable ensembles (the evaluation tests' surrogates
and targets); the local multi-worker launcher of the ``--strategy=multi_worker`` tests; and a
CLI's flags parsed as its console script parses them, to run its ``main`` in the test process.
Importing this module imports no TensorFlow (the report tests use it)."""

import json
import os
import socket
import subprocess
import sys

from conftest import tiny_cnn_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOBS = ("CIFAR_STEPS", "CIFAR_RESNET_STEPS", "CIFAR_MIX_STEPS", "CIFAR_FULL_ROWS",
         "CIFAR_ROW_EVAL_EXAMPLES", "PRESET_TRAIN_FLAGS")


def run_all_sh(args, tmp_path, data_dir, extra=None):
    """``bash run_all.sh ARGS`` as a user runs it, results under ``tmp_path``, the preset knobs of
    the caller's environment removed (``extra`` sets some)."""
    env = dict(os.environ, TF_DIVTRAIN_DATA=data_dir, RESULTS_ROOT=str(tmp_path),
               PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in KNOBS:
        env.pop(k, None)
    env.update(extra or {})
    return subprocess.run(["bash", os.path.join(REPO, "run_all.sh"), *args], env=env,
                          capture_output=True, text=True, cwd=REPO)


def parse_cli_flags(mod, argv):
    """Flags of CLI module ``mod`` parsed the way its ``run()`` does (``cli_flags.parse_flags``)."""
    from absl import flags

    from tf_divtrain import cli_flags

    fv = flags.FlagValues()
    mod.define_flags(fv)
    cli_flags.parse_flags(argv, fv)
    return fv


def run_cli_in_process(mod, argv):
    """``mod.main`` in this process as its console script runs it (flags parsed, faults turned
    into ``error:`` lines and exit codes by ``cli_flags.guarded``): one TensorFlow start-up fewer
    than a subprocess."""
    from tf_divtrain import cli_flags

    return cli_flags.guarded(mod.main)([argv[0]], parse_cli_flags(mod, argv))


def cli_exit(capsys, mod, argv):
    """:func:`run_cli_in_process` of a run that must end: returns (exit code, stderr)."""
    import pytest

    with pytest.raises(SystemExit) as e:
        run_cli_in_process(mod, argv)
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


def free_ports(n):
    """``n`` free TCP ports on the loopback interface (bound once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch_workers(argv, env, n=2, env_for=None, **popen_kwargs):
    """Starts ``n`` local processes of ``argv``, worker i of an ``n``-worker cluster on free
    loopback ports (``$TF_CONFIG``); ``env_for(i)`` adds worker i's own variables. Returns the
    ``Popen`` objects (the caller waits)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    procs = []
    for i in range(n):
        e = dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        e.update(env_for(i) if env_for else {})
        procs.append(subprocess.Popen(argv, env=e, cwd=REPO, **popen_kwargs))
    return procs


META = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}


tiny_member = tiny_cnn_model  # the suite's one tiny member (conftest): 4-filter conv + dense


def fit_briefly(ens, x, y, steps=40):
    """A few Adam steps so that accuracies are not all chance level."""
    import keras
    import tensorflow as tf

    from tf_divtrain import gal

    opt = keras.optimizers.Adam(3e-3)
    for i in range(steps):
        sl = slice(i * 64 % len(x), i * 64 % len(x) + 64)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(gal.member_cross_entropy(ens.member_logits(x[sl], training=True), y[sl]))
        opt.apply_gradients(zip(tape.gradient(loss, ens.trainable_variables), ens.trainable_variables))
    return ens


PE = {"n": 1, "clean": "gA=="}  # stands in for a row's per-example results (only presence is read)


def _results(acc):
    """A results dict in evaluation's schema; acc: label -> (clean, {attack: (a1, a2)})."""
    rows = [{"label": k, "role": "target", "clean": c,
             "attacks": {a: {"0.1": v[0], "0.3": v[1]} for a, v in att.items()}}
            for k, (c, att) in acc.items()]
    return {"eps": [0.1, 0.3], "attacks": ["fgsm", "ifgsm"], "rows": rows, "dataset": "mnist",
            "num_examples": 10, "seed": 0}


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


def _bits(s):
    return [c == "1" for c in s]


def _field_results(targets, dataset="mnist", eps=(0.1, 0.3), sets=("mpgd_ce_r0", "mdi2fgsm_ce"),
                   reductions=("8 test images (DVERGE / TRS: 1000)",)):
    """results.json of an ``evaluate --protocol=field`` run with hand-made per-example masks.

    ``targets``: {label: {"clean": "1101...", surrogate: {set: {eps_key: "0110..."}}}}; every
    accuracy, robust-to-all and worst set is derived from the masks, so a test can check them."""
    from tf_divtrain import stats

    def row(label, spec, sur):
        clean = _bits(spec["clean"])
        cells = {s: {e: _bits(spec[sur][s][e]) for e in spec[sur][s]} for s in sets}
        mean = lambda m: sum(m) / len(m)  # noqa: E731
        return {"label": label, "role": "target", "clean": mean(clean),
                "attacks": {s: {e: mean(m) for e, m in c.items()} for s, c in cells.items()},
                "per_example": {"n": len(clean), "encoding": stats.ENCODING,
                                "clean": stats.encode_mask(clean),
                                "attacks": {s: {e: stats.encode_mask(m) for e, m in c.items()}
                                            for s, c in cells.items()}}}

    surrogates = [k for k in next(iter(targets.values())) if k != "clean"]
    blocks = [{"label": sur, "rows": [row(t, spec, sur) for t, spec in targets.items()]
                                     + [{"label": f"{sur} (white-box)", "role": "surrogate",
                                         "clean": 1.0, "attacks": {x: {f"{e:g}": 0.0 for e in eps}
                                                                   for x in sets}}]}
              for sur in surrogates]
    display = {"mpgd_ce_r0": "M-PGD CE r0", "mdi2fgsm_ce": "M-DI²-FGSM CE", "pgd50_cw_r0": "PGD-50 CW r0"}
    return {"schema_version": 2, "protocol": "field", "dataset": dataset, "eps": list(eps),
            "attacks": list(sets), "num_examples": len(_bits(next(iter(targets.values()))["clean"])),
            "seed": 0, "batch_size": 8, "rows": blocks[0]["rows"], "by_surrogate": blocks,
            "field": {"families": ["mpgd", "mdi2fgsm"], "losses": ["ce"], "restarts": 1,
                      "steps": 5, "omitted": {},
                      "sets": {s: {"attack": s.split("_")[0], "display": display.get(s, s),
                                   "options": {"loss": "ce", "nb_iter": 5}} for s in sets},
                      "reductions": list(reductions)}}

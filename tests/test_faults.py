"""Fault injection (issue 25): a kill at every write, a full disk, damaged files, bad input, two
runs on one out_dir. Each fault is injected deterministically through ``$TF_DIVTRAIN_FAULT``
(``tf_divtrain.io_utils.fault_point``), never by timing; each test checks what the user sees (one
``error:`` line, exit 2, or a re-run that finishes with the numbers of an uninterrupted run) and that
nothing saved before is lost. In-process tests stand in for SIGKILL with the ``crash`` action (an
exception no ``except Exception`` catches); the ``slow`` tests repeat the train and evaluate chains
with real SIGKILLs of real CLI processes.

Every fault a test injects is recorded (:func:`record`); the module's teardown prints the count
"faults injected / survived / data lost" and, with ``$TF_DIVTRAIN_FAULT_SUMMARY`` set, writes it
there as JSON (the README's "What survives what" figure comes from that file).
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tf_divtrain import cli_flags, io_utils, locking

from conftest import cli_env
from fakes import cli_exit, free_ports, parse_cli_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTCOMES = []  # (fault, survived, data_lost) of every injected fault
TIMING_KEYS = {"created_utc", "train_seconds_this_session", "images_per_sec_this_session",
               "train_seconds_total", "train_sessions",
               "wall_seconds_this_session", "seconds", "images_per_sec", "cached", "path", "cache_dir"}


def record(fault: str, survived: bool, data_lost: bool = False) -> None:
    """Counts one injected fault; called only once the test has checked its outcome (a chain of
    faults records each of them after the final comparison with the uninterrupted run)."""
    OUTCOMES.append((fault, bool(survived), bool(data_lost)))


@pytest.fixture(scope="module", autouse=True)
def _fault_summary():
    yield
    summary = {"injected": len(OUTCOMES), "survived": sum(s for _, s, _ in OUTCOMES),
               "data_lost": sum(l for _, _, l in OUTCOMES), "faults": [f for f, _, _ in OUTCOMES]}
    print(f"\nfault suite: {summary['injected']} faults injected, {summary['survived']} survived, "
          f"{summary['data_lost']} lost data")
    if os.environ.get("TF_DIVTRAIN_FAULT_SUMMARY"):
        with open(os.environ["TF_DIVTRAIN_FAULT_SUMMARY"], "w") as f:
            json.dump(summary, f, indent=2)


@pytest.fixture
def fault(monkeypatch):
    """``fault("point=action,...")`` arms the in-process fault hook (counts start over)."""
    def arm(spec):
        io_utils.reset_fault_counts()
        if spec:
            monkeypatch.setenv(io_utils.FAULT_ENV, spec)
        else:
            monkeypatch.delenv(io_utils.FAULT_ENV, raising=False)
    yield arm
    io_utils.reset_fault_counts()


def _env(**extra):
    return cli_env(**extra)  # no inherited fault hook


def _normalise(obj, dirs=()):
    """JSON minus timings / cache flags / paths, with run directories replaced by ``<dir>``."""
    if isinstance(obj, dict):
        return {k: _normalise(v, dirs) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_normalise(v, dirs) for v in obj]
    if isinstance(obj, str):
        for d in dirs:
            obj = obj.replace(str(d), "<dir>")
    return obj


def _ckpt_tensors(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_weights(a_prefix, b_prefix):
    a, b = _ckpt_tensors(a_prefix), _ckpt_tensors(b_prefix)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs"  # bitwise: the run is deterministic


def _one_error_line(err, *needles):
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Finding 4: flag errors are one short line.

@pytest.mark.parametrize("cli, argv, expected", [
    ("train", ["--out_dir=/nonexistent/x", "--batch_size=0"], "error: batch_size=0 is too small for mode=baseline."),
    ("train", ["--out_dir=/nonexistent/x", "--noise_eps=2"], "error: noise_eps=2.0 is outside [0, 1]"),
    ("evaluate", ["--surrogate_dir=a", "--targets=T=b", "--out_dir=c", "--attacks=nope"],
     "error: --attacks must be a non-empty subset of"),
    ("analyze", ["--batch_size=many"], "error: flag --batch_size=many: invalid literal"),
    ("report", ["--results_dir=x", "--nope"], "error: Unknown command line flag 'nope'"),
])
def test_flag_error_is_one_short_line_in_every_cli(cli, argv, expected, capsys, monkeypatch):
    """Each CLI's run() goes through cli_flags.run_app, whose flags parser gives the message first,
    in one short line, exit 2, without absl's dump of every flag's value (main: one line of 676
    characters, the message last, for --batch_size=0)."""
    import importlib

    from absl import app

    mod = importlib.import_module(f"tf_divtrain.{cli}")
    calls = []
    with monkeypatch.context() as m:
        m.setattr(mod, "define_flags", lambda *a, **k: None)
        m.setattr(app, "run", lambda main, argv=None, flags_parser=app.parse_flags_with_usage:
                  calls.append(flags_parser))
        mod.run()  # which flags parser the console script hands to absl
    assert calls and calls[0] is not app.parse_flags_with_usage  # main: absl's long-winded one
    fv = flags.FlagValues()
    mod.define_flags(fv)
    with pytest.raises(SystemExit) as e:
        cli_flags.parse_flags([cli] + argv, fv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err.startswith(expected) and len(err.splitlines()) == 1 and len(err) < 200, err
    record(f"flag error ({cli} {argv[-1]})", True)


@pytest.mark.slow
def test_flag_error_through_the_real_train_command():
    """The finding as a user meets it: ``python -m tf_divtrain.train --batch_size=0``."""
    r = subprocess.run([sys.executable, "-m", "tf_divtrain.train", "--out_dir=/nonexistent/x",
                        "--batch_size=0"], capture_output=True, text=True, env=_env(), cwd=REPO)
    err = "\n".join(l for l in r.stderr.splitlines() if not l.startswith(("I0000", "WARNING: All")))
    assert r.returncode == 2 and err.strip() == "error: batch_size=0 is too small for mode=baseline."
    record("flag error (real CLI --batch_size=0)", True)


# ----------------------------------------------------------------------------------------------
# Finding 3: an explicit precision this hardware emulates.

def test_emulated_bfloat16_warns_naming_the_cpu_feature(tmp_path, monkeypatch, capsys):
    """On a CPU without AVX512_BF16/AMX-BF16 (faked cpuinfo: this machine has them) an explicit
    mixed_bfloat16 gets one warning line naming the missing feature and suggesting auto."""
    from tf_divtrain import precision

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\n")
    monkeypatch.setenv(precision.CPUINFO_ENV, str(fake))
    assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AVX512_BF16" in err[0] and "--precision=auto" in err[0], err
    assert "float32 here" in err[0]
    for quiet in ("float32", "auto"):
        precision.resolve(quiet)
        assert "warning" not in capsys.readouterr().err
    fake.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16\n")  # native: no warning
    precision.resolve("mixed_bfloat16")
    assert capsys.readouterr().err == ""
    record("emulated bfloat16", True)


# ----------------------------------------------------------------------------------------------
# Finding 2: every reader of our JSON names a cut-off file and the stage that rewrites it.

def _cut(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])


RESULTS = json.dumps({"rows": [{"label": "T_Base", "per_example": {"clean": "1"}}], "eps": [0.1],
                      "attacks": ["fgsm"]}, indent=2)


def test_cut_off_results_json_in_report(tmp_path, capsys):
    """``python -m tf_divtrain.report`` on a results.json cut mid-file (main: JSONDecodeError
    traceback) -> one error line naming the file and ``re-run evaluate``, exit 2."""
    from tf_divtrain import report

    bad = tmp_path / "mnist_conv3" / "eval" / "results.json"
    _cut(str(bad), RESULTS)
    code, err = cli_exit(capsys, report, ["report", "--preset=smoke", f"--results_dir={tmp_path}"])
    assert code == 2
    _one_error_line(err, f"error: {bad} is not a complete evaluation results file (",
                    "re-run evaluate")
    assert not (tmp_path / "REPORT.md").exists()
    assert bad.read_text() == RESULTS[: len(RESULTS) // 2]  # the damaged file is left for the user
    record("cut-off results.json (report)", True)


def test_cut_off_json_in_every_other_reader(tmp_path, capsys):
    """member_accuracy, compare_evals, the pipeline's staleness check, a run's config.json and
    report's metrics/analysis reads: the same one-line error, exit 2."""
    import importlib

    from tf_divtrain import training
    from tf_divtrain.pipeline import plan
    from tf_divtrain.report import common

    bad = str(tmp_path / "eval" / "results.json")
    _cut(bad, RESULTS)
    for script, argv in (("member_accuracy", [f"--eval={bad}", "--out", str(tmp_path / "m")]),
                         ("compare_evals", [f"--a={bad}", f"--b={bad}", "--out", str(tmp_path / "c")])):
        mod = importlib.import_module(f"tf_divtrain.experiments.{script}")
        argv = argv if script == "compare_evals" else argv[:1] + ["--targets=T_Base"] + argv[1:]
        assert mod.main(argv) == 2, script
        _one_error_line(capsys.readouterr().err, f"{bad} is not a complete evaluation results file",
                        "re-run evaluate")
        record(f"cut-off results.json ({script})", True)

    # The pipeline's staleness check: an error naming the file instead of re-running over it
    # (tests/test_pipeline.py runs the same through the CLI: one error line, status 2).
    with pytest.raises(io_utils.IncompleteFileError, match=f"{bad} is not a complete evaluation results file"):
        plan.Lacks(("T_Base",), "{done} lacks T_Base")(bad)
    record("cut-off results.json (pipeline staleness check)", True)

    for name, kind, stage in (("metrics.json", "training metrics file", "re-run train"),
                              ("analysis.json", "analysis file", "re-run analyze")):
        p = str(tmp_path / name)
        _cut(p, json.dumps({"steps": 4, "ensembles": {}}))
        with pytest.raises(io_utils.IncompleteFileError, match=f"is not a complete {kind} .*; {stage}"):
            common.load_json(p)
        record(f"cut-off {name} (report)", True)

    run = tmp_path / "run"
    _cut(str(run / "config.json"), json.dumps(training.TrainConfig(out_dir=str(run)).to_json()))
    with pytest.raises(io_utils.IncompleteFileError, match=r"config.json is not a complete training "
                                                           r"config .*re-run train with --fresh"):
        training.prepare_out_dir(training.TrainConfig(out_dir=str(run)))
    training.prepare_out_dir(training.TrainConfig(out_dir=str(run), fresh=True))  # moved aside
    assert len(glob.glob(str(run) + ".old-*/config.json")) == 1
    record("cut-off config.json (train)", True)


# ----------------------------------------------------------------------------------------------
# Atomic writes: a kill (real SIGKILL, no TensorFlow in the child: fast) or a full disk mid-write.

def test_sigkill_mid_write_never_leaves_a_partial_file(tmp_path):
    """The child is SIGKILLed after writing half of the new text: the old file is intact and the
    new one was never visible under its name."""
    path = tmp_path / "metrics.json"
    path.write_text('{"old": true}')
    code = ("import sys; from tf_divtrain import io_utils; "
            "io_utils.atomic_write_json(sys.argv[1], {'new': list(range(1000))})")
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=_env(
        TF_DIVTRAIN_FAULT="write:metrics.json=kill"), cwd=REPO)
    assert r.returncode == -9  # SIGKILL
    assert json.loads(path.read_text()) == {"old": True}
    assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "metrics.json.tmp*"))]  # the torn temp
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=_env(), cwd=REPO)
    assert r.returncode == 0 and json.loads(path.read_text()) == {"new": list(range(1000))}
    record("SIGKILL mid-write (atomic helper)", True)


def test_full_disk_names_the_path_and_keeps_the_old_file(tmp_path, fault):
    path = str(tmp_path / "results.json")
    io_utils.atomic_write_json(path, {"v": 1})
    fault("write:results.json=enospc")
    with pytest.raises(io_utils.OutputError, match=r"cannot write .*results.json \(No space left on "
                                                   r"device\); free some space"):
        io_utils.atomic_write_json(path, {"v": 2})
    assert json.loads(open(path).read()) == {"v": 1} and os.listdir(tmp_path) == ["results.json"]
    fault("")
    io_utils.atomic_write_json(path, {"v": 2})
    assert json.loads(open(path).read()) == {"v": 2}
    record("ENOSPC (atomic helper)", True)


# ----------------------------------------------------------------------------------------------
# Finding 1: a damaged checkpoint.

def test_restore_falls_back_past_a_damaged_checkpoint(tmp_path):
    """Newest checkpoint truncated to 100 bytes: restore takes the one before, says which was
    damaged and which it resumed from, moves the damaged files aside; none readable -> a
    NoReadableCheckpoint naming the directory and offering --fresh."""
    import tensorflow as tf

    from tf_divtrain import checkpoints

    d = str(tmp_path / "checkpoints")
    v = tf.Variable(tf.zeros([2000]))
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, d, max_to_keep=3)
    for step in (1, 2, 3):
        v.assign(tf.fill([2000], float(step)))
        manager.save(checkpoint_number=step)
    data3 = glob.glob(d + "/ckpt-3.data-*")[0]
    with open(data3, "r+b") as f:
        f.truncate(100)
    v.assign(tf.zeros([2000]))
    warnings = []
    got = checkpoints.restore_latest(ckpt, d, warnings.append)
    assert got == d + "/ckpt-2" and float(v[0]) == 2.0
    assert "ckpt-3 is damaged" in warnings[0] and "moved it to" in warnings[0]
    assert "resumed from " + d + "/ckpt-2 (step 2)" in warnings[1]
    assert os.path.getsize(glob.glob(d + "/damaged/ckpt-3.data-*")[0]) == 100  # kept, not deleted
    assert tf.train.latest_checkpoint(d) == d + "/ckpt-2"
    for f in glob.glob(d + "/ckpt-*.data-*"):
        with open(f, "r+b") as fh:
            fh.truncate(10)
    with pytest.raises(checkpoints.NoReadableCheckpoint, match=f"no readable checkpoint in {d}: "
                                                               r"2 damaged .*pass --fresh"):
        checkpoints.restore_latest(ckpt, d, warnings.append)
    assert len(glob.glob(d + "/damaged/*.index")) == 3
    record("damaged newest checkpoint (restore)", True)
    record("every checkpoint damaged (restore)", True)


def test_non_chief_restore_skips_without_moving(tmp_path):
    """A non-chief worker of a multi-worker run reads the chief's checkpoints: it skips a damaged
    one like the chief does, but never moves the chief's files (only the chief does)."""
    import tensorflow as tf

    from tf_divtrain import checkpoints

    d = str(tmp_path / "checkpoints")
    v = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, d, max_to_keep=3)
    for step in (1, 2):
        v.assign(float(step))
        manager.save(checkpoint_number=step)
    for f in glob.glob(d + "/ckpt-2.data-*"):
        with open(f, "r+b") as fh:
            fh.truncate(0)
    warnings = []
    assert checkpoints.restore_latest(ckpt, d, warnings.append, chief=False) == d + "/ckpt-1"
    assert float(v) == 1.0 and warnings == [] and os.path.exists(d + "/ckpt-2.index")
    assert not os.path.exists(d + "/damaged")
    record("damaged checkpoint seen by a non-chief worker", True)


# ----------------------------------------------------------------------------------------------
# Training runs: a reference, then the same command interrupted at every write point.

TRAIN_ARGS = ["--mode=baseline", "--ensemble_size=2", "--batch_size=16", "--train_examples=64",
              "--max_steps=4", "--checkpoint_every=1", "--eval_examples=20", "--log_every=100",
              "--noprogress"]


def _train_in_process(out_dir, extra=(), capsys=None):
    """``train.main`` in this process, flags parsed as the console script does."""
    from tf_divtrain import train

    fv = parse_cli_flags(train, ["train", f"--out_dir={out_dir}", *TRAIN_ARGS, *extra])
    return cli_flags.guarded(train.main)(["train"], fv)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of TRAIN_ARGS (the numbers every interrupted run must reproduce)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _train_in_process(out)
    return out


def test_train_interrupted_at_every_write_point_finishes_with_the_same_numbers(
        reference, tmp_path, fault, capsys):
    """The same command, crashed in turn: (1) mid checkpoint save (a torn data file), (2) between
    the checkpoint and the ``checkpoint`` state file, (3) a full disk at a checkpoint, (4) during
    the SavedModel export, (5) a full disk at metrics.json, (6) during metrics.json; then run once
    more without a fault. No partial file is ever taken as complete, and the final weights
    (bitwise) and metrics.json (up to timings) equal the uninterrupted run's."""
    import tensorflow as tf

    run = tmp_path / "run"
    ckpts = str(run / "checkpoints")
    survived = []

    def latest():
        return tf.train.latest_checkpoint(ckpts)

    fault("checkpoint:saved@2=torn-crash")
    with pytest.raises(io_utils.InjectedCrash):
        _train_in_process(run)
    assert latest().endswith("ckpt-1") and not (run / "metrics.json").exists()
    survived.append("train: crash mid checkpoint save (torn)")

    fault("checkpoint:saved@2=crash")  # resumed from 1: saves 2, then crashes before 3 is listed
    with pytest.raises(io_utils.InjectedCrash):
        _train_in_process(run)
    assert latest().endswith("ckpt-2") and os.path.exists(ckpts + "/ckpt-3.index")
    survived.append("train: crash between checkpoint and state file")

    fault("checkpoint:saved=enospc")
    code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={run}", *TRAIN_ARGS])
    assert code == 2
    _one_error_line(err, f"cannot write {ckpts} (No space left on device); free some space")
    assert latest().endswith("ckpt-2")  # ckpt-3's files were written, its commit failed
    _ckpt_tensors(latest())  # what was saved before is intact and readable
    survived.append("train: ENOSPC at a checkpoint")

    fault("export:swap=crash")
    with pytest.raises(io_utils.InjectedCrash):
        _train_in_process(run)
    assert latest().endswith("ckpt-4") and not (run / "saved_model").exists()
    assert not (run / "metrics.json").exists()
    survived.append("train: crash during SavedModel export")

    fault("write:metrics.json=enospc")
    code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={run}", *TRAIN_ARGS])
    assert code == 2
    _one_error_line(err, f"cannot write {run}/metrics.json (No space left on device)")
    assert (run / "saved_model" / "saved_model.pb").exists() and not (run / "metrics.json").exists()
    survived.append("train: ENOSPC at metrics.json")

    fault("write:metrics.json=crash")
    with pytest.raises(io_utils.InjectedCrash):
        _train_in_process(run)
    assert not (run / "metrics.json").exists()  # half of it was written, under the temp name
    survived.append("train: crash during metrics.json")

    fault("")
    _train_in_process(run)
    _assert_same_weights(str(reference / "checkpoints" / "ckpt-4"), latest())
    a = _normalise(json.loads((reference / "metrics.json").read_text()), [reference])
    b = _normalise(json.loads((run / "metrics.json").read_text()), [run])
    assert a == b
    # The whole run's time: ckpt-4's steps were trained by 3 runs (the first to step 1, the
    # second to 2, the fourth to 4; the third's step 3 was never committed), the run that wrote
    # metrics.json trained none. The uninterrupted reference: one session.
    m, ref_m = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    rec = json.loads((run / "checkpoints" / "train_time.json").read_text())
    assert [rec[k]["sessions"] for k in ("1", "2", "3", "4")] == [1, 2, 3, 3]
    assert m["train_sessions"] == 3 and m["train_seconds_total"] == rec["4"]["train_seconds"]
    assert rec["1"]["train_seconds"] < rec["2"]["train_seconds"] < rec["4"]["train_seconds"]
    assert ref_m["train_sessions"] == 1
    assert ref_m["train_seconds_total"] == ref_m["train_seconds_this_session"]
    _assert_same_weights(str(reference / "saved_model" / "variables" / "variables"),
                         str(run / "saved_model" / "variables" / "variables"))
    for name in survived:
        record(name, True)


def _train_mod():
    from tf_divtrain import train

    return train


def test_damaged_checkpoint_rerun_resumes_from_the_older_one(reference, tmp_path, capsys):
    """The finding as reported: the newest ``checkpoints/*.data-*`` truncated to 100 bytes, the
    same command re-run (main: IndexError traceback, exit 1). Now: it resumes from the older
    checkpoint, redoes the step and ends on the reference weights; with every checkpoint damaged
    it exits 2 with an error naming the directory and --fresh."""
    import tensorflow as tf

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for f in glob.glob(str(run / "checkpoints" / "ckpt-4.data-*")):
        with open(f, "r+b") as fh:
            fh.truncate(100)
    _train_in_process(run)
    _assert_same_weights(str(reference / "checkpoints" / "ckpt-4"),
                         tf.train.latest_checkpoint(str(run / "checkpoints")))
    assert len(glob.glob(str(run / "checkpoints" / "damaged" / "ckpt-4.*"))) == 2
    record("train: damaged newest checkpoint, re-run", True)

    for f in glob.glob(str(run / "checkpoints" / "ckpt-*.data-*")):
        with open(f, "r+b") as fh:
            fh.truncate(100)
    before = (run / "metrics.json").read_bytes()
    code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={run}", *TRAIN_ARGS])
    assert code == 2
    _one_error_line(err, f"no readable checkpoint in {run}/checkpoints", "pass --fresh")
    assert (run / "metrics.json").read_bytes() == before
    record("train: every checkpoint damaged, re-run", True)


def test_vanished_and_read_only_out_dir(tmp_path, fault, capsys):
    """out_dir deleted mid-run (main: a TensorFlow NotFoundError traceback) and a read-only
    out_dir: one error line naming the path, exit 2."""
    from tf_divtrain import loop, training

    run = tmp_path / "gone"

    class Vanish(loop.Hook):
        def on_step_end(self, state):
            if state.step == 2:
                shutil.rmtree(run)

    cfg = training.TrainConfig(mode="baseline", ensemble_size=2, batch_size=16, train_examples=64,
                               max_steps=4, checkpoint_every=1, eval_examples=20, progress=False,
                               out_dir=str(run))
    with pytest.raises(io_utils.OutputError, match=f"cannot write {run}/checkpoints"):
        training.train(cfg, hooks=[Vanish()])
    record("train: out_dir vanished mid-run", True)

    ro = tmp_path / "ro"
    fault("write:config.json=erofs")
    code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={ro}", *TRAIN_ARGS])
    assert code == 2
    _one_error_line(err, f"{ro}/config.json (Read-only file system)")
    assert not glob.glob(str(ro / "checkpoints" / "*"))
    record("train: read-only out_dir", True)


# ----------------------------------------------------------------------------------------------
# Two processes on one out_dir.

_HOLD = ("import sys, time; from tf_divtrain import locking; l = locking.RunLock().acquire(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(120)")


def _holder(out_dir):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out_dir)], stdout=subprocess.PIPE,
                         text=True, env=_env(), cwd=REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_on_the_same_out_dir_refuses_and_a_killed_one_leaves_no_stale_lock(
        tmp_path, capsys):
    """A live holder (another process) -> ``error: <out_dir> is in use by another run (pid N ...)``,
    exit 2, nothing written; once the holder is SIGKILLed the lock is free at once."""
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={run}", *TRAIN_ARGS])
        assert code == 2
        _one_error_line(err, f"{run} is in use by another run (pid {holder.pid}")
        assert sorted(os.listdir(run)) == [".lock"]  # no config.json, no checkpoints
    finally:
        holder.kill()
        holder.wait()
    record("two runs on one out_dir", True)
    with locking.RunLock() as lock:  # the dead holder's PID is still in the file; the flock is gone
        lock.acquire(str(run))
    record("lock holder SIGKILLed (stale lock)", True)


_STAGE_CODE = r"""
import os, sys, time
open(sys.argv[2] + '.pid', 'w').write(str(os.getpid()))
print('output of the session that', 'finishes' if os.path.exists(sys.argv[1]) else 'is killed', flush=True)
if os.path.exists(sys.argv[1]):
    open(sys.argv[2], 'w').close()
else:
    time.sleep(120)
"""

_RUNNER_CODE = r"""
import sys
from tf_divtrain.pipeline import clock, plan, runner
clock.TICK_SECONDS = 0.2
stage = plan.Stage("train_x", "train", tuple(sys.argv[1:]), done=sys.argv[-1])
try:
    runner.run([stage], plan.Context(sys.argv[-2].rsplit("/", 1)[0], "python", "float32"))
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("how", ["sigkill_group", "sigterm_runner"])
def test_a_killed_stage_keeps_its_log_and_time_and_the_report_sums_its_sessions(tmp_path, how):
    """SIGKILL of runner and stage (a session's end), or SIGTERM to the runner alone (which then
    stops its stage, rather than leaving it running unsupervised): the re-run appends to the
    stage's log, turns the killed session's clock into an 'interrupted' row, and the report's
    stage table shows the run's time over both sessions."""
    import io
    import signal
    import time

    from tf_divtrain.pipeline import clock, plan, runner
    from tf_divtrain.report import common

    res, marker, done = tmp_path / "res", tmp_path / "res" / "go", tmp_path / "res" / "done"
    res.mkdir()
    argv = (sys.executable, "-c", _STAGE_CODE, str(marker), str(done))
    p = subprocess.Popen([sys.executable, "-c", _RUNNER_CODE, *argv], cwd=str(tmp_path), env=_env(),
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    clock_file = res / clock.CLOCK_DIR / "train_x.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if clock_file.exists() and json.loads(clock_file.read_text() or "{}").get("seconds", 0) >= 1:
            break
        time.sleep(0.1)
    if how == "sigkill_group":
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    else:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 130
        with pytest.raises(ProcessLookupError):  # the stage was stopped (and reaped) by the runner
            os.kill(int((res / "done.pid").read_text()), 0)
    assert clock_file.exists() and not done.exists()

    marker.touch()
    stage = plan.Stage("train_x", "train", argv, done=str(done))
    out = io.StringIO()
    runner.run([stage], plan.Context(str(res), "python", "float32"), out=out)
    sessions = clock.read_sessions(clock.times_path(str(res)))
    assert [s.status for s in sessions] == ["interrupted", "ok"] and sessions[0].seconds >= 1
    assert f"train_x: its last session was killed after about {sessions[0].seconds}s" in out.getvalue()
    assert "over its 2 sessions" in out.getvalue()
    assert not (res / clock.CLOCK_DIR).exists()
    log = (res / "logs" / "train_x.log").read_text()
    first, second = log.index("session that is killed"), log.index("session that finishes")
    assert log.index("train_x: session 1,") < first < log.index(
        "train_x: session 2, resuming after interrupted session(s)") < second
    total = sessions[0].seconds + sessions[1].seconds
    assert f"| train_x | {total} | 2 (interrupted before) | ok |" in "\n".join(common.stage_table(str(res)))
    record(f"pipeline mid-stage: {how}", True)



def test_second_pipeline_on_the_same_results_refuses(tmp_path, capsys, monkeypatch):
    """Two ``run_all.sh PRESET`` on one results folder would share stage logs, clocks and caches:
    the second gets ``error: <results> is in use by another pipeline run (pid N ...)``, exit 2,
    and writes nothing (no logs, no work dir, no stage_times.tsv)."""
    from tf_divtrain.pipeline import cli as pipeline_cli

    monkeypatch.chdir(tmp_path)  # the CLI changes into the checkout; put the test's cwd back after
    results = tmp_path / "smoke"
    holder = _holder(results)
    try:
        code = pipeline_cli.main(["smoke"], env=dict(_env(), RESULTS_ROOT=str(tmp_path)))
        err = capsys.readouterr().err
        assert code == 2
        line = _one_error_line(err, f"{results} is in use by another pipeline run (pid {holder.pid}")
        assert "RESULTS_ROOT" in line
        assert sorted(os.listdir(results)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    record("two pipelines on one results folder", True)


def test_pipeline_on_an_unwritable_results_folder_is_one_error_line(tmp_path, capsys, monkeypatch):
    """RESULTS_ROOT under a file (ENOTDIR, which even root cannot write): ``error: cannot write
    ...``, exit 2, no traceback."""
    from tf_divtrain.pipeline import cli as pipeline_cli

    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = pipeline_cli.main(["smoke"], env=dict(_env(), RESULTS_ROOT=str(blocker / "results")))
    assert code == 2
    _one_error_line(capsys.readouterr().err, f"cannot write {blocker}", "Not a directory")
    assert blocker.read_text() == "not a folder"
    record("pipeline: unwritable results folder", True)


def test_pipeline_with_no_interpreter_at_PYTHON_is_one_error_line(tmp_path, capsys, monkeypatch):
    """PYTHON naming no interpreter: ``error: cannot start ...; set PYTHON ...``, exit 2, no
    traceback; the stage's log says so and stage_times.tsv records the session as failed."""
    from tf_divtrain.pipeline import cli as pipeline_cli
    from tf_divtrain.pipeline import clock

    monkeypatch.chdir(tmp_path)
    env = dict(_env(), RESULTS_ROOT=str(tmp_path), PYTHON=str(tmp_path / "no_python"))
    assert pipeline_cli.main(["smoke"], env=env) == 2
    _one_error_line(capsys.readouterr().err, f"cannot start {tmp_path / 'no_python'}", "set PYTHON")
    (session,) = clock.read_sessions(clock.times_path(str(tmp_path / "smoke")))
    assert session.status == "failed"
    assert "cannot start" in (tmp_path / "smoke" / "logs" / f"{session.stage}.log").read_text()
    record("pipeline: no interpreter at PYTHON", True)


# ----------------------------------------------------------------------------------------------
# Bad input.

def _npz(path, **arrays):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **arrays)


@pytest.mark.parametrize("case", ["truncated", "float_nan_pixels", "wrong_shape"])
def test_bad_dataset_file_through_the_cli(case, tmp_path, capsys):
    """A truncated mnist.npz, float pixels holding NaN/Inf, or images of the wrong shape: one
    error line naming the file and what is wrong, exit 2, nothing written. (These already passed
    on main: data.load_arrays validated them.)"""
    d = tmp_path / "data"
    x = np.zeros((8, 28, 28), np.uint8)
    y = np.zeros(8, np.int64)
    path = str(d / "mnist.npz")
    if case == "truncated":
        _npz(path, x_train=x, y_train=y, x_test=x, y_test=y)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        needle = "is not a readable .npz archive"
    elif case == "float_nan_pixels":
        xf = x.astype(np.float32)
        xf[0, 0, 0] = np.nan
        xf[1, 0, 0] = np.inf
        _npz(path, x_train=xf, y_train=y, x_test=x, y_test=y)
        needle = "x_train has dtype float32, expected uint8"
    else:
        _npz(path, x_train=np.zeros((8, 32, 32), np.uint8), y_train=y, x_test=x, y_test=y)
        needle = "x_train has shape (8, 32, 32), expected (n, 28, 28)"
    out = tmp_path / "run"
    code, err = cli_exit(capsys, _train_mod(), ["train", f"--out_dir={out}", f"--data_dir={d}",
                                                 *TRAIN_ARGS])
    assert code == 2
    _one_error_line(err, path, needle)
    assert not out.exists()
    record(f"dataset file: {case}", True)


def test_nan_or_inf_pixels_in_fit_are_refused_before_any_step():
    """DiversityEnsemble.fit on arrays with NaN/Inf pixels: a ValueError naming how many and the
    first example (main: a 'non-finite loss' error from inside the step, not naming the input);
    weights unchanged. A tf.data input is checked per batch in the graph."""
    import keras
    import tensorflow as tf

    from tf_divtrain import DiversityEnsemble

    def member(seed):
        return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed))])

    ens = DiversityEnsemble([member(1), member(2)], gal_lambda=0.5)
    ens.compile(optimizer="adam")
    x = np.random.RandomState(0).rand(8, 4, 4, 1).astype(np.float32)
    y = np.arange(8) % 3
    ens.fit(x, y, epochs=1, batch_size=4, verbose=0)
    before = [w.copy() for w in ens.get_weights()]
    bad = x.copy()
    bad[5, 1, 2, 0] = np.nan
    bad[6, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"x holds 2 NaN/Inf pixel value\(s\) \(first in example 5\)"):
        ens.fit(bad, y, epochs=1, batch_size=4, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, ens.get_weights()))
    ds = tf.data.Dataset.from_tensor_slices((bad, y)).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf pixels"):
        ens.fit(ds, epochs=1, verbose=0)
    record("NaN/Inf pixels (DiversityEnsemble.fit)", True)


# ----------------------------------------------------------------------------------------------
# evaluate, analyze, report interrupted at their writes.

def _evaluate(reference, out, cache):
    from tf_divtrain import evaluation

    res = evaluation.evaluate(str(reference), [("T", str(reference))], dataset="mnist",
                              eps=[0.1], attacks=["fgsm"], num_examples=20, batch_size=10,
                              cache_dir=str(cache), progress=False)
    evaluation.write_reports(res, str(out))
    return json.loads((out / "results.json").read_text())


def test_evaluate_interrupted_at_every_write_point(reference, tmp_path, fault):
    """Crash during a cache array write, between the array and its sidecar, and between the
    cache and results.json; each re-run finishes and results.json equals an uninterrupted
    evaluation (up to timings, cache flags and paths). A cache entry without its sidecar is
    recomputed, never taken as complete."""
    ref = _evaluate(reference, tmp_path / "ref", tmp_path / "ref_cache")
    out, cache = tmp_path / "eval", tmp_path / "cache"
    steps = [("write:*.npy=torn-crash", "evaluate: crash during a cache write"),
             ("write:fgsm_*.json=crash", "evaluate: crash between cache array and sidecar"),
             ("write:results.json=crash", "evaluate: crash between cache and results.json")]
    for spec, name in steps:
        fault(spec)
        with pytest.raises(io_utils.InjectedCrash):
            _evaluate(reference, out, cache)
        assert not (out / "results.json").exists()
    fault("")
    got = _evaluate(reference, out, cache)
    assert got["crafting"]["fgsm"]["0.1"]["cached"] is True  # the entry completed before the last crash
    assert _normalise(got, [tmp_path / "eval", tmp_path / "cache"]) == \
        _normalise(ref, [tmp_path / "ref", tmp_path / "ref_cache"])
    for _, name in steps:
        record(name, True)


def test_analyze_killed_mid_run_resumes_after_its_last_finished_part(reference, tmp_path, fault,
                                                                      monkeypatch):
    """A crash while the white-box part is being written: the re-run keeps the finished parts,
    computes only the rest (a torn part too), writes what an uninterrupted run writes and removes
    the parts. Other settings, or other code, recompute every part."""
    from tf_divtrain import analysis
    from tf_divtrain.analysis import parts

    def analyze(out, **kw):
        lines = []
        args = dict(num_examples=20, analyses=["coherence", "gaas", "whitebox"], gaas_k=[4],
                    gaas_eps=[0.3], whitebox_eps=[0.3], whitebox_iters=3, batch_size=10,
                    log=lines.append)
        analysis.run_analysis({"T": str(reference)}, "mnist", str(out), **dict(args, **kw))
        analyze.lines = lines
        return (json.loads((out / "analysis.json").read_text()),
                [l.split(":")[0] for l in lines if "kept from an interrupted run" in l])

    ref, kept = analyze(tmp_path / "ref")
    assert kept == [] and not (tmp_path / "ref" / ".parts").exists()
    out = tmp_path / "an"
    fault("write:T.whitebox.json=crash")
    with pytest.raises(io_utils.InjectedCrash):
        analyze(out)
    assert not (out / "analysis.json").exists()
    assert sorted(os.listdir(out / ".parts")) == ["T.coherence.json", "T.gaas.json"]
    (out / ".parts" / "T.gaas.json").write_text('{"key": "trunc')  # a torn part
    fault("")
    got, kept = analyze(out)
    assert kept == ["[T] coherence"]
    assert any(l.startswith("[T] gaas: the kept part") and "unreadable" in l for l in analyze.lines)
    assert _normalise(got, [out]) == _normalise(ref, [tmp_path / "ref"])
    assert not (out / ".parts").exists()
    record("analyze: crash mid-run, resumed after its last finished part", True)

    fault("write:T.gaas.json=crash")
    with pytest.raises(io_utils.InjectedCrash):
        analyze(out)
    assert os.listdir(out / ".parts") == ["T.coherence.json"]
    fault("")
    other, kept = analyze(out, whitebox_iters=4)  # other settings: nothing is reused
    assert kept == [] and other["settings"]["whitebox_iters"] == 4
    key = parts.part_key(analysis="coherence", n=20)
    monkeypatch.setattr(parts, "code_digest", lambda: "other code")  # e.g. a git pull in between
    assert parts.part_key(analysis="coherence", n=20) != key


def test_analyze_and_report_interrupted_during_their_writes(reference, tmp_path, fault):
    """analysis.json and REPORT.md: a crash mid-write leaves no file under its name; the re-run
    writes what an uninterrupted run writes (REPORT.md up to its 'Generated' timestamp)."""
    from tf_divtrain import analysis, report

    def analyze(out):
        analysis.run_analysis({"T_Base": str(reference)}, "mnist", str(out), num_examples=20,
                              analyses=["coherence"], batch_size=10, log=lambda m: None)
        return json.loads((out / "analysis.json").read_text())

    ref = analyze(tmp_path / "ref")
    fault("write:analysis.json=crash")
    with pytest.raises(io_utils.InjectedCrash):
        analyze(tmp_path / "an")
    assert not (tmp_path / "an" / "analysis.json").exists()
    fault("")
    assert _normalise(analyze(tmp_path / "an"), [tmp_path / "an"]) == _normalise(ref, [tmp_path / "ref"])
    record("analyze: crash during analysis.json", True)

    res = tmp_path / "results"
    shutil.copytree(tmp_path / "an", res / "mnist_conv3" / "analysis")

    def build():
        fv = parse_cli_flags(report, ["report", "--preset=smoke", f"--results_dir={res}"])
        cli_flags.guarded(report.main)(["report"], fv)
        return [l for l in (res / "REPORT.md").read_text().splitlines() if not l.startswith("Generated")]

    want = build()
    (res / "REPORT.md").unlink()
    fault("write:REPORT.md=crash")
    with pytest.raises(io_utils.InjectedCrash):
        build()
    assert not (res / "REPORT.md").exists()
    fault("")
    assert build() == want
    record("report: crash during REPORT.md", True)


# ----------------------------------------------------------------------------------------------
# The same chains with real SIGKILLs of real CLI processes (slow: a TensorFlow start each; the
# in-process chains above cover the same behaviour).

def _cli(module, args, fault_spec=""):
    env = _env(**({io_utils.FAULT_ENV: fault_spec} if fault_spec else {}))
    return subprocess.run([sys.executable, "-m", f"tf_divtrain.{module}", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_sigkill_train_at_every_write_point(reference, tmp_path):
    import tensorflow as tf

    run = tmp_path / "run"
    args = [f"--out_dir={run}", *TRAIN_ARGS]
    straight = _cli("train", [f"--out_dir={tmp_path}/straight", *TRAIN_ARGS])
    assert straight.returncode == 0, straight.stderr[-2000:]
    for spec, name in (("checkpoint:saved@2=torn-kill", "SIGKILL mid checkpoint save"),
                       ("checkpoint:saved@2=kill", "SIGKILL between checkpoint and state file"),
                       ("export:swap=kill", "SIGKILL during SavedModel export"),
                       ("write:metrics.json=kill", "SIGKILL during metrics.json")):
        r = _cli("train", args, spec)
        assert r.returncode == -9, (spec, r.stderr[-2000:])
        assert not (run / "metrics.json").exists()
    r = _cli("train", args)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_weights(f"{tmp_path}/straight/checkpoints/ckpt-4",
                         tf.train.latest_checkpoint(str(run / "checkpoints")))
    assert _normalise(json.loads((run / "metrics.json").read_text()), [run]) == \
        _normalise(json.loads((tmp_path / "straight" / "metrics.json").read_text()), [tmp_path / "straight"])
    for name in ("SIGKILL mid checkpoint save", "SIGKILL between checkpoint and state file",
                 "SIGKILL during SavedModel export", "SIGKILL during metrics.json"):
        record(f"train: {name} (real CLI)", True)


@pytest.mark.slow
def test_sigkill_evaluate_at_every_write_point(reference, tmp_path):
    def args(out):
        return [f"--surrogate_dir={reference}", f"--targets=T={reference}", "--dataset=mnist",
                "--attacks=fgsm", "--eps=0.1", "--num_examples=20", "--batch_size=10",
                f"--out_dir={out}", "--noprogress"]

    ref = _cli("evaluate", args(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    for spec, name in (("write:*.npy=torn-kill", "SIGKILL during a cache write"),
                       ("write:results.json=kill", "SIGKILL between cache and results.json")):
        r = _cli("evaluate", args(tmp_path / "eval"), spec)
        assert r.returncode == -9 and not (tmp_path / "eval" / "results.json").exists()
    r = _cli("evaluate", args(tmp_path / "eval"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _normalise(json.loads((tmp_path / "eval" / "results.json").read_text()), [tmp_path / "eval"]) == \
        _normalise(json.loads((tmp_path / "ref" / "results.json").read_text()), [tmp_path / "ref"])
    for name in ("SIGKILL during a cache write", "SIGKILL between cache and results.json"):
        record(f"evaluate: {name} (real CLI)", True)


@pytest.mark.slow
def test_multi_worker_job_killed_mid_run_resumes_from_the_chiefs_checkpoint(tmp_path):
    """Worker 1 of a two-worker job is SIGKILLed at its second checkpoint; the chief, stuck in
    the next all-reduce, is killed too (a scheduler tears down the job); the relaunched job resumes
    from the chief's last checkpoint and ends on the weights of an uninterrupted two-worker job.
    (The non-chief side of restore -- skip a damaged checkpoint, never move the chief's files --
    is covered fast by test_non_chief_restore_skips_without_moving.)"""
    import tensorflow as tf

    def launch(out_dir, fault_for_worker1=""):
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
        procs = []
        for i in range(2):
            env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            if i == 1 and fault_for_worker1:
                env[io_utils.FAULT_ENV] = fault_for_worker1
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tf_divtrain.train", f"--out_dir={out_dir}", *TRAIN_ARGS,
                 "--strategy=multi_worker"], env=env, stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"worker{i}.log", "a"), cwd=REPO))
        return procs

    straight = launch(tmp_path / "straight")
    assert [p.wait(timeout=900) for p in straight] == [0, 0], (tmp_path / "worker1.log").read_text()[-3000:]
    run = tmp_path / "run"
    chief, worker = launch(run, "checkpoint:saved@2=kill")
    assert worker.wait(timeout=900) == -9
    chief.kill()  # the rest of the job, as a scheduler would tear it down
    chief.wait()
    assert not (run / "metrics.json").exists()
    relaunched = launch(run)
    assert [p.wait(timeout=900) for p in relaunched] == [0, 0]
    _assert_same_weights(tf.train.latest_checkpoint(str(tmp_path / "straight" / "checkpoints")),
                         tf.train.latest_checkpoint(str(run / "checkpoints")))
    record("multi-worker: worker SIGKILLed mid-run, job relaunched", True)

"""Training-step cost of every diversity method on the same batches (issue 14): figures, not tests.

    python -m tf_divtrain.experiments.method_steps [--quick] [--data_dir=DIR] [--precision=auto]
                                      [--modes=baseline,div,adp,trs,dverge] [--reps=N]
                                      (also ens_adv, ens_adv_div: Ensemble Adversarial Training)
                                      [--out=method_steps.json] [--md=METHOD_STEPS.md]

One ``training.Trainer`` per mode (MNIST Conv-3 x 5, batch 128, the authors' default
hyper-parameters of ``tf_divtrain.methods``), each fed real batches of its own data sources
(``training.MODES``). After each mode's first (tracing) call and a warm-up, the modes are timed
*interleaved* -- one step of each per repetition, order rotated -- so background load slows all of
them alike and the ratios stay fair on a shared machine; the absolute seconds do not. Reported: the
median wall seconds per step, images/s, and the ratio to the baseline (CE-only) step and to the GAL
(``div``) step; the load average before and after. The ``cpu-methods`` report's *s / step* column
is the same cost measured inside whole training runs (with logging and checkpoints), at whatever
load each run had.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


DEFAULT_MODES = ("baseline", "div", "adp", "trs", "dverge")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 members, batch 16, 2 reps (CI smoke run)")
    p.add_argument("--data_dir", default=None,
                   help="folder with mnist.npz (default: the package's lookup, $TF_DIVTRAIN_DATA first)")
    p.add_argument("--precision", default="auto",
                   help="training precision of every mode (float32, mixed_bfloat16, auto; default auto "
                        "= what the cpu-methods preset trains in)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES))
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (0 = 8, quick: 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="method_steps.json")
    p.add_argument("--md", default="METHOD_STEPS.md")
    return p.parse_args(argv)


def _sync(out):
    import tensorflow as tf

    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def _timed(fn) -> float:
    t = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t


_STATIC = {}


def _static_export(input_shape) -> str:
    """A 1-member Conv-3 SavedModel in a temp dir (once per process): the ens_adv modes' static
    model. Untrained -- its predicted labels are arbitrary, its cost per step is the real one."""
    if "dir" not in _STATIC:
        import atexit
        import shutil
        import tempfile

        from tf_divtrain import export, models

        root = tempfile.mkdtemp(prefix="method_steps_static_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        path = os.path.join(root, "static")
        ens = models.build_ensemble("conv3", tuple(input_shape), 10, 1, seed=1)
        _STATIC["dir"] = export.export_ensemble(
            ens, path, {"dataset": "mnist", "input_shape": list(input_shape), "num_classes": 10})
    return _STATIC["dir"]


def build(mode: str, members: int, batch: int, data_dir: str, precision: str, n_batches: int):
    """(trainer, batches) for one mode: real MNIST batches of the mode's own sources."""
    from tf_divtrain import data as data_lib
    from tf_divtrain import training

    ds = data_lib.load_dataset("mnist", data_dir, train_size=max(batch * n_batches, 1024))
    static_dir, static = "", None
    if mode in training.ADV_MODES:  # D_adv needs a static model: an untrained Conv-3, exported
        static_dir = _static_export(ds.input_shape)  # and loaded the way `train` loads one
        static = training.load_static_model(static_dir, "mnist", ds.input_shape)
    cfg = training.TrainConfig(dataset="mnist", model="conv3", ensemble_size=members, mode=mode,
                               batch_size=batch, data_dir=data_dir, precision=precision,
                               static_model=static_dir)
    cfg.validate()
    trainer = training.Trainer(cfg, ds.input_shape, 10, static)
    stream = data_lib.train_stream(ds.x_train, ds.y_train, "mnist", batch, training.MODES[mode], None, 0)
    return trainer, [(x, y) for x, y in stream.take(n_batches)]


def measure(modes, members: int, batch: int, data_dir: str, precision: str, reps: int,
            warmup: int, log=print) -> dict:
    """Median seconds per step of each mode, interleaved (module docstring)."""
    from tf_divtrain import precision as precision_lib

    resolved = precision_lib.resolve(precision)
    n_batches = 3
    runners, first = {}, {}
    for m in modes:
        trainer, batches = build(m, members, batch, data_dir, resolved, n_batches)
        runners[m] = (lambda i, t=trainer, b=batches: t.train_step(*b[i % n_batches]))
        first[m] = _timed(lambda: runners[m](0))
        log(f"  {m}: first call (tracing) {first[m]:.1f} s")
    times = {m: [] for m in modes}
    load_before = list(os.getloadavg())
    names = list(modes)
    for i in range(warmup + reps):
        k = i % len(names)
        for m in names[k:] + names[:k]:
            t = _timed(lambda: runners[m](i + 1))
            if i >= warmup:
                times[m].append(t)
        log(f"  repetition {i + 1}/{warmup + reps} (load {os.getloadavg()[0]:.1f})")
    med = {m: statistics.median(times[m]) for m in modes}
    rows = {}
    for m in modes:
        rows[m] = {"median_step_s": med[m], "min_step_s": min(times[m]), "images_per_s": batch / med[m],
                   "first_call_s": first[m], "times_s": times[m],
                   "over_baseline": med[m] / med["baseline"] if "baseline" in med else None,
                   "over_div": med[m] / med["div"] if "div" in med else None}
    return {"precision": resolved, "members": members, "batch_size": batch, "reps": reps,
            "warmup": warmup, "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()), "cores": os.cpu_count(), "modes": rows}


def markdown(res: dict) -> str:
    lines = ["# Training-step cost per method (`tf_divtrain.experiments.method_steps`)", "",
             f"MNIST Conv-3 x {res['members']}, batch {res['batch_size']}, {res['precision']}, "
             f"{res['cores']} cores; median of {res['reps']} interleaved steps per mode after "
             f"{res['warmup']} warm-up round(s). Load average (1 / 5 / 15 min) before "
             f"{' / '.join(f'{v:.1f}' for v in res['load_average_before'])}, after "
             f"{' / '.join(f'{v:.1f}' for v in res['load_average_after'])}: absolute seconds grow with "
             "the load, the ratios much less (every mode is slowed alike).", "",
             "| mode | s / step (median) | min | images / s | × baseline | × GAL (div) | first call s |",
             "|---|---|---|---|---|---|---|"]
    f = lambda v, nd=2: "—" if v is None else f"{v:.{nd}f}"  # noqa: E731
    for m, r in res["modes"].items():
        lines.append(f"| {m} | {f(r['median_step_s'])} | {f(r['min_step_s'])} | {f(r['images_per_s'], 0)} | "
                     f"{f(r['over_baseline'])} | {f(r['over_div'])} | {f(r['first_call_s'], 1)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tf_divtrain import data as data_lib

    args.data_dir = data_lib.resolve_data_dir(args.data_dir)
    if not os.path.isfile(os.path.join(args.data_dir, "mnist.npz")):
        sys.exit(f"error: no mnist.npz in {args.data_dir!r}; pass --data_dir or set TF_DIVTRAIN_DATA.")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    from tf_divtrain import training

    bad = [m for m in modes if m not in training.MODES]
    if bad:
        sys.exit(f"error: unknown mode(s) {bad}; valid: {', '.join(training.MODES)}.")
    members, batch = (2, 16) if args.quick else (5, 128)
    reps = args.reps or (2 if args.quick else 8)
    res = measure(modes, members, batch, args.data_dir, args.precision, reps, args.warmup)
    res["timestamp_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    text = markdown(res)
    for path, body in ((args.out, json.dumps(res, indent=2) + "\n"), (args.md, text)):
        if path:
            with open(path, "w") as fh:
                fh.write(body)
    print(text)
    return res


if __name__ == "__main__":
    main()

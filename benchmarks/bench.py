"""tf_divtrain benchmark (issue 7): prints figures, writes JSON + a Markdown table. Not a test.

    python benchmarks/bench.py [--quick] [--data_dir=DIR] [--out=benchmarks/results.json]
                               [--md=benchmarks/RESULTS.md] [--reps=N] [--intra=N --inter=N] [--xla]

Sections (each timed after warm-up; the figure is the *median* of the repeated calls):

* ``matmul``  -- attainable float32 FLOP/s: an N x N @ N x N ``tf.linalg.matmul`` (N = 4096, quick:
  1024), 2 N^3 FLOPs per call.
* ``train``   -- ``training.Trainer(cfg, input_shape, 10).train_step(x, y)`` in ``baseline`` (plain)
  and ``div`` (GAL) mode on real batches from ``data.train_stream`` (pre-fetched, so the input
  pipeline is not in the step time; it is measured separately in ``data_pipeline``). Plain and GAL
  steps are *interleaved* (A, B, A, B, ...) so background load hits both alike; the GAL/plain ratio
  is the ratio of the medians. Conv-3 x 5 on MNIST batch 128 and ResNet-20 x 5 on CIFAR-10 batch 128
  (quick: Conv-3 x 2, batch 16, no ResNet).
* ``attacks`` -- ``attacks.make_attack`` I-FGSM (10 steps) and PGD-CW (30 steps) on an untrained
  5 x Conv-3 surrogate (``models.build_ensemble``); first batch (includes tracing) vs the median of
  later batches. A retrace shows up as a later batch as slow as the first one, and in
  ``tracing_count``.
* ``export``  -- ``export.export_ensemble`` / ``export.load_ensemble`` of the 5 x Conv-3 ensemble:
  seconds and bytes on disk.
* ``data_pipeline`` -- batches/s that ``data.train_stream`` delivers on its own (if it is far above
  1 / step time, overlapping it with the step cannot matter).

FLOP model (analytic, from the built Keras layers; see ``model_flops``): per image and member,
forward F = sum over Conv2D of 2 * H_out * W_out * K_h * K_w * C_in * C_out / groups, plus sum over
Dense of 2 * in * out (BatchNorm, activations, pooling, adds, softmax are ignored: < 2 %).
Plain training step = 3 F (forward, input-grad backward, weight-grad backward).
GAL training step = 6 F: forward (F) + inner input-gradient backward (~F: one transposed
conv / matmul per layer; no weight gradients) + outer backward through *both*: through the
forward, 2 F (dX and dW of each layer; the CE and GAL losses share it), and through the inner
backward, 2 F (each transposed conv in it is linear in its input and in the weights, so its
backward is again one dX-type and one dW-type product of the same size). LeakyReLU' and
MaxPool's argmax are piecewise constant, so they add no products. The GAL pair cosines
(B x N x N x D) are negligible. Hence the *FLOP* ratio GAL / plain is ~2.0 for this formulation.
Achieved fraction = (multiplier * F * N_members * batch / median step seconds) / attainable FLOP/s,
where attainable = the best matmul call of two runs (start and end of the benchmark).

Targets (issue 7; reported under ``targets``, not enforced): Conv-3 x 5, MNIST, batch 128:
GAL step <= 1.6 x plain step, and GAL step >= 50 % of attainable matmul FLOP/s.

Memory: ``peak_rss_mb`` is the process max RSS (``resource.getrusage``) at the end of a section,
so it is cumulative (monotone over the run); ``tf_cpu_memory`` is TF's
``get_memory_info('CPU:0')`` when TF supports it on CPU, else "n/a".

Thread settings (``--intra`` / ``--inter``) are applied before TensorFlow initialises.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings for CI (well under a minute)")
    p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"),
                   help="folder with mnist.npz / cifar10.npz (default: $TF_DIVTRAIN_DATA)")
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--out", default=os.path.join(here, "results.json"))
    p.add_argument("--md", default=os.path.join(here, "RESULTS.md"))
    p.add_argument("--reps", type=int, default=0, help="timed repetitions (0 = 10, quick: 3)")
    p.add_argument("--warmup", type=int, default=0, help="warm-up calls (0 = 2, quick: 1)")
    p.add_argument("--intra", type=int, default=0, help="intra-op threads (0 = TF default)")
    p.add_argument("--inter", type=int, default=0, help="inter-op threads (0 = TF default)")
    p.add_argument("--xla", action="store_true", help="TrainConfig(jit_compile=True) for the train steps")
    p.add_argument("--skip", default="", help="comma list of sections to skip "
                   "(matmul,train_conv3,train_resnet20,attacks,export,data_pipeline)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if ARGS is not None and (ARGS.intra or ARGS.inter):
    tf.config.threading.set_intra_op_parallelism_threads(ARGS.intra)
    tf.config.threading.set_inter_op_parallelism_threads(ARGS.inter)

import keras  # noqa: E402

from tf_divtrain import attacks as attacks_lib  # noqa: E402
from tf_divtrain import data as data_lib  # noqa: E402
from tf_divtrain import export as export_lib  # noqa: E402
from tf_divtrain import models as models_lib  # noqa: E402
from tf_divtrain import training  # noqa: E402

PLAIN_MULT = 3.0
GAL_MULT = 6.0


# ----------------------------------------------------------------------------------------------
# Helpers

def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024.0


def tf_memory():
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
        return {"current_mb": info["current"] / 2**20, "peak_mb": info["peak"] / 2**20}
    except Exception as e:  # noqa: BLE001 -- unsupported on CPU in most TF builds
        return f"n/a ({type(e).__name__})"


def memory():
    return {"peak_rss_mb": peak_rss_mb(), "tf_cpu_memory": tf_memory()}


def reset_tf_peak():
    """Per-section TF peak (``tf_cpu_memory.peak_mb``), where TF supports it on CPU."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except Exception:  # noqa: BLE001
        pass


def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return {"cpu_model": cpu, "logical_cores": os.cpu_count(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "avx512f": "avx512f" in flags, "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "load_average_at_start": list(os.getloadavg())}


def _sync(out):
    """Forces completion of a (nested) TF result."""
    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()
    return out


def timed(fn):
    t = time.perf_counter()
    _sync(fn())
    return time.perf_counter() - t


def median(xs):
    return float(statistics.median(xs))


# ----------------------------------------------------------------------------------------------
# FLOP model

def model_flops(model: keras.Model) -> dict:
    """Forward FLOPs per image of one Keras model (conv + dense only; 1 MAC = 2 FLOPs)."""
    conv = dense = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in_g, _ = layer.kernel.shape  # kernel in-channels are already per group
            conv += 2 * h * w * kh * kw * c_in_g * c_out
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            dense += 2 * n_in * n_out
    return {"conv": int(conv), "dense": int(dense), "forward": int(conv + dense)}


def ensemble_forward_flops(ensemble) -> int:
    return int(sum(model_flops(m)["forward"] for m in ensemble.members))


# ----------------------------------------------------------------------------------------------
# Sections

def bench_matmul(n: int, reps: int, warmup: int) -> dict:
    a = tf.random.stateless_uniform([n, n], [1, 2], dtype=tf.float32)
    b = tf.random.stateless_uniform([n, n], [3, 4], dtype=tf.float32)
    f = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))  # scalar out: no copy-out cost
    for _ in range(warmup):
        timed(f)
    times = [timed(f) for _ in range(reps)]
    flops = 2.0 * n ** 3
    return {"n": n, "flops_per_call": flops, "median_s": median(times), "min_s": min(times),
            "attainable_flops_per_s": flops / min(times), "median_flops_per_s": flops / median(times),
            "times_s": times, **memory()}


def real_batches(dataset: str, data_dir, batch: int, sources, count: int, seed: int = 0):
    """``count`` real training batches from the project's own stream (pre-materialised)."""
    ds = data_lib.load_dataset(dataset, data_dir, train_size=max(batch * count, 1024))
    stream = data_lib.train_stream(ds.x_train, ds.y_train, dataset, batch, sources, None, seed)
    out = [(x, y) for x, y in stream.take(count)]
    return out, ds.input_shape


def bench_data_pipeline(dataset: str, data_dir, batch: int, sources, count: int) -> dict:
    ds = data_lib.load_dataset(dataset, data_dir, train_size=max(batch * count, 1024))
    stream = iter(data_lib.train_stream(ds.x_train, ds.y_train, dataset, batch, sources, None, 0))
    next(stream)
    t = time.perf_counter()
    for _ in range(count):
        next(stream)
    dt = time.perf_counter() - t
    return {"dataset": dataset, "batch_size": batch, "sources": list(sources),
            "batches_per_s": count / dt, "images_per_s": count * batch / dt}


def bench_train(dataset: str, model: str, members: int, batch: int, data_dir, reps: int,
                warmup: int, jit: bool = False) -> dict:
    """Interleaved plain (baseline) / GAL (div) train steps on real batches."""
    reset_tf_peak()
    n_batches = 4
    trainers, batches = {}, {}
    for key, mode in (("plain", "baseline"), ("gal", "div")):
        cfg = training.TrainConfig(dataset=dataset, model=model, ensemble_size=members, mode=mode,
                                   batch_size=batch, data_dir=data_dir, jit_compile=jit)
        cfg.validate()
        batches[key], shape = real_batches(dataset, data_dir, batch, training.MODES[mode], n_batches)
        trainers[key] = training.Trainer(cfg, shape, 10)
    fwd = ensemble_forward_flops(trainers["plain"].ensemble)
    res = {"dataset": dataset, "model": model, "members": members, "batch_size": batch,
           "jit_compile": jit, "forward_flops_per_image_all_members": fwd,
           "forward_flops_per_image_per_member": fwd // members}
    times = {"plain": [], "gal": []}
    first = {}
    for key in ("plain", "gal"):  # first call: tracing (+ XLA compile)
        x, y = batches[key][0]
        first[key] = timed(lambda: trainers[key].train_step(x, y))
    for i in range(warmup + reps):
        for key in ("plain", "gal"):
            x, y = batches[key][(i + 1) % n_batches]
            t = timed(lambda: trainers[key].train_step(x, y))
            if i >= warmup:
                times[key].append(t)
    for key, mult in (("plain", PLAIN_MULT), ("gal", GAL_MULT)):
        med = median(times[key])
        flops = mult * fwd * batch
        res[key] = {"mode": "baseline" if key == "plain" else "div", "first_call_s": first[key],
                    "median_step_s": med, "min_step_s": min(times[key]),
                    "images_per_s": batch / med, "flop_multiplier": mult,
                    "flops_per_step": flops, "achieved_flops_per_s": flops / med,
                    "times_s": times[key]}  # + fraction_of_attainable, filled in by main()
    res["gal_over_plain_time"] = res["gal"]["median_step_s"] / res["plain"]["median_step_s"]
    # Paired ratio: median over reps of gal_i / plain_i (robust to slow drifts in background load).
    res["gal_over_plain_time_paired"] = median([g / p for g, p in zip(times["gal"], times["plain"])])
    res.update(memory())
    del trainers
    return res


def bench_attacks(data_dir, members: int, batch: int, n_batches: int, quick: bool) -> dict:
    reset_tf_peak()
    ds = data_lib.load_dataset("mnist", data_dir, test_size=batch * max(n_batches, 1),
                               train_size=1024)
    ens = models_lib.build_ensemble("conv3", ds.input_shape, 10, members, seed=0)
    eps = data_lib.default_noise_eps("mnist")
    fwd = ensemble_forward_flops(ens)
    out = {"surrogate": f"{members} x conv3 (untrained)", "batch_size": batch, "eps": eps}
    for name, iters in (("ifgsm", 10), ("pgd_cw", 30)):
        attack = attacks_lib.make_attack(name, ens, eps, nb_iter=iters)
        times = []
        for i in range(n_batches):
            xb = ds.x_test[i * batch:(i + 1) * batch]
            yb = ds.y_test[i * batch:(i + 1) * batch]
            times.append(timed(lambda: attack(xb, yb, seed=[0, i])))
        if n_batches == 1:  # quick: the same batch again, to still see first vs later
            times.append(timed(lambda: attack(xb, yb, seed=[0, 1])))
        later = median(times[1:])
        # each iteration = one forward + one input-gradient backward ~ 2 F (first conv dX included)
        flops = 2.0 * fwd * batch * iters
        out[name] = {"nb_iter": iters, "first_batch_s": times[0], "later_batches_median_s": later,
                     "first_over_later": times[0] / later, "images_per_s": batch / later,
                     "flops_per_batch": flops, "achieved_flops_per_s": flops / later,
                     "tracing_count": attack.tracing_count, "python_traces": attack.python_traces,
                     "times_s": times}
    out.update(memory())
    return out


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def bench_export(members: int, reps: int) -> dict:
    reset_tf_peak()
    ens = models_lib.build_ensemble("conv3", (28, 28, 1), 10, members, seed=0)
    params = sum(models_lib.count_params(m) for m in ens.members)
    meta = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10,
            "models": ["conv3"] * members, "mode": "baseline", "seed": 0}
    tmp = tempfile.mkdtemp(prefix="tfdt_bench_export_")
    try:
        path = os.path.join(tmp, "saved_model")
        export_t, load_t, call_t = [], [], []
        x = tf.zeros([8, 28, 28, 1])
        for _ in range(reps):
            export_t.append(timed(lambda: export_lib.export_ensemble(ens, path, meta, overwrite=True)))
            t = time.perf_counter()
            loaded = export_lib.load_ensemble(path)
            load_t.append(time.perf_counter() - t)
            call_t.append(timed(lambda: loaded.probabilities(x)))
        size = dir_bytes(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"members": members, "parameters": int(params), "float32_weight_bytes": int(params) * 4,
            "export_median_s": median(export_t), "load_median_s": median(load_t),
            "first_call_after_load_median_s": median(call_t), "size_bytes": size,
            "size_mb": size / 2**20, "export_times_s": export_t, "load_times_s": load_t, **memory()}


# ----------------------------------------------------------------------------------------------
# Report

def fmt(v, nd=3):
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.{nd}f}"
    return str(v)


def markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [f"# tf_divtrain benchmark ({'quick' if s['quick'] else 'full'})", "",
             f"{res['timestamp_utc']} UTC -- {m['cpu_model']}, {m['logical_cores']} logical cores, "
             f"TF {m['tensorflow']}, Keras {m['keras']}, intra/inter threads "
             f"{m['intra_op_threads']}/{m['inter_op_threads']} (0 = TF default), "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}.",
             "", "Medians after warm-up; settings: " + ", ".join(f"{k}={v}" for k, v in s.items()), ""]
    mm = res["matmul"]
    lines += [f"Attainable float32 matmul ({mm['n']}x{mm['n']}, best call of a run at the start and "
              f"one at the end): **{mm['attainable_flops_per_s'] / 1e9:.1f} GFLOP/s** (median "
              f"{mm['median_flops_per_s'] / 1e9:.1f}).", "",
              "## Training steps", "",
              "| model | batch | mode | median step s | images/s | GFLOP/step | GFLOP/s | % of matmul | first call s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key in ("train_conv3", "train_resnet20"):
        r = res.get(key)
        if not isinstance(r, dict):
            continue
        for mode in ("plain", "gal"):
            t = r[mode]
            lines.append(f"| {r['members']} x {r['model']} ({r['dataset']}) | {r['batch_size']} | "
                         f"{mode} ({t['mode']}) | {fmt(t['median_step_s'])} | {t['images_per_s']:.1f} | "
                         f"{t['flops_per_step'] / 1e9:.2f} | {t['achieved_flops_per_s'] / 1e9:.1f} | "
                         f"{100 * t.get('fraction_of_attainable', float('nan')):.0f} % | "
                         f"{fmt(t['first_call_s'])} |")
        lines.append(f"| | | **GAL / plain** | **{r['gal_over_plain_time']:.2f}x** (paired "
                     f"{r['gal_over_plain_time_paired']:.2f}x) | | | | | |")
    a = res.get("attacks")
    if isinstance(a, dict):
        lines += ["", f"## Attacks ({a['surrogate']}, batch {a['batch_size']}, eps {a['eps']})", "",
                  "| attack | iters | first batch s | later batches s | first / later | images/s | "
                  "GFLOP/s | % of matmul | traces |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("ifgsm", "pgd_cw"):
            t = a[name]
            lines.append(f"| {name} | {t['nb_iter']} | {fmt(t['first_batch_s'])} | "
                         f"{fmt(t['later_batches_median_s'])} | {t['first_over_later']:.1f} | "
                         f"{t['images_per_s']:.1f} | {t['achieved_flops_per_s'] / 1e9:.1f} | "
                         f"{100 * t.get('fraction_of_attainable', float('nan')):.0f} % | "
                         f"{t['tracing_count']} |")
    e = res.get("export")
    if isinstance(e, dict):
        lines += ["", "## SavedModel export", "",
                  "| members | parameters | export s | load s | first call after load s | size MB |",
                  "|---|---|---|---|---|---|",
                  f"| {e['members']} x conv3 | {e['parameters']:,} | {fmt(e['export_median_s'])} | "
                  f"{fmt(e['load_median_s'])} | {fmt(e['first_call_after_load_median_s'])} | "
                  f"{e['size_mb']:.1f} |"]
    d = res.get("data_pipeline")
    if isinstance(d, dict):
        lines += ["", f"Data pipeline alone ({d['dataset']}, batch {d['batch_size']}, "
                  f"{'+'.join(d['sources'])}): {d['batches_per_s']:.1f} batches/s "
                  f"({d['images_per_s']:.0f} images/s)."]
    t = res.get("targets")
    if t:
        lines += ["", f"Targets ({t['scope']}): GAL/plain {t['gal_over_plain']:.2f} <= "
                  f"{t['gal_over_plain_max']} -> {'met' if t['gal_over_plain_met'] else 'NOT met'}; "
                  f"GAL at {100 * t['gal_fraction']:.0f} % >= {100 * t['gal_fraction_min']:.0f} % of "
                  f"matmul -> {'met' if t['gal_fraction_met'] else 'NOT met'}."]
    lines += ["", "## Memory", "", "| section | process peak RSS MB (cumulative) | TF CPU peak MB (this section) |",
              "|---|---|---|"]
    for key in ("matmul", "train_conv3", "train_resnet20", "attacks", "export"):
        r = res.get(key)
        if isinstance(r, dict) and "peak_rss_mb" in r:
            tfm = r["tf_cpu_memory"]
            tfm = f"{tfm['peak_mb']:.0f}" if isinstance(tfm, dict) else tfm
            lines.append(f"| {key} | {r['peak_rss_mb']:.0f} | {tfm} |")
    lines += ["", f"Peak RSS {res['peak_rss_mb']:.0f} MB; TF CPU memory info: {res['tf_cpu_memory']}.",
              f"Total wall time {res['wall_s']:.1f} s.", "",
              "FLOP model: forward F per image per member = sum of conv 2*Ho*Wo*Kh*Kw*Cin*Cout and "
              "dense 2*in*out; plain step = 3F, GAL step = 6F (forward + input-gradient backward + "
              "outer backward through both, 2F each); attack iteration = 2F. See bench.py docstring.",
              "", "Timings on a shared machine are noisy; compare ratios (interleaved) rather than "
              "absolute figures.", ""]
    return "\n".join(lines)


def check_results(res: dict):
    """Every numeric leaf must be finite, and timings/rates positive (used by the test too)."""
    bad = []

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            return
        elif isinstance(v, (int, float)):
            if not math.isfinite(v):
                bad.append(path)
    walk(res, "")
    return bad


def main(args) -> dict:
    t0 = time.time()
    quick = args.quick
    reps = args.reps or (3 if quick else 10)
    warmup = args.warmup or (1 if quick else 2)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    members = 2 if quick else 5
    batch = 16 if quick else 128
    settings = {"quick": quick, "reps": reps, "warmup": warmup, "members": members,
                "batch_size": batch, "matmul_n": 1024 if quick else 4096,
                "attack_batches": 1 if quick else 3, "xla": args.xla, "data_dir": args.data_dir}
    if not args.data_dir or not os.path.isfile(os.path.join(args.data_dir, "mnist.npz")):
        sys.exit(f"bench.py: no mnist.npz in data dir {args.data_dir!r}; pass --data_dir or set "
                 f"TF_DIVTRAIN_DATA.")
    keras.utils.set_random_seed(0)
    res = {"timestamp_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "machine": machine_info(), "settings": settings}

    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    if "matmul" not in skip:
        res["matmul"] = bench_matmul(settings["matmul_n"], max(reps, 3), warmup)
        log(f"matmul {res['matmul']['attainable_flops_per_s'] / 1e9:.1f} GFLOP/s")
    if "train_conv3" not in skip:
        res["train_conv3"] = bench_train("mnist", "conv3", members, batch, args.data_dir, reps,
                                         warmup, args.xla)
        r = res["train_conv3"]
        log(f"conv3 x{members} b{batch}: plain {r['plain']['median_step_s']:.3f}s, GAL "
            f"{r['gal']['median_step_s']:.3f}s, ratio {r['gal_over_plain_time']:.2f} "
            f"(paired {r['gal_over_plain_time_paired']:.2f})")
    if not quick and "train_resnet20" not in skip:
        res["train_resnet20"] = bench_train("cifar10", "resnet20", members, batch, args.data_dir,
                                            max(3, reps // 2), warmup, args.xla)
        r = res["train_resnet20"]
        log(f"resnet20 x{members} b{batch}: plain {r['plain']['median_step_s']:.3f}s, GAL "
            f"{r['gal']['median_step_s']:.3f}s, ratio {r['gal_over_plain_time']:.2f}")
    elif quick:
        res["train_resnet20"] = "skipped (--quick)"
    if "attacks" not in skip:
        res["attacks"] = bench_attacks(args.data_dir, members, batch, settings["attack_batches"], quick)
        a = res["attacks"]
        log(f"attacks: ifgsm {a['ifgsm']['images_per_s']:.1f} img/s (first/later "
            f"{a['ifgsm']['first_over_later']:.1f}), pgd_cw {a['pgd_cw']['images_per_s']:.1f} img/s")
    if "export" not in skip:
        res["export"] = bench_export(members, 2 if quick else 3)
        e = res["export"]
        log(f"export {e['export_median_s']:.2f}s, load {e['load_median_s']:.2f}s, {e['size_mb']:.1f} MB")
    if "data_pipeline" not in skip:
        res["data_pipeline"] = bench_data_pipeline("mnist", args.data_dir, batch, ("aug", "noise"),
                                                   5 if quick else 50)
        log(f"data pipeline {res['data_pipeline']['batches_per_s']:.1f} batches/s")
    if "matmul" in res:
        # Again at the end: "attainable" = the best of both runs (background load only slows).
        post = bench_matmul(settings["matmul_n"], max(reps, 3), warmup)
        mm = res["matmul"]
        mm["post_median_s"], mm["post_min_s"] = post["median_s"], post["min_s"]
        mm["attainable_flops_per_s"] = mm["flops_per_call"] / min(mm["min_s"], post["min_s"])
        mm["median_flops_per_s"] = mm["flops_per_call"] / min(mm["median_s"], post["median_s"])
        log(f"matmul again; attainable (best) {mm['attainable_flops_per_s'] / 1e9:.1f} GFLOP/s")
        for key in ("train_conv3", "train_resnet20"):
            if isinstance(res.get(key), dict):
                for mode in ("plain", "gal"):
                    t = res[key][mode]
                    t["fraction_of_attainable"] = t["achieved_flops_per_s"] / mm["attainable_flops_per_s"]
        if isinstance(res.get("attacks"), dict):
            for name in ("ifgsm", "pgd_cw"):
                t = res["attacks"][name]
                t["fraction_of_attainable"] = t["achieved_flops_per_s"] / mm["attainable_flops_per_s"]
    r = res.get("train_conv3")
    if isinstance(r, dict) and "fraction_of_attainable" in r["gal"]:
        res["targets"] = {
            "scope": f"{members} x conv3, mnist, batch {batch}" + (" (quick: not the target setting)"
                                                                 if quick else ""),
            "gal_over_plain_max": 1.6, "gal_over_plain": r["gal_over_plain_time"],
            "gal_over_plain_met": bool(r["gal_over_plain_time"] <= 1.6),
            "gal_fraction_min": 0.5, "gal_fraction": r["gal"]["fraction_of_attainable"],
            "gal_fraction_met": bool(r["gal"]["fraction_of_attainable"] >= 0.5)}
    res.update(memory())
    res["wall_s"] = time.time() - t0
    bad = check_results(res)
    if bad:
        print(f"WARNING: non-finite figures: {bad}", file=sys.stderr)
    for path, text in ((args.out, json.dumps(res, indent=2)), (args.md, markdown(res))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + "\n")
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(ARGS)

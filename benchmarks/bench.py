"""tf_divtrain benchmark (issues 7, 10): prints figures, writes JSON + a Markdown table. Not a test.

    python -m benchmarks.bench [--quick] [--data_dir=DIR] [--out=benchmarks/results.json]
                               [--md=benchmarks/RESULTS.md] [--reps=N] [--intra=N --inter=N] [--xla]
                               [--precisions=float32,mixed_bfloat16] [--torch=fp32,bf16]
                               [--torch_layout=contiguous|channels_last] [--torch_threads=N,...]
                               [--skip=SECTION,...]

Sections (each timed after warm-up; the figure is the *median* of the repeated calls; a section
named in ``--skip`` is reported as "skipped"):

* ``matmul``  -- attainable FLOP/s per precision: an N x N @ N x N ``tf.linalg.matmul`` (N = 4096,
  quick: 1024), 2 N^3 FLOPs per call, on float32 tensors for float32 steps and on bfloat16 tensors
  for bfloat16 steps (ours mixed_bfloat16, PyTorch bf16 autocast), float16 for mixed_float16.
  Run at the start and at the end; "attainable" = the best call of both runs.
* ``kernels`` -- the step's own GEMM shapes: every Conv2D / Dense layer of Conv-3 at the benchmark
  batch, forward + both backward products (dX, dW) = 3x the layer's forward FLOPs, as single TF
  ops in each matmul precision. Their FLOP/s is what the step's conv/matmul kernels can reach at
  these shapes (small channel counts, 3x3 windows) -- the measured ceiling a whole step is compared
  with when it falls short of the big-matmul figure.
* ``train_conv3`` / ``train_resnet20`` -- train steps on real batches from ``data.train_stream``
  (pre-fetched, so the input pipeline is not in the step time; it is measured in
  ``data_pipeline``), every variant *interleaved* in one process (one step of each variant per
  repetition, order rotated every repetition) so background load hits all alike:
  - ``ours_<precision>_plain`` / ``ours_<precision>_gal``: ``training.Trainer(TrainConfig(...,
    precision=p)).train_step`` in ``baseline`` / ``div`` mode, for p in ``--precisions``. A
    precision the installed ``TrainConfig`` does not have is reported as "unavailable (...)".
  - ``torch_<fp32|bf16>_plain`` / ``torch_<fp32|bf16>_gal`` (Conv-3 only; ``--torch``): the PyTorch
    reference step of ``benchmarks/torch_gal.py`` (same architecture and maths -- tested in
    ``tests/test_torch_gal.py`` -- in fp32 or under ``torch.autocast("cpu", bfloat16)``) on the same
    batches. "unavailable" when torch is not installed (``pip install -e '.[bench]'``).
  Ratios: GAL / plain step time per framework and precision, and "our GAL img/s over each" other
  GAL variant (ratio of medians, and the median of the per-repetition ratios, "paired").
  Conv-3 x 5 on MNIST batch 128 and ResNet-20 x 5 on CIFAR-10 batch 128 (ours only) (quick:
  Conv-3 x 2, batch 16, no ResNet).
* ``attacks`` -- ``attacks.make_attack`` I-FGSM (10 steps) and PGD-CW (30 steps) on an untrained
  5 x Conv-3 surrogate (``models.build_ensemble``); first batch (includes tracing) vs the median of
  later batches. A retrace shows up as a later batch as slow as the first one, and in
  ``tracing_count``.
* ``export``  -- ``export.export_ensemble`` / ``export.load_ensemble`` of the 5 x Conv-3 ensemble:
  seconds and bytes on disk.
* ``data_pipeline`` -- batches/s that ``data.train_stream`` delivers on its own (if it is far above
  1 / step time, overlapping it with the step cannot matter).
* ``torch`` in ``--skip`` drops the PyTorch variants.

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
The PyTorch step is the same network and the same formulation, so the same FLOPs.
Achieved fraction = (multiplier * F * N_members * batch / median step seconds) / attainable FLOP/s
of the matmul in the step's precision (float32 steps: float32 matmul; bfloat16 steps: bfloat16).

Targets (reported under ``targets``, not enforced), Conv-3 x 5, MNIST, batch 128:
issue 10 -- GAL step in mixed_bfloat16 >= 1.6 x float32 GAL step (images/s); our GAL >= 2.5 x
PyTorch fp32 GAL and >= 1.6 x PyTorch bf16-autocast GAL (ours = our fastest measured precision; the
like-for-like ratios are in the table); our GAL step >= 70 % of attainable matmul FLOP/s in the
precision used (with the ``kernels`` ceiling as the measured reason when it is not).
issue 7 -- GAL step <= 1.6 x plain step (float32).

Memory: ``peak_rss_mb`` is the process max RSS (``resource.getrusage``) at the end of a section,
so it is cumulative (monotone over the run); ``tf_cpu_memory`` is TF's
``get_memory_info('CPU:0')`` when TF supports it on CPU, else "n/a".

Thread settings (``--intra`` / ``--inter``) are applied before TensorFlow initialises;
``--torch_threads`` (0 = PyTorch's default, one per core; a comma list runs every PyTorch variant
once per value, named ``torch_<precision>_t<N>_<mode>``) right before each PyTorch step. The
default (full and quick) is ``1,<cores>``: PyTorch's OpenMP kernels end every parallel region in a
barrier, so when other processes share the cores, a descheduled thread stalls each op (measured:
2-10x slower steps with 2 threads than with 1 at load average 5-9 on 2 cores), while TF's
work-stealing pool degrades gracefully; on a quiet machine the 2-thread setting usually wins. The
targets compare with PyTorch's *fastest* thread setting, and say so when only one was run.

Fairness (issue 26): the CPU's ISA flags (AVX2 / AVX-512 / AVX512_BF16 / AMX) and
``ONEDNN_MAX_CPU_ISA`` are recorded (``machine.isa``); the load average is recorded at the start,
around each train section and at the end, and ``validity`` marks the framework comparison NOT
valid when the 1-min load average at the start exceeds the core count (the report says so at the
top and next to every target).

Ceilings (issue 26): besides the big square matmul, ``kernels`` times the step's own GEMM-class
kernels at the step's shapes -- TF's (oneDNN) Conv2D / MatMul and, when torch is installed,
PyTorch's conv2d / linear (sgemm) -- forward + dX + dW per layer. ``ceiling`` takes, per layer,
the faster framework, and the time-weighted sum over the layers is "attainable at the step's
shapes": every step's "% of kernels" is against it (what the step's convolutions and matmuls can
reach here, whichever library runs them).
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

SECTIONS = ("matmul", "kernels", "train_conv3", "train_resnet20", "attacks", "export",
            "data_pipeline", "torch")


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
    p.add_argument("--precisions", default="float32,mixed_bfloat16",
                   help="comma list of TrainConfig precisions for our train steps")
    p.add_argument("--torch", default="fp32,bf16",
                   help="comma list of PyTorch GAL/plain step precisions (fp32, bf16 = autocast); "
                        "empty = none")
    p.add_argument("--torch_layout", default="contiguous", choices=("contiguous", "channels_last"),
                   help="PyTorch memory format of the Conv-3 members and inputs")
    p.add_argument("--torch_threads", default="",
                   help="comma list of torch.set_num_threads values (0 = PyTorch's default); with "
                        "several, every PyTorch variant runs once per value (names get _t<N>). "
                        "Default: 1 and the core count (e.g. 1,2), also with --quick; the targets "
                        "compare with the faster")
    p.add_argument("--skip", default="", help="comma list of sections to skip (" + ",".join(SECTIONS) + ")")
    args = p.parse_args(argv)
    unknown = {s.strip() for s in args.skip.split(",") if s.strip()} - set(SECTIONS)
    if unknown:
        p.error(f"--skip: unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(SECTIONS)}")
    return args


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
# matmul dtype a step is compared with, by (our TrainConfig / PyTorch) precision name
MATMUL_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16",
                "fp32": "float32", "bf16": "bfloat16"}
TORCH_INSTALL_HINT = "pip install -e '.[bench]'"


def torch_threads_resolved(threads):
    """0 = PyTorch's default (one per core) -> the number."""
    try:
        import torch
    except ImportError:
        return list(threads)
    return sorted({n or torch.get_num_threads() for n in threads})


def default_torch_threads():
    """PyTorch is always timed at 1 thread and at one thread per core (issue 26): which is faster
    depends on the load (OpenMP barriers) and the CPU; comparisons use the faster one."""
    return sorted({1, os.cpu_count() or 1})


def import_torch_gal():
    """(torch_gal module, None) or (None, reason) when PyTorch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return None, f"torch not installed ({e}; {TORCH_INSTALL_HINT})"
    from benchmarks import torch_gal

    return torch_gal, None


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


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_isa() -> dict:
    """The CPU's vector ISA flags that decide which oneDNN / MKL kernels run, and the oneDNN cap.

    ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``) restricts both TF's and PyTorch's oneDNN to that ISA: the
    way this benchmark emulates an AVX2-only CPU's kernels on an AVX-512 machine. PyTorch's own
    vectorised kernels follow ``ATEN_CPU_CAPABILITY`` (e.g. ``avx2``) and MKL's sgemm
    ``MKL_ENABLE_INSTRUCTIONS`` (e.g. ``AVX2``); set all three for a fair emulation (TF's Eigen
    element-wise code is compiled in and cannot be capped). Every cap set is recorded.
    """
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    have = {k: k in flags for k in ISA_FLAGS}
    best = ("AMX" if have["amx_tile"] else "AVX-512" if have["avx512f"] else "AVX2" if have["avx2"]
            else "pre-AVX2")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    caps = {v: os.environ[v] for v in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")
            if os.environ.get(v)}
    return {**have, "native": best, "onednn_max_cpu_isa": cap or "unset (native)", "caps": caps,
            "label": best + (", capped at " + ", ".join(f"{k}={v}" for k, v in caps.items()) if caps else "")}


def quiet_check(load_start, cores, load_end=None) -> dict:
    """A framework comparison is valid only if the 1-min load average at start <= the core count.

    Timings are still taken and reported (interleaved ratios are less affected than absolute
    figures), but marked ``valid: False`` with the reason."""
    cores = cores or 1
    valid = load_start[0] <= cores
    why = (f"load average at start {load_start[0]:.2f} <= {cores} cores" if valid else
           f"load average at start {load_start[0]:.2f} exceeds the {cores} cores: other processes "
           f"share the CPU, timings are inflated and PyTorch's multi-threaded steps are penalised "
           f"more than TF's; the framework comparison is NOT valid")
    out = {"valid": bool(valid), "reason": why, "load_start": list(load_start), "cores": cores}
    if load_end is not None:
        out["load_end"] = list(load_end)
        if valid and load_end[0] > cores:
            out["warning"] = f"load average rose to {load_end[0]:.2f} (> {cores} cores) by the end"
    return out


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
    return {"cpu_model": cpu, "logical_cores": os.cpu_count(), "isa": cpu_isa(),
            "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "avx512f": "avx512f" in flags, "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            **torch_info(), "load_average_at_start": list(os.getloadavg())}


def torch_info() -> dict:
    try:
        import torch
    except ImportError:
        return {"torch": "not installed"}
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_mkldnn": bool(torch.backends.mkldnn.is_available())}


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

def bench_matmul(n: int, reps: int, warmup: int, dtype: str = "float32") -> dict:
    a = tf.cast(tf.random.stateless_uniform([n, n], [1, 2]), dtype)
    b = tf.cast(tf.random.stateless_uniform([n, n], [3, 4]), dtype)
    # scalar out (no copy-out cost); the sum is accumulated in float32
    f = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
    for _ in range(warmup):
        timed(f)
    times = [timed(f) for _ in range(reps)]
    flops = 2.0 * n ** 3
    return {"dtype": dtype, "n": n, "flops_per_call": flops, "median_s": median(times),
            "min_s": min(times), "attainable_flops_per_s": flops / min(times),
            "median_flops_per_s": flops / median(times), "times_s": times, **memory()}


def conv3_gemm_layers(input_shape):
    """(name, kind, input shape without batch, kernel shape, forward FLOPs per image) of Conv-3."""
    model = models_lib.conv3(input_shape)
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            out.append((layer.name, "conv", tuple(layer.input.shape[1:]), tuple(layer.kernel.shape),
                        2 * h * w * kh * kw * c_in * c_out))
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            out.append((layer.name, "dense", (int(n_in),), (int(n_in), int(n_out)), 2 * n_in * n_out))
    return out


def bench_kernels(input_shape, batch: int, members: int, dtypes, reps: int, warmup: int) -> dict:
    """Each Conv-3 GEMM layer at the step's shapes: forward + dX + dW of ``members`` independent
    weight sets in one ``tf.function`` (as in a step, TF may run the members' ops side by side)."""
    reset_tf_peak()
    res = {"model": "conv3", "input_shape": list(input_shape), "batch_size": batch,
           "members": members,
           "what": f"forward + input-gradient + weight-gradient product (3x forward FLOPs) of each "
                   f"conv/dense layer for {members} members in one tf.function; single ops, no "
                   f"activations/pooling/optimizer"}
    layers = conv3_gemm_layers(input_shape)
    for dtype in dtypes:
        rows, total_flops, total_s = [], 0.0, 0.0
        for i, (name, kind, in_shape, k_shape, fwd) in enumerate(layers):
            xs = [tf.cast(tf.random.stateless_uniform((batch,) + in_shape, [i, 10 + j]), dtype)
                  for j in range(members)]
            ws = [tf.cast(tf.random.stateless_uniform(k_shape, [i, 20 + j], -0.1, 0.1), dtype)
                  for j in range(members)]

            def op(x, w, kind=kind):
                return tf.nn.conv2d(x, w, 1, "VALID") if kind == "conv" else tf.linalg.matmul(x, w)

            dys = [tf.cast(tf.random.stateless_uniform(op(xs[0], ws[0]).shape, [i, 30 + j]), dtype)
                   for j in range(members)]

            @tf.function
            def f(xs=xs, ws=ws, dys=dys, op=op):
                total = 0.0
                for x, w, dy in zip(xs, ws, dys):
                    with tf.GradientTape() as tape:
                        tape.watch([x, w])
                        y = op(x, w)
                    dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
                    total += (tf.reduce_sum(tf.cast(y[:1], tf.float32))
                              + tf.reduce_sum(tf.cast(dx[:1], tf.float32))
                              + tf.reduce_sum(tf.cast(dw, tf.float32)))
                return total

            for _ in range(warmup + 1):
                timed(f)
            times = [timed(f) for _ in range(reps)]
            flops = 3.0 * fwd * batch * members
            med = median(times)
            rows.append({"layer": name, "kind": kind, "input_shape": list(in_shape),
                         "kernel_shape": list(k_shape), "flops_per_call": flops, "median_s": med,
                         "flops_per_s": flops / med})
            total_flops += flops
            total_s += med
        res[dtype] = {"layers": rows, "total_flops": total_flops, "total_s": total_s,
                      "flops_per_s": total_flops / total_s}
    res.update(memory())
    return res


def bench_torch_kernels(input_shape, batch: int, members: int, dtypes, reps: int, warmup: int,
                        threads) -> dict:
    """PyTorch's kernels at the same shapes as ``bench_kernels``: ``F.conv2d`` (oneDNN / NCHW
    contiguous, what ``torch_gal.py`` runs) and ``F.linear`` (MKL / oneDNN sgemm), forward + dX +
    dW of ``members`` weight sets, per thread count in ``threads``; per layer the best thread count."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        return f"unavailable (torch not installed: {e})"
    saved = torch.get_num_threads()
    layers = conv3_gemm_layers(input_shape)
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    res = {"model": "conv3", "input_shape": list(input_shape), "batch_size": batch, "members": members,
           "threads": list(threads), "torch": torch.__version__}
    g = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        if dtype not in tdt:
            continue
        rows, total_flops, total_s = [], 0.0, 0.0
        for name, kind, in_shape, k_shape, fwd in layers:
            if kind == "conv":
                h, w, c = in_shape
                kh, kw, cin, cout = k_shape
                xs = [torch.rand((batch, c, h, w), generator=g).to(tdt[dtype]) for _ in range(members)]
                ws = [(torch.rand((cout, cin, kh, kw), generator=g) * 0.2 - 0.1).to(tdt[dtype])
                      for _ in range(members)]
                op = F.conv2d
            else:
                xs = [torch.rand((batch,) + in_shape, generator=g).to(tdt[dtype]) for _ in range(members)]
                ws = [(torch.rand((k_shape[1], k_shape[0]), generator=g) * 0.2 - 0.1).to(tdt[dtype])
                      for _ in range(members)]
                op = F.linear
            for t in xs + ws:
                t.requires_grad_(True)
            with torch.no_grad():
                dys = [torch.rand_like(op(xs[0], ws[0])) for _ in range(members)]

            def f(xs=xs, ws=ws, dys=dys, op=op):
                total = 0.0
                for x, w, dy in zip(xs, ws, dys):
                    y = op(x, w)
                    dx, dw = torch.autograd.grad(y, [x, w], dy)
                    total += float(y[:1].float().sum() + dx[:1].float().sum() + dw.float().sum())
                return total

            per_thread = {}
            for nt in threads:
                torch.set_num_threads(nt)
                for _ in range(warmup + 1):
                    f()
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    f()
                    times.append(time.perf_counter() - t0)
                per_thread[str(nt)] = median(times)
            best_nt = min(per_thread, key=per_thread.get)
            med = per_thread[best_nt]
            flops = 3.0 * fwd * batch * members
            rows.append({"layer": name, "kind": kind, "input_shape": list(in_shape),
                         "kernel_shape": list(k_shape), "flops_per_call": flops, "median_s": med,
                         "best_threads": int(best_nt), "median_s_by_threads": per_thread,
                         "flops_per_s": flops / med})
            total_flops += flops
            total_s += med
        res[dtype] = {"layers": rows, "total_flops": total_flops, "total_s": total_s,
                      "flops_per_s": total_flops / total_s}
    torch.set_num_threads(saved)
    return res


def kernel_ceiling(tf_k, torch_k, dtypes) -> dict:
    """Per layer the faster of TF's and PyTorch's kernels; the time-weighted total over the layers
    = FLOP/s attainable at the step's shapes (issue 26)."""
    out = {}
    for d in dtypes:
        a = tf_k.get(d) if isinstance(tf_k, dict) else None
        b = torch_k.get(d) if isinstance(torch_k, dict) else None
        if not isinstance(a, dict) and not isinstance(b, dict):
            continue
        srcs = [(fw, k) for fw, k in (("tf", a), ("torch", b)) if isinstance(k, dict)]
        rows, total_flops, total_s = [], 0.0, 0.0
        for i, row in enumerate(srcs[0][1]["layers"]):
            fw, best = min(((fw, k["layers"][i]) for fw, k in srcs), key=lambda t: t[1]["median_s"])
            rows.append({"layer": row["layer"], "from": fw, "median_s": best["median_s"],
                         "flops_per_s": best["flops_per_s"]})
            total_flops += best["flops_per_call"]
            total_s += best["median_s"]
        out[d] = {"layers": rows, "flops_per_s": total_flops / total_s,
                  "tf_flops_per_s": a["flops_per_s"] if isinstance(a, dict) else None,
                  "torch_flops_per_s": b["flops_per_s"] if isinstance(b, dict) else None}
    return out


class Unavailable(Exception):
    """A benchmark variant this installation cannot run (reported, not fatal)."""


def train_config(precision: str, **kw):
    """``training.TrainConfig(..., precision=precision)``.

    Before ``TrainConfig`` had a ``precision`` field (TypeError), float32 -- what it computed
    then -- runs without it and any other precision is ``Unavailable``.
    """
    try:
        return training.TrainConfig(precision=precision, **kw)
    except TypeError as e:
        if "precision" not in str(e):
            raise
        if precision == "float32":
            return training.TrainConfig(**kw)
        raise Unavailable("TrainConfig has no precision") from None


def make_trainer(precision: str, input_shape, **cfg_kw):
    """A ``training.Trainer`` in ``precision`` and the dtype its first layer computes in."""
    cfg = train_config(precision, **cfg_kw)
    try:
        cfg.validate()
    except ValueError as e:
        if precision == "float32":
            raise
        raise Unavailable(f"{type(e).__name__}: {e}") from None
    policy = keras.config.dtype_policy()
    try:
        trainer = training.Trainer(cfg, input_shape, 10)
    finally:
        keras.config.set_dtype_policy(policy)  # a leaked global policy would change later sections
    layer = next(l for l in trainer.ensemble.members[0].layers
                 if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)))
    compute = str(layer.compute_dtype)
    if compute != {"float32": "float32", "mixed_bfloat16": "bfloat16",
                   "mixed_float16": "float16"}.get(precision, compute):
        raise Unavailable(f"precision {precision!r} not applied: layers compute in {compute}")
    return trainer, compute


def _step_stats(times, first, batch, mult, fwd, **meta):
    med = median(times)
    flops = mult * fwd * batch
    return {**meta, "first_call_s": first, "median_step_s": med, "min_step_s": min(times),
            "images_per_s": batch / med, "flop_multiplier": mult, "flops_per_step": flops,
            "achieved_flops_per_s": flops / med, "times_s": times}
    # + fraction_of_attainable, filled in by main() from the matmul in "matmul_dtype"


def bench_train(dataset: str, model: str, members: int, batch: int, data_dir, reps: int,
                warmup: int, jit: bool = False, precisions=("float32",), torch_precisions=(),
                torch_layout: str = "contiguous", torch_threads=(0,)) -> dict:
    """Every variant (ours per precision, PyTorch per precision; plain and GAL) interleaved."""
    reset_tf_peak()
    load_start = list(os.getloadavg())
    n_batches = 4
    batches, shape = {}, None
    for key, mode in (("plain", "baseline"), ("gal", "div")):
        batches[key], shape = real_batches(dataset, data_dir, batch, training.MODES[mode], n_batches)
    runners, steps = {}, {}  # name -> callable(i); name -> stats dict or "unavailable (...)"
    fwd = None
    for p in precisions:
        for key, mode in (("plain", "baseline"), ("gal", "div")):
            name = f"ours_{p}_{key}"
            try:
                trainer, compute = make_trainer(p, shape, dataset=dataset, model=model,
                                                ensemble_size=members, mode=mode, batch_size=batch,
                                                data_dir=data_dir, jit_compile=jit)
            except Unavailable as e:
                steps[name] = f"unavailable ({e})"
                continue
            if fwd is None:
                fwd = ensemble_forward_flops(trainer.ensemble)
            runners[name] = (lambda i, t=trainer, b=batches[key]: t.train_step(*b[i % n_batches]))
            steps[name] = {"framework": "ours", "precision": p, "compute_dtype": compute,
                           "matmul_dtype": MATMUL_DTYPE[p], "mode": key, "train_mode": mode}
    if fwd is None:
        raise RuntimeError("no TF train variant could be built")
    torch_info = None
    if torch_precisions:
        tg, why = import_torch_gal()
        if model != "conv3":
            why = f"torch_gal.py implements conv3 only, not {model}"
        threads = list(torch_threads)
        if not why:
            import torch

            default_threads = torch.get_num_threads()
            threads = [n or default_threads for n in torch_threads]
            torch_info = {"torch": torch.__version__, "default_threads": default_threads,
                          "threads": threads, "interop_threads": torch.get_num_interop_threads(),
                          "layout": torch_layout}
        for tp in torch_precisions:
            for nt in threads:
                for key in ("plain", "gal"):
                    name = f"torch_{tp}_{key}" if len(threads) == 1 else f"torch_{tp}_t{nt}_{key}"
                    if why:
                        steps[name] = f"unavailable ({why})"
                        continue
                    tmembers = tg.build_ensemble(members, shape, 10, seed=0, memory_format=torch_layout)
                    tstep = tg.TorchStep(tmembers, key, tp)
                    tb = [(tg.to_torch_images(x.numpy(), torch_layout), torch.from_numpy(y.numpy()).long())
                          for x, y in batches[key]]

                    def run(i, s=tstep, b=tb, nt=nt):
                        torch.set_num_threads(nt)  # cheap when unchanged
                        return s(*b[i % n_batches])

                    runners[name] = run
                    steps[name] = {"framework": "torch", "precision": tp, "threads": nt,
                                   "compute_dtype": "bfloat16 (autocast)" if tp == "bf16" else "float32",
                                   "matmul_dtype": MATMUL_DTYPE[tp], "mode": key, "layout": torch_layout}
    res = {"dataset": dataset, "model": model, "members": members, "batch_size": batch,
           "jit_compile": jit, "forward_flops_per_image_all_members": fwd,
           "forward_flops_per_image_per_member": fwd // members, "torch": torch_info,
           "load_average_start": load_start}
    names = list(runners)
    first = {n: timed(lambda: runners[n](0)) for n in names}  # first call: tracing / primitive setup
    times = {n: [] for n in names}
    t_loop = time.time()
    for i in range(warmup + reps):
        k = i % len(names)
        for n in names[k:] + names[:k]:  # rotated order: no variant always follows the same one
            t = timed(lambda: runners[n](i + 1))
            if i >= warmup:
                times[n].append(t)
        print(f"  {model}: repetition {i + 1}/{warmup + reps} done ({time.time() - t_loop:.0f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
    for n in names:
        mult = GAL_MULT if steps[n]["mode"] == "gal" else PLAIN_MULT
        steps[n] = _step_stats(times[n], first[n], batch, mult, fwd, **steps[n])
    res["steps"] = steps
    res["load_average_end"] = list(os.getloadavg())

    def ok(n):
        return isinstance(steps.get(n), dict)

    res["gal_over_plain"] = {}
    for prefix in sorted({n.rsplit("_", 1)[0] for n in names}):
        g, p = f"{prefix}_gal", f"{prefix}_plain"
        if ok(g) and ok(p):
            res["gal_over_plain"][prefix] = {
                "time_ratio": steps[g]["median_step_s"] / steps[p]["median_step_s"],
                # median over reps of gal_i / plain_i (robust to slow drifts in background load)
                "paired": median([a / b for a, b in zip(times[g], times[p])])}
    res["our_gal_speedup"] = {}
    gals = [n for n in names if n.endswith("_gal")]
    for ours in (n for n in gals if n.startswith("ours_")):
        for other in gals:
            if other != ours:
                res["our_gal_speedup"][f"{ours} / {other}"] = {
                    "images_per_s_ratio": steps[ours]["images_per_s"] / steps[other]["images_per_s"],
                    "paired": median([b / a for a, b in zip(times[ours], times[other])])}
    res.update(memory())
    del runners
    return res


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


def pct(v):
    return "n/a" if v is None else f"{100 * v:.0f} %"


def not_run(res: dict, key: str):
    """The reason string of a section that did not run ("skipped ...", "unavailable ..."), else None."""
    v = res.get(key)
    if v is None:
        return "not run"
    return v if isinstance(v, str) else None


def _loads(xs):
    return ", ".join(f"{x:.2f}" for x in xs)


def markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [f"# tf_divtrain benchmark ({'quick' if s['quick'] else 'full'})", "",
             f"{res['timestamp_utc']} UTC -- {m['cpu_model']}, {m['logical_cores']} logical cores, "
             f"TF {m['tensorflow']}, Keras {m['keras']}, PyTorch {m.get('torch', 'n/a')}, "
             f"intra/inter threads {m['intra_op_threads']}/{m['inter_op_threads']} (0 = TF default), "
             f"torch threads {m.get('torch_threads', 'n/a')}. Load average (1, 5, 15 min) at start "
             f"{_loads(m['load_average_at_start'])}"
             + (f", at end {_loads(res['load_average_at_end'])}" if "load_average_at_end" in res else "")
             + ".", ""]
    isa = m.get("isa")
    if isinstance(isa, dict):
        lines += [f"CPU ISA: **{isa['label']}** (flags: " + ", ".join(
            f"{k} {'yes' if isa[k] else 'no'}" for k in ISA_FLAGS) + ").", ""]
    v = res.get("validity")
    if isinstance(v, dict):
        lines += [("**Framework comparison valid**: " if v["valid"] else
                   "**WARNING -- framework comparison NOT valid**: ") + v["reason"]
                  + (f"; {v['warning']}" if v.get("warning") else "") + ".", ""]
    lines += ["Medians after warm-up; settings: " + ", ".join(f"{k}={v}" for k, v in s.items()), ""]
    skipped = [f"{k}: {v}" for k, v in res.items() if k in SECTIONS and isinstance(v, str)]
    if skipped:
        lines += ["Not run: " + "; ".join(skipped) + ".", ""]
    mm = res.get("matmul")
    if isinstance(mm, dict):
        lines += ["Attainable matmul FLOP/s (N x N @ N x N `tf.linalg.matmul`, best call of a run at "
                  "the start and one at the end): " + "; ".join(
                      f"**{d}: {r['attainable_flops_per_s'] / 1e9:.1f} GFLOP/s** (N = {r['n']}, median "
                      f"{r['median_flops_per_s'] / 1e9:.1f})" for d, r in mm.items() if isinstance(r, dict))
                  + ".", ""]
    else:
        lines += [f"Attainable matmul FLOP/s: {not_run(res, 'matmul')} (no % of matmul figures).", ""]
    k = res.get("kernels")
    if isinstance(k, dict):
        dts = [d for d in k if isinstance(k.get(d), dict) and "layers" in k[d]]
        lines += [f"## Conv-3 GEMM kernels at batch {k['batch_size']} (ceiling for the step)", "",
                  f"{k['what']}.", "",
                  "| layer | input | kernel | " + " | ".join(f"{d} GFLOP/s (% of {d} matmul)" for d in dts) + " |",
                  "|---|---|---|" + "---|" * len(dts)]
        for i, row in enumerate(k[dts[0]]["layers"] if dts else []):
            cells = [f"{k[d]['layers'][i]['flops_per_s'] / 1e9:.1f} "
                     f"({pct(k[d]['layers'][i].get('fraction_of_attainable'))})" for d in dts]
            lines.append(f"| {row['layer']} | {'x'.join(map(str, row['input_shape']))} | "
                         f"{'x'.join(map(str, row['kernel_shape']))} | " + " | ".join(cells) + " |")
        lines.append("| **all (time-weighted)** | | | " + " | ".join(
            f"**{k[d]['flops_per_s'] / 1e9:.1f}** ({pct(k[d].get('fraction_of_attainable'))})"
            for d in dts) + " |")
        lines.append("")
        tk, ceil = res.get("torch_kernels"), res.get("kernel_ceiling") or {}
        if isinstance(tk, dict):
            tdts = [d for d in dts if isinstance(tk.get(d), dict)]
            lines += [f"The same layers with PyTorch {tk['torch']} (`F.conv2d` NCHW / `F.linear`; best of "
                      f"threads {'/'.join(map(str, tk['threads']))}), and the ceiling = the faster "
                      "framework per layer:", "",
                      "| layer | " + " | ".join(f"TF {d} | PyTorch {d} (threads) | ceiling {d}" for d in tdts)
                      + " |", "|---|" + "---|---|---|" * len(tdts)]
            for i, row in enumerate(k[dts[0]]["layers"] if dts else []):
                cells = []
                for d in tdts:
                    tr, pr, cr = k[d]["layers"][i], tk[d]["layers"][i], ceil[d]["layers"][i]
                    cells.append(f"{tr['flops_per_s'] / 1e9:.1f} | {pr['flops_per_s'] / 1e9:.1f} "
                                 f"({pr['best_threads']}) | {cr['flops_per_s'] / 1e9:.1f} ({cr['from']})")
                lines.append(f"| {row['layer']} | " + " | ".join(cells) + " |")
            lines.append("| **all (time-weighted)** | " + " | ".join(
                f"**{k[d]['flops_per_s'] / 1e9:.1f}** | **{tk[d]['flops_per_s'] / 1e9:.1f}** | "
                f"**{ceil[d]['flops_per_s'] / 1e9:.1f}**" for d in tdts) + " |")
            lines.append("")
        elif tk:
            lines += [f"PyTorch kernels: {tk}.", ""]
    lines += ["## Training steps", ""]
    for key in ("train_conv3", "train_resnet20"):
        r = res.get(key)
        if not isinstance(r, dict):
            lines += [f"{key}: {not_run(res, key)}.", ""]
            continue
        ti = r.get("torch")
        lines += [f"### {r['members']} x {r['model']} ({r['dataset']}), batch {r['batch_size']}", "",
                  f"Load average at start {_loads(r['load_average_start'])}, at end "
                  f"{_loads(r['load_average_end'])}."
                  + (f" PyTorch {ti['torch']}, threads {'/'.join(map(str, ti['threads']))} "
                     f"(default {ti['default_threads']}), layout {ti['layout']}." if ti else ""),
                  "", "| variant | compute dtype | median step s | images/s | GFLOP/step | GFLOP/s | "
                  "% of matmul (dtype) | % of step-shape kernels | first call s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, t in r["steps"].items():
            if not isinstance(t, dict):
                lines.append(f"| {name} | {t} | | | | | | | |")
                continue
            frac = t.get("fraction_of_attainable")
            lines.append(f"| {name} | {t['compute_dtype']} | {fmt(t['median_step_s'])} | "
                         f"{t['images_per_s']:.1f} | {t['flops_per_step'] / 1e9:.2f} | "
                         f"{t['achieved_flops_per_s'] / 1e9:.1f} | {pct(frac)} ({t['matmul_dtype']}) | "
                         f"{pct(t.get('fraction_of_kernel_ceiling'))} | {fmt(t['first_call_s'])} |")
        lines.append("")
        for prefix, g in r["gal_over_plain"].items():
            lines.append(f"- GAL / plain, {prefix}: **{g['time_ratio']:.2f}x** (paired {g['paired']:.2f}x)")
        if r["our_gal_speedup"]:
            lines += ["", "Our GAL images/s over each other GAL variant (ratio of medians; paired = median "
                      "of per-repetition ratios):", ""]
            for pair, v in r["our_gal_speedup"].items():
                lines.append(f"- {pair}: **{v['images_per_s_ratio']:.2f}x** (paired {v['paired']:.2f}x)")
        lines.append("")
    a = res.get("attacks")
    if isinstance(a, dict):
        lines += [f"## Attacks ({a['surrogate']}, batch {a['batch_size']}, eps {a['eps']})", "",
                  "| attack | iters | first batch s | later batches s | first / later | images/s | "
                  "GFLOP/s | % of float32 matmul | traces |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("ifgsm", "pgd_cw"):
            t = a[name]
            lines.append(f"| {name} | {t['nb_iter']} | {fmt(t['first_batch_s'])} | "
                         f"{fmt(t['later_batches_median_s'])} | {t['first_over_later']:.1f} | "
                         f"{t['images_per_s']:.1f} | {t['achieved_flops_per_s'] / 1e9:.1f} | "
                         f"{pct(t.get('fraction_of_attainable'))} | {t['tracing_count']} |")
        lines.append("")
    e = res.get("export")
    if isinstance(e, dict):
        lines += ["## SavedModel export", "",
                  "| members | parameters | export s | load s | first call after load s | size MB |",
                  "|---|---|---|---|---|---|",
                  f"| {e['members']} x conv3 | {e['parameters']:,} | {fmt(e['export_median_s'])} | "
                  f"{fmt(e['load_median_s'])} | {fmt(e['first_call_after_load_median_s'])} | "
                  f"{e['size_mb']:.1f} |", ""]
    d = res.get("data_pipeline")
    if isinstance(d, dict):
        lines += [f"Data pipeline alone ({d['dataset']}, batch {d['batch_size']}, "
                  f"{'+'.join(d['sources'])}): {d['batches_per_s']:.1f} batches/s "
                  f"({d['images_per_s']:.0f} images/s).", ""]
    t = res.get("targets")
    if t:
        lines += [f"## Targets ({t['scope']}; reported, not enforced)", ""]
        for it in t["items"]:
            if it["value"] is None:
                lines.append(f"- {it['name']} {it['op']} {it['threshold']}: n/a ({it['why']})")
            else:
                verdict = "met" if it["met"] else "NOT met"
                if it.get("valid") is False:
                    verdict += ", but INVALID (machine under load)"
                lines.append(f"- {it['name']}: {it['value']:.2f} {it['op']} {it['threshold']} -> "
                             f"**{verdict}**" + (f" ({it['note']})" if it.get("note") else ""))
        lines.append("")
    lines += ["## Memory", "", "| section | process peak RSS MB (cumulative) | TF CPU peak MB (this section) |",
              "|---|---|---|"]
    for key in ("matmul", "kernels", "train_conv3", "train_resnet20", "attacks", "export"):
        r = res.get(key)
        if isinstance(r, dict) and key == "matmul":
            r = r.get("float32") or next((v for v in r.values() if isinstance(v, dict)), None)
        if isinstance(r, dict) and "peak_rss_mb" in r:
            tfm = r["tf_cpu_memory"]
            tfm = f"{tfm['peak_mb']:.0f}" if isinstance(tfm, dict) else tfm
            lines.append(f"| {key} | {r['peak_rss_mb']:.0f} | {tfm} |")
    lines += ["", f"Peak RSS {res['peak_rss_mb']:.0f} MB; TF CPU memory info: {res['tf_cpu_memory']}.",
              f"Total wall time {res['wall_s']:.1f} s.", "",
              "FLOP model: forward F per image per member = sum of conv 2*Ho*Wo*Kh*Kw*Cin*Cout and "
              "dense 2*in*out; plain step = 3F, GAL step = 6F (forward + input-gradient backward + "
              "outer backward through both, 2F each), the same for the PyTorch step (same network, "
              "same formulation); attack iteration = 2F; % of matmul uses the matmul in the step's "
              "precision. See bench.py docstring.",
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


def _item(name, value, op, threshold, why=None, note=None):
    met = None if value is None else bool(value >= threshold if op == ">=" else value <= threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": met,
            "why": why, "note": note}


def auto_precision() -> tuple:
    """What ``--precision=auto`` resolves to here, and why (``tf_divtrain.precision``)."""
    try:
        from tf_divtrain import precision as precision_lib
    except ImportError:
        return "float32", "tf_divtrain.precision not available"
    why = precision_lib.native_bfloat16()
    return ("mixed_bfloat16" if why else "float32"), (why or "no native bfloat16")


def targets(r: dict, kernels, scope: str, validity=None, ceiling=None) -> dict:
    """Issue 26, issue 10 (+ issue 7) targets from the train_conv3 section (reported, not enforced).

    Framework comparisons carry ``valid`` from :func:`quiet_check` (False on a loaded machine)."""
    steps = r["steps"]
    valid = None if validity is None else validity["valid"]

    def st(n):
        v = steps.get(n)
        return v if isinstance(v, dict) else None

    def why(*names):
        return "; ".join(f"{n}: {steps.get(n, 'not requested')}" for n in names if st(n) is None)

    items = []
    f32, b16 = st("ours_float32_gal"), st("ours_mixed_bfloat16_gal")
    items.append(_item("GAL step images/s, ours mixed_bfloat16 / ours float32",
                       b16["images_per_s"] / f32["images_per_s"] if f32 and b16 else None, ">=", 1.6,
                       why("ours_float32_gal", "ours_mixed_bfloat16_gal")))
    ours = [n for n, v in steps.items() if n.startswith("ours_") and n.endswith("_gal") and isinstance(v, dict)]
    best = max(ours, key=lambda n: steps[n]["images_per_s"]) if ours else None
    for tp, thr in (("fp32", 2.5), ("bf16", 1.6)):
        cands = [n for n, v in steps.items() if n.startswith(f"torch_{tp}_") and n.endswith("_gal")]
        done = [n for n in cands if st(n)]
        other = max(done, key=lambda n: steps[n]["images_per_s"]) if done else f"torch_{tp}_gal"
        o = st(other)
        items.append(_item(f"GAL step images/s, ours ({best}) / {other}",
                           steps[best]["images_per_s"] / o["images_per_s"] if best and o else None,
                           ">=", thr, (why(*cands) if cands else "not requested") if not o else
                           (None if best else "no ours GAL step"),
                           note="ours = our fastest measured GAL precision"
                           + (f"; PyTorch = its fastest thread setting" if len(cands) > 1 else "")))
    for n in ours:
        v = steps[n]
        frac = v.get("fraction_of_attainable")
        note = None
        kd = kernels.get(v["matmul_dtype"]) if isinstance(kernels, dict) else None
        if frac is not None and isinstance(kd, dict) and "fraction_of_attainable" in kd:
            note = (f"Conv-3 GEMM kernels alone at this batch reach {100 * kd['fraction_of_attainable']:.0f} % "
                    f"of the {v['matmul_dtype']} matmul; the step runs at "
                    f"{100 * v['achieved_flops_per_s'] / kd['flops_per_s']:.0f} % of those kernels")
        items.append(_item(f"{n} FLOP/s as a fraction of attainable {v['matmul_dtype']} matmul",
                           frac, ">=", 0.7, None if frac is not None else "matmul not measured", note))
    # issue 26: float32 against PyTorch fp32 at its faster thread setting; auto (native bf16 only)
    def fastest_torch(tp):
        cands = [n for n, v in steps.items() if n.startswith(f"torch_{tp}_") and n.endswith("_gal")
                 and isinstance(v, dict)]
        return (max(cands, key=lambda n: steps[n]["images_per_s"]) if cands else None), len(cands)

    auto, auto_why = auto_precision()
    for ours_p, tp, thr in (("float32", "fp32", 1.3), (auto, "fp32", 2.0), (auto, "bf16", 1.3)):
        label = "float32" if ours_p == "float32" and thr == 1.3 and tp == "fp32" else f"auto={ours_p}"
        name = f"issue 26: GAL step images/s, ours {label} / PyTorch {tp} (faster thread setting)"
        if label != "float32" and ours_p == "float32":
            items.append(_item(name, None, ">=", thr, f"applies with native bfloat16 only ({auto_why})"))
            continue
        o, n_thr = fastest_torch(tp)
        mine = st(f"ours_{ours_p}_gal")
        note = (f"ours_{ours_p}_gal / {o}" if o else None)
        if o and n_thr < 2:
            note += "; only one PyTorch thread setting was run: not its proven best"
        if o and valid is False:
            note += "; INVALID comparison: " + validity["reason"].split(":")[0]
        items.append(_item(name, mine["images_per_s"] / steps[o]["images_per_s"] if mine and o else None,
                           ">=", thr, None if mine and o else
                           (why(f"ours_{ours_p}_gal") or f"no torch_{tp} GAL step"), note))
        items[-1]["valid"] = valid if o else None
    for ours_p in ("float32", "mixed_bfloat16"):
        v, c = st(f"ours_{ours_p}_gal"), (ceiling or {}).get(MATMUL_DTYPE[ours_p])
        if v and isinstance(c, dict):
            items.append(_item(f"issue 26: ours_{ours_p}_gal FLOP/s / the step's kernels' ceiling "
                               f"({c['flops_per_s'] / 1e9:.1f} GFLOP/s, faster framework per layer)",
                               v["achieved_flops_per_s"] / c["flops_per_s"], ">=", 0.7, None,
                               "informative: the ceiling counts only the GEMM-class kernels"))
    g = r["gal_over_plain"].get("ours_float32")
    items.append(_item("issue 7: GAL / plain step time, ours float32", g["time_ratio"] if g else None,
                       "<=", 1.6, None if g else "ours float32 not measured",
                       note="FLOP floor of exact double backprop is 2.0x (history/FINDINGS.md)"))
    return {"scope": scope, "items": items}


def main(args) -> dict:
    t0 = time.time()
    quick = args.quick
    reps = args.reps or (3 if quick else 10)
    warmup = args.warmup or (1 if quick else 2)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    members = 2 if quick else 5
    batch = 16 if quick else 128
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    torch_precisions = [] if "torch" in skip else [p.strip() for p in args.torch.split(",") if p.strip()]
    torch_threads = ([int(n) for n in str(args.torch_threads).split(",") if n.strip()]
                     or default_torch_threads())
    for p in precisions + torch_precisions:
        if p not in MATMUL_DTYPE:
            sys.exit(f"bench.py: unknown precision {p!r}; ours: float32, mixed_bfloat16, mixed_float16; "
                     f"--torch: fp32, bf16.")
    settings = {"quick": quick, "reps": reps, "warmup": warmup, "members": members,
                "batch_size": batch, "matmul_n": 1024 if quick else 4096,
                "attack_batches": 1 if quick else 3, "xla": args.xla, "precisions": precisions,
                "torch_precisions": torch_precisions, "torch_layout": args.torch_layout,
                "torch_threads": torch_threads, "skip": sorted(skip), "data_dir": args.data_dir}
    if not args.data_dir or not os.path.isfile(os.path.join(args.data_dir, "mnist.npz")):
        sys.exit(f"bench.py: no mnist.npz in data dir {args.data_dir!r}; pass --data_dir or set "
                 f"TF_DIVTRAIN_DATA.")
    keras.utils.set_random_seed(0)
    if torch_precisions:
        tg, _ = import_torch_gal()
        if tg is not None:
            import torch

            torch.manual_seed(0)
    res = {"timestamp_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "machine": machine_info(), "settings": settings}
    # matmul dtypes the requested step precisions are compared with
    dtypes = sorted({MATMUL_DTYPE[p] for p in precisions + torch_precisions} | {"float32"},
                    key=lambda d: (d != "float32", d))

    def log(msg):
        print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)

    def skipped(key):
        if key in skip:
            res[key] = "skipped (--skip)"
            return True
        return False

    if not skipped("matmul"):
        res["matmul"] = {d: bench_matmul(settings["matmul_n"], max(reps, 3), warmup, d) for d in dtypes}
        log("matmul " + ", ".join(f"{d} {r['attainable_flops_per_s'] / 1e9:.1f}"
                                  for d, r in res["matmul"].items()) + " GFLOP/s")
    if not skipped("kernels"):
        res["kernels"] = bench_kernels((28, 28, 1), batch, members, dtypes, max(3, reps // 2), warmup)
        log("conv3 kernels " + ", ".join(f"{d} {res['kernels'][d]['flops_per_s'] / 1e9:.1f}"
                                         for d in dtypes) + " GFLOP/s")
        if torch_precisions:
            res["torch_kernels"] = bench_torch_kernels((28, 28, 1), batch, members, dtypes,
                                                       max(3, reps // 2), warmup, torch_threads_resolved(torch_threads))
            tk = res["torch_kernels"]
            log("conv3 torch kernels " + (", ".join(f"{d} {tk[d]['flops_per_s'] / 1e9:.1f}"
                                                    for d in dtypes if d in tk) + " GFLOP/s"
                                          if isinstance(tk, dict) else tk))
        else:
            res["torch_kernels"] = "skipped (no --torch precision)"
        if isinstance(res["torch_kernels"], dict):  # the TF section's layer names, same order
            for d in dtypes:
                for a, b in zip(res["kernels"].get(d, {}).get("layers", []),
                                res["torch_kernels"].get(d, {}).get("layers", [])):
                    b["layer"] = a["layer"]
        res["kernel_ceiling"] = kernel_ceiling(res["kernels"], res["torch_kernels"], dtypes)
    if not skipped("train_conv3"):
        res["train_conv3"] = bench_train("mnist", "conv3", members, batch, args.data_dir, reps,
                                         warmup, args.xla, precisions, torch_precisions,
                                         args.torch_layout, torch_threads)
        r = res["train_conv3"]
        log(f"conv3 x{members} b{batch}: " + ", ".join(
            f"{n} {v['median_step_s']:.3f}s" if isinstance(v, dict) else f"{n} {v}"
            for n, v in r["steps"].items()))
    if quick:
        res["train_resnet20"] = "skipped (--quick)"
    elif not skipped("train_resnet20"):
        res["train_resnet20"] = bench_train("cifar10", "resnet20", members, batch, args.data_dir,
                                            max(3, reps // 2), warmup, args.xla, precisions)
        r = res["train_resnet20"]
        log(f"resnet20 x{members} b{batch}: " + ", ".join(
            f"{n} {v['median_step_s']:.3f}s" if isinstance(v, dict) else f"{n} {v}"
            for n, v in r["steps"].items()))
    if not skipped("attacks"):
        res["attacks"] = bench_attacks(args.data_dir, members, batch, settings["attack_batches"], quick)
        a = res["attacks"]
        log(f"attacks: ifgsm {a['ifgsm']['images_per_s']:.1f} img/s (first/later "
            f"{a['ifgsm']['first_over_later']:.1f}), pgd_cw {a['pgd_cw']['images_per_s']:.1f} img/s")
    if not skipped("export"):
        res["export"] = bench_export(members, 2 if quick else 3)
        e = res["export"]
        log(f"export {e['export_median_s']:.2f}s, load {e['load_median_s']:.2f}s, {e['size_mb']:.1f} MB")
    if not skipped("data_pipeline"):
        res["data_pipeline"] = bench_data_pipeline("mnist", args.data_dir, batch, ("aug", "noise"),
                                                   5 if quick else 50)
        log(f"data pipeline {res['data_pipeline']['batches_per_s']:.1f} batches/s")
    if isinstance(res.get("matmul"), dict):
        # Again at the end: "attainable" = the best of both runs (background load only slows).
        for d, mm in res["matmul"].items():
            post = bench_matmul(settings["matmul_n"], max(reps, 3), warmup, d)
            mm["post_median_s"], mm["post_min_s"] = post["median_s"], post["min_s"]
            mm["attainable_flops_per_s"] = mm["flops_per_call"] / min(mm["min_s"], post["min_s"])
            mm["median_flops_per_s"] = mm["flops_per_call"] / min(mm["median_s"], post["median_s"])
        log("matmul again; attainable (best) " + ", ".join(
            f"{d} {r['attainable_flops_per_s'] / 1e9:.1f}" for d, r in res["matmul"].items()) + " GFLOP/s")
        attainable = {d: r["attainable_flops_per_s"] for d, r in res["matmul"].items()}
        for key in ("train_conv3", "train_resnet20"):
            if isinstance(res.get(key), dict):
                for t in res[key]["steps"].values():
                    if isinstance(t, dict) and t["matmul_dtype"] in attainable:
                        t["fraction_of_attainable"] = t["achieved_flops_per_s"] / attainable[t["matmul_dtype"]]
        if isinstance(res.get("kernels"), dict):
            for d in dtypes:
                kd = res["kernels"].get(d)
                if isinstance(kd, dict) and d in attainable:
                    kd["fraction_of_attainable"] = kd["flops_per_s"] / attainable[d]
                    for row in kd["layers"]:
                        row["fraction_of_attainable"] = row["flops_per_s"] / attainable[d]
        if isinstance(res.get("attacks"), dict):
            for name in ("ifgsm", "pgd_cw"):
                t = res["attacks"][name]
                t["fraction_of_attainable"] = t["achieved_flops_per_s"] / attainable["float32"]
    ceil = res.get("kernel_ceiling") or {}
    if isinstance(res.get("train_conv3"), dict):
        for t in res["train_conv3"]["steps"].values():
            if isinstance(t, dict) and isinstance(ceil.get(t["matmul_dtype"]), dict):
                t["fraction_of_kernel_ceiling"] = (t["achieved_flops_per_s"]
                                                   / ceil[t["matmul_dtype"]]["flops_per_s"])
    res["load_average_at_end"] = list(os.getloadavg())
    res["validity"] = quiet_check(res["machine"]["load_average_at_start"],
                                  res["machine"]["affinity_cores"] or res["machine"]["logical_cores"],
                                  res["load_average_at_end"])
    if isinstance(res.get("train_conv3"), dict):
        res["targets"] = targets(res["train_conv3"], res.get("kernels"),
                                 f"{members} x conv3, mnist, batch {batch}"
                                 + (" (quick: not the target setting)" if quick else ""),
                                 res["validity"], ceil)
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

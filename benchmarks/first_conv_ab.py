"""First convolution (1 or 3 input channels) A/B, issue 26: oneDNN Conv2D vs 9 shifted slices
stacked into patches and one MatMul (im2col by slicing; every op linear, so double backprop stays
cheap), interleaved in one process. Figures, not a test.

    python -m benchmarks.first_conv_ab [--reps=5] [--kernels_only] [--step_only]
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.first_conv_ab ...

1. kernels: conv1 at the step's shape (B = 128, 5 members) forward + dX + dW, both ways.
2. step: the float32 Conv-3 x 5 plain and GAL train steps with the members' first layer as is (A)
   and with its ``convolution_op`` replaced by the slicing path (B), same weights, interleaved;
   first the loss / GAL / parameter gradients of A and B are compared (float32 round-off).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

p = argparse.ArgumentParser()
p.add_argument("--reps", type=int, default=5)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--members", type=int, default=5)
p.add_argument("--kernels_only", action="store_true")
p.add_argument("--step_only", action="store_true")
p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"))
args = p.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
from benchmarks import bench  # noqa: E402


def conv_by_slices(x, kernel):
    """'valid', stride 1 conv as im2col by slicing + one MatMul: x [B,H,W,C], kernel [kh,kw,C,F]."""
    kh, kw, c, f = kernel.shape
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    patches = tf.concat([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
    y = tf.linalg.matmul(tf.reshape(patches, [-1, kh * kw * c]), tf.reshape(kernel, [kh * kw * c, f]))
    return tf.reshape(y, [-1, h, w, f])


def t(fn):
    s = time.perf_counter()
    bench._sync(fn())
    return time.perf_counter() - s


def kernels():
    for shape, cout in (((28, 28, 1), 32), ((32, 32, 3), 32)):
        xs = [tf.random.stateless_uniform((args.batch,) + shape, [1, j]) for j in range(args.members)]
        ws = [tf.random.stateless_uniform((3, 3, shape[2], cout), [2, j], -0.1, 0.1) for j in range(args.members)]
        out_shape = (args.batch, shape[0] - 2, shape[1] - 2, cout)
        dys = [tf.random.stateless_uniform(out_shape, [3, j]) for j in range(args.members)]
        fns = {}
        for name, op in (("conv2d", lambda x, w: tf.nn.conv2d(x, w, 1, "VALID")), ("slices_matmul", conv_by_slices)):
            @tf.function
            def f(op=op):
                tot = 0.0
                for x, w, dy in zip(xs, ws, dys):
                    with tf.GradientTape() as tape:
                        tape.watch([x, w])
                        y = op(x, w)
                    dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
                    tot += tf.reduce_sum(y[:1]) + tf.reduce_sum(dx[:1]) + tf.reduce_sum(dw)
                return tot
            fns[name] = f
        a, b = fns["conv2d"](), fns["slices_matmul"]()
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4)
        times = {n: [] for n in fns}
        for i in range(args.reps + 1):
            for n in (list(fns) if i % 2 else list(fns)[::-1]):
                dt = t(fns[n])
                if i:
                    times[n].append(dt)
        fl = 3 * 2 * (shape[0] - 2) * (shape[1] - 2) * 9 * shape[2] * cout * args.batch * args.members
        med = {n: statistics.median(v) for n, v in times.items()}
        print(f"conv1 {shape} -> {cout}: " + ", ".join(f"{n} {med[n]*1e3:.1f} ms ({fl / med[n] / 1e9:.1f} GFLOP/s)"
                                                      for n in med)
              + f"; speed-up {med['conv2d'] / med['slices_matmul']:.2f}x; load {os.getloadavg()[0]:.1f}", flush=True)


def patch_first_conv(ensemble):
    import keras

    for m in ensemble.members:
        layer = next(l for l in m.layers if isinstance(l, keras.layers.Conv2D))
        layer.convolution_op = types.MethodType(lambda self, x, k: conv_by_slices(x, k), layer)


def step():
    from tf_divtrain import training

    res = {}
    for key, mode in (("plain", "baseline"), ("gal", "div")):
        b, shape = bench.real_batches("mnist", args.data_dir, args.batch, training.MODES[mode], 2)
        tA, _ = bench.make_trainer("float32", shape, dataset="mnist", model="conv3", ensemble_size=args.members,
                                   mode=mode, batch_size=args.batch, data_dir=args.data_dir)
        tB, _ = bench.make_trainer("float32", shape, dataset="mnist", model="conv3", ensemble_size=args.members,
                                   mode=mode, batch_size=args.batch, data_dir=args.data_dir)
        patch_first_conv(tB.ensemble)
        # numerics: same weights -> same objective and parameter gradients (float32 round-off)
        x, y = b[0]
        va, vb = tA.ensemble.trainable_variables, tB.ensemble.trainable_variables
        for a_, b_ in zip(va, vb):
            np.testing.assert_array_equal(a_.numpy(), b_.numpy())

        def grads(tr):
            @tf.function
            def g():
                with tf.GradientTape() as tape:
                    out = training.per_example_objective(tr.ensemble.members, x, y, mode, 0.5)
                    loss = tf.reduce_mean(out["loss"])
                return loss, tape.gradient(loss, tr.ensemble.trainable_variables)
            return g()
        la, ga = grads(tA)
        lb, gb = grads(tB)
        errs = [float(np.linalg.norm(p_.numpy() - q.numpy()) / (np.linalg.norm(p_.numpy()) + 1e-12))
                for p_, q in zip(ga, gb)]
        print(f"{key}: loss A {float(la):.6f} B {float(lb):.6f}; max rel L2 err of parameter gradients "
              f"{max(errs):.2e}", flush=True)
        res[f"{key}_A"] = (lambda i, tr=tA, b=b: tr.train_step(*b[i % 2]))
        res[f"{key}_B"] = (lambda i, tr=tB, b=b: tr.train_step(*b[i % 2]))
    names = list(res)
    for n in names:
        t(lambda: res[n](0))
    times = {n: [] for n in names}
    for i in range(args.reps + 1):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            dt = t(lambda: res[n](i + 1))
            if i:
                times[n].append(dt)
        print(f"  rep {i}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names if times[n])
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    for key in ("plain", "gal"):
        a, b = times[f"{key}_A"], times[f"{key}_B"]
        print(f"{key}: A (conv2d) {statistics.median(a):.3f} s, B (slices+matmul) {statistics.median(b):.3f} s, "
              f"speed-up {statistics.median(a) / statistics.median(b):.3f}x (paired "
              f"{statistics.median([x / y for x, y in zip(a, b)]):.3f}x)", flush=True)


print(f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}, load {os.getloadavg()}")
if not args.step_only:
    kernels()
if not args.kernels_only:
    step()
print(f"load at end {os.getloadavg()}")

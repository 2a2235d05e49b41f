"""Op-by-op profile of the Conv-3 x N plain and GAL train steps, ours (TF) and PyTorch's (issue 26).

    python -m benchmarks.profile_ops [--frameworks=tf,torch] [--modes=plain,gal] [--batch=128]
                                     [--members=5] [--steps=2] [--torch_threads=1] [--out=FILE.json]
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile_ops ...   # emulate an AVX2-only CPU's kernels

Figures, not a test. TF: the profiler's host XPlane (``tf.profiler.experimental``), self time per
op type summed over the executor threads (so the total can exceed wall time), per step. PyTorch:
``torch.profiler`` (CPU activity), ``self_cpu_time_total`` per op name, per step. Both on the same
real MNIST batch (aug + noise), float32, after two warm-up steps. Op names differ between the
frameworks; the "class" column maps both onto conv fwd / conv dX / conv dW / matmul / pooling /
activation / elementwise+other so they can be compared side by side.

The machine's load average is printed before and after: on a loaded machine the per-op times
are inflated alike, the *shares* are what to read.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--frameworks", default="tf,torch")
p.add_argument("--modes", default="plain,gal")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--members", type=int, default=5)
p.add_argument("--steps", type=int, default=2)
p.add_argument("--torch_threads", type=int, default=1)
p.add_argument("--top", type=int, default=16)
p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"))
p.add_argument("--out", default="")
args = p.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from tf_divtrain import data as data_lib  # noqa: E402
from tf_divtrain import training  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def op_class(name: str) -> str:
    n = name.lower()
    if "conv" in n or "mkldnn_convolution" in n:
        if "backpropinput" in n or "backward_input" in n:
            return "conv dX"
        if "backpropfilter" in n or "backward_weight" in n:
            return "conv dW"
        if "backward" in n:
            return "conv backward (dX+dW)"
        return "conv fwd"
    if any(k in n for k in ("matmul", "addmm", "::mm", "aten::mm", "bmm", "linear", "gemm")):
        return "matmul"
    if "pool" in n or "max_pool" in n:
        return "pooling"
    if "leaky" in n or "relu" in n:
        return "activation"
    return "elementwise/other"


def batch():
    ds = data_lib.load_dataset("mnist", args.data_dir, train_size=args.batch * 2)
    x, y = next(iter(data_lib.train_stream(ds.x_train, ds.y_train, "mnist", args.batch,
                                           training.MODES["div"], None, 0)))
    return x, y, ds.input_shape


def profile_tf(mode: str, x, y, shape):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    cfg = training.TrainConfig(dataset="mnist", model="conv3", ensemble_size=args.members,
                               mode={"plain": "baseline", "gal": "div"}[mode], batch_size=args.batch)
    tr = training.Trainer(cfg, shape, 10)
    for _ in range(2):
        tr.train_step(x, y)["loss"].numpy()
    t = time.perf_counter()
    for _ in range(args.steps):
        tr.train_step(x, y)["loss"].numpy()
    wall = (time.perf_counter() - t) / args.steps
    logdir = tempfile.mkdtemp(prefix="tfdt_prof_")
    tf.profiler.experimental.start(logdir)
    for _ in range(args.steps):
        tr.train_step(x, y)["loss"].numpy()
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        md = plane.event_metadata
        for line in plane.lines:
            if "TraceMe" in line.name or "Python" in line.name:
                continue
            for ev in line.events:
                name = md[ev.metadata_id].name
                if ":" not in name:
                    continue
                _, op_type = name.rsplit(":", 1)
                if op_type in ("Process", "Run") or "__inference" in name:
                    continue
                totals[op_type] += ev.duration_ps / 1e12 / args.steps
                counts[op_type] += 1
    return wall, totals, {k: v // args.steps for k, v in counts.items()}


def profile_torch(mode: str, x, y, shape):
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks import torch_gal as tg

    torch.set_num_threads(args.torch_threads)
    members = tg.build_ensemble(args.members, shape, 10, seed=0)
    step = tg.TorchStep(members, mode, "fp32")
    tx, ty = tg.to_torch_images(x.numpy()), torch.from_numpy(y.numpy()).long()
    for _ in range(2):
        step(tx, ty)
    t = time.perf_counter()
    for _ in range(args.steps):
        step(tx, ty)
    wall = (time.perf_counter() - t) / args.steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(tx, ty)
    totals, counts = collections.Counter(), collections.Counter()
    for ev in prof.key_averages():
        if ev.self_cpu_time_total <= 0:
            continue
        totals[ev.key] += ev.self_cpu_time_total / 1e6 / args.steps
        counts[ev.key] += ev.count // args.steps
    return wall, totals, counts


def report(fw, mode, wall, totals, counts):
    total = sum(totals.values())
    classes = collections.Counter()
    for k, v in totals.items():
        classes[op_class(k)] += v
    print(f"\n{fw} {mode}: wall {wall:.3f} s/step, op self time {total:.3f} s/step "
          f"(summed over threads); load {os.getloadavg()[0]:.2f}")
    for c, v in classes.most_common():
        print(f"  [{c:22s}] {v:8.3f} s  {100 * v / total:5.1f} %")
    for op, v in totals.most_common(args.top):
        print(f"    {op:44s} {v:8.3f} s  {100 * v / total:5.1f} %  n={counts[op]}  ({op_class(op)})")
    return {"wall_s": wall, "op_total_s": total, "classes": dict(classes),
            "ops": {k: {"s": v, "n": counts[k], "class": op_class(k)} for k, v in totals.items()}}


def main():
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    load0 = os.getloadavg()
    print(f"ONEDNN_MAX_CPU_ISA={isa}; load at start {load0}; TF {tf.__version__}")
    x, y, shape = batch()
    out = {"isa": isa, "load_start": list(load0), "batch": args.batch, "members": args.members,
           "torch_threads": args.torch_threads, "runs": {}}
    for fw in [f.strip() for f in args.frameworks.split(",") if f.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            wall, totals, counts = (profile_tf if fw == "tf" else profile_torch)(mode, x, y, shape)
            out["runs"][f"{fw}_{mode}"] = report(fw, mode, wall, totals, counts)
    out["load_end"] = list(os.getloadavg())
    print(f"load at end {out['load_end']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

"""Interleaved A/B of PyTorch reference steps (``torch_gal.py``) in ONE process.

    python -m benchmarks.torch_explore [--batch=128] [--members=5] [--reps=5] [--threads=0,1]
        [--variants=contiguous:fp32:gal,channels_last:fp32:gal,...]

Each variant is layout:precision:mode (layout contiguous|channels_last, precision fp32|bf16,
mode gal|plain), run once per thread count in ``--threads`` (0 = PyTorch default); every
repetition runs one step of each (variant, threads) in turn, order rotated. Prints medians. Used
for the layout choice in history/FINDINGS.md (issue 10).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from benchmarks import torch_gal as tg  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=128)
p.add_argument("--members", type=int, default=5)
p.add_argument("--reps", type=int, default=5)
p.add_argument("--threads", default="0,1")
p.add_argument("--variants", default="contiguous:fp32:gal,channels_last:fp32:gal,"
                                     "contiguous:bf16:gal,channels_last:bf16:gal")
args = p.parse_args()
default_threads = torch.get_num_threads()
rng = np.random.default_rng(0)
x = rng.uniform(size=(args.batch, 28, 28, 1)).astype(np.float32)
y = torch.from_numpy(rng.integers(0, 10, size=args.batch))
runs = {}
for v in args.variants.split(","):
    layout, prec, mode = v.split(":")
    for nt in (int(t) or default_threads for t in args.threads.split(",")):
        step = tg.TorchStep(tg.build_ensemble(args.members, (28, 28, 1), 10, 0, layout), mode, prec)
        runs[f"{v}:t{nt}"] = (step, tg.to_torch_images(x, layout), nt)
times = {k: [] for k in runs}
names = list(runs)
for i in range(args.reps + 1):  # the first round is warm-up (primitive creation)
    for k in names[i % len(names):] + names[:i % len(names)]:
        step, xt, nt = runs[k]
        torch.set_num_threads(nt)
        t = time.perf_counter()
        step(xt, y)
        if i:
            times[k].append(time.perf_counter() - t)
print(f"load average {os.getloadavg()}, batch {args.batch}, members {args.members}")
for k in names:
    print(f"{k:32s} median {statistics.median(times[k]):.3f} s  "
          f"[{', '.join(f'{t:.2f}' for t in times[k])}]")

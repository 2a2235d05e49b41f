"""Where does a train step's time go? Per-op-type totals from the TF profiler (host XPlane).

    python benchmarks/prototypes/profile_step.py [--mode=div] [--batch=128] [--members=5] [--steps=2]

Prints the top op types by total self time (summed over the inter/intra-op threads, so the total
can exceed wall time) for ``--steps`` profiled steps after warm-up.
"""
import argparse
import collections
import glob
import os
import tempfile

p = argparse.ArgumentParser()
p.add_argument("--mode", default="div")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--members", type=int, default=5)
p.add_argument("--steps", type=int, default=2)
p.add_argument("--model", default="conv3")
p.add_argument("--dataset", default="mnist")
p.add_argument("--top", type=int, default=18)
p.add_argument("--by_name", default="", help="also list single ops whose type contains this")
args = p.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from tf_divtrain import data as data_lib  # noqa: E402
from tf_divtrain import training  # noqa: E402

cfg = training.TrainConfig(dataset=args.dataset, model=args.model, ensemble_size=args.members,
                           mode=args.mode, batch_size=args.batch)
ds = data_lib.load_dataset(args.dataset, None, train_size=args.batch * 2)
x, y = next(iter(data_lib.train_stream(ds.x_train, ds.y_train, args.dataset, args.batch,
                                       training.MODES[args.mode], None, 0)))
tr = training.Trainer(cfg, ds.input_shape, 10)
for _ in range(2):
    tr.train_step(x, y)["loss"].numpy()
logdir = tempfile.mkdtemp(prefix="tfdt_prof_")
tf.profiler.experimental.start(logdir)
for _ in range(args.steps):
    tr.train_step(x, y)["loss"].numpy()
tf.profiler.experimental.stop()
path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
space = xplane_pb2.XSpace()
with open(path, "rb") as f:
    space.ParseFromString(f.read())
totals = collections.Counter()
counts = collections.Counter()
names = collections.Counter()
WRAPPERS = ("Process", "Run")
for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
        continue
    md = plane.event_metadata
    for line in plane.lines:
        if "TraceMe" in line.name or "Python" in line.name:
            continue
        for ev in line.events:
            name = md[ev.metadata_id].name
            if ":" not in name:  # TF op events are "op_name:OpType"
                continue
            op_name, op_type = name.rsplit(":", 1)
            if op_type in WRAPPERS or op_type.startswith("__inference"):
                continue
            if args.by_name and args.by_name in op_type:
                names[f"{op_type} {op_name}"] += ev.duration_ps / 1e12
            totals[op_type] += ev.duration_ps / 1e12
            counts[op_type] += 1
total = sum(totals.values())
print(f"{args.mode} {args.members} x {args.model} batch {args.batch}: {total / args.steps:.3f} s of op "
      f"time per step (all threads)")
for op, t in totals.most_common(args.top):
    print(f"  {op:32s} {t / args.steps:8.3f} s/step  {100 * t / total:5.1f} %  n={counts[op] // args.steps}")
for n, t in sorted(names.items(), key=lambda kv: -kv[1])[:40]:
    print(f"    {t / args.steps:8.3f} s/step  {n}")

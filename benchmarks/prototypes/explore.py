"""Interleaved A/B timing of train-step variants in ONE process (robust to background load).

    python -m benchmarks.prototypes.explore --variants=plain,gal,gal_stacked [--xla_variants=...] \
        [--batch=128] [--members=5] [--reps=6] [--dataset=mnist --model=conv3]

Variants: plain (baseline mode), gal (div mode, gal.member_input_gradients), gal_stacked (div mode,
benchmarks/fast_gal.py: members as one grouped-conv network), gal_sep (div mode, one inner tape per
member); suffix ``_noremap`` = grappler remapper off for that variant; suffix ``_xla`` = TrainConfig(jit_compile=True). Each rep runs one step
of every variant in turn (order rotated per rep); prints medians and ratios to the first variant.
"""
import argparse
import os
import statistics
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--variants", default="plain,gal,gal_stacked")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--members", type=int, default=5)
p.add_argument("--reps", type=int, default=6)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--dataset", default="mnist")
p.add_argument("--model", default="conv3")
p.add_argument("--intra", type=int, default=0)
p.add_argument("--inter", type=int, default=0)
p.add_argument("--no_remap", action="store_true")
args = p.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

if args.intra or args.inter:
    tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter)
if args.no_remap:
    tf.config.optimizer.set_experimental_options({"remapping": False})
from benchmarks.prototypes import fast_gal  # noqa: E402
from tf_divtrain import data as data_lib  # noqa: E402
from tf_divtrain import training  # noqa: E402


def _objective(per_example, mode):
    """fast_gal's (members, x, y, mode, lambda, training) functions as a step objective."""
    return lambda members, x, y, training=True: per_example(members, x, y, mode, 0.5, training)


def make(variant):
    base = variant.replace("_xla", "").replace("_noremap", "")
    mode = "baseline" if base == "plain" else "div"
    cfg = training.TrainConfig(dataset=args.dataset, model=args.model, ensemble_size=args.members,
                               mode=mode, batch_size=args.batch, jit_compile=variant.endswith("_xla"))
    ds = data_lib.load_dataset(args.dataset, None, train_size=args.batch * 4)
    stream = data_lib.train_stream(ds.x_train, ds.y_train, args.dataset, args.batch,
                                   training.MODES[mode], None, 0)
    batches = [b for b in stream.take(3)]
    per_example = {"gal_stacked": fast_gal.per_example_objective,
                   "gal_sep": fast_gal.separate_per_example_objective}.get(base)
    objective = _objective(per_example, mode) if per_example else None  # the step's injection point
    return training.Trainer(cfg, ds.input_shape, 10, objective=objective), batches


variants = args.variants.split(",")
tr = {v: make(v) for v in variants}
times = {v: [] for v in variants}
for v in variants:
    # Grappler options are read when a function is first instantiated, so a per-variant toggle
    # around the first call gives a per-variant setting inside one process.
    tf.config.optimizer.set_experimental_options({"remapping": not v.endswith("_noremap")
                                                  and not args.no_remap})
    t = time.perf_counter(); tr[v][0].train_step(*tr[v][1][0])["loss"].numpy()
    print(f"{v}: first call {time.perf_counter() - t:.2f}s", flush=True)
for i in range(args.warmup + args.reps):
    order = variants[i % len(variants):] + variants[:i % len(variants)]
    for v in order:
        x, y = tr[v][1][(i + 1) % 3]
        t = time.perf_counter(); tr[v][0].train_step(x, y)["loss"].numpy()
        if i >= args.warmup:
            times[v].append(time.perf_counter() - t)
tf.config.optimizer.set_experimental_options({"remapping": not args.no_remap})
ref = statistics.median(times[variants[0]])
print(f"load {os.getloadavg()} batch {args.batch} members {args.members} {args.model} "
      f"intra/inter {args.intra}/{args.inter} no_remap {args.no_remap}")
for v in variants:
    m = statistics.median(times[v])
    paired = statistics.median([a / b for a, b in zip(times[v], times[variants[0]])])
    print(f"  {v:18s} median {m:.3f}s  min {min(times[v]):.3f}s  ratio/{variants[0]} {m / ref:.2f} "
          f"(paired {paired:.2f})  {args.batch / m:.1f} img/s")

"""A/B of process-level levers for our float32 Conv-3 x 5 steps (issue 26): env vars and thread
pools, which must be set before TensorFlow initialises, so each variant runs in its own process
and the processes alternate A, B, A, B, ... (``--rounds``), each timing plain and GAL steps
interleaved. Ratios are per round (adjacent processes), then the median over rounds.

    python -m benchmarks.ab_levers --variants='default=;noonednn=TF_ENABLE_ONEDNN_OPTS=0' --rounds=3
    python -m benchmarks.ab_levers --variants='default=;t12=--intra=1 --inter=2' --reps=4
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.ab_levers ...    # emulated AVX2-only oneDNN kernels

A variant is ``name=SPEC``; SPEC is space-separated ``KEY=VALUE`` env settings and ``--intra=N`` /
``--inter=N`` flags. The load average is printed with every figure. Figures, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(args):
    if args.intra or args.inter:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    from benchmarks import bench

    out = {}
    batches = {}
    runners = {}
    for key, mode in (("plain", "baseline"), ("gal", "div")):
        b, shape = bench.real_batches("mnist", args.data_dir, args.batch, bench.training.MODES[mode], 2)
        trainer, _ = bench.make_trainer("float32", shape, dataset="mnist", model="conv3",
                                        ensemble_size=args.members, mode=mode, batch_size=args.batch,
                                        data_dir=args.data_dir)
        batches[key] = b
        runners[key] = (lambda i, t=trainer, b=b: t.train_step(*b[i % 2]))
    for n in runners:
        bench.timed(lambda: runners[n](0))
    times = {n: [] for n in runners}
    load0 = os.getloadavg()[0]
    for i in range(args.warmup + args.reps):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]
        for n in order:
            t = bench.timed(lambda: runners[n](i + 1))
            if i >= args.warmup:
                times[n].append(t)
    for n in runners:
        out[n] = statistics.median(times[n])
    out["load"] = [load0, os.getloadavg()[0]]
    print("RESULT " + json.dumps(out), flush=True)


def parse_spec(spec):
    env, flags = {}, []
    for tok in spec.split():
        if tok.startswith("--"):
            flags.append(tok)
        elif "=" in tok:
            k, v = tok.split("=", 1)
            env[k] = v
    return env, flags


def driver(args):
    variants = []
    for part in args.variants.split(";"):
        if part.strip():
            name, spec = part.split("=", 1) if "=" in part else (part, "")
            variants.append((name.strip(), *parse_spec(spec)))
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"ONEDNN_MAX_CPU_ISA={isa}; load {os.getloadavg()}", flush=True)
    res = {n: [] for n, _, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, env, flags in order:
            cmd = [sys.executable, "-m", "benchmarks.ab_levers", "--child", f"--reps={args.reps}",
                   f"--warmup={args.warmup}", f"--batch={args.batch}", f"--members={args.members}",
                   f"--data_dir={args.data_dir}", *flags]
            t = time.time()
            p = subprocess.run(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **env),
                               capture_output=True, text=True, cwd=os.path.dirname(HERE))
            line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            if not line:
                print(p.stdout[-2000:], p.stderr[-3000:])
                raise SystemExit(f"variant {name} failed")
            d = json.loads(line[0][7:])
            res[name].append(d)
            print(f"round {r + 1} {name:12s} plain {d['plain']:.3f} s  gal {d['gal']:.3f} s  "
                  f"load {d['load'][0]:.1f}->{d['load'][1]:.1f}  ({time.time() - t:.0f} s)", flush=True)
    base = variants[0][0]
    summary = {"isa": isa, "variants": res, "ratios": {}}
    for name, _, _ in variants[1:]:
        for mode in ("plain", "gal"):
            rat = [b[mode] / a[mode] for a, b in zip(res[name], res[base])]
            summary["ratios"][f"{name}/{base} {mode} speed"] = {"median": statistics.median(rat), "per_round": rat}
            print(f"{name} vs {base}, {mode}: speed ratio (time {base} / time {name}) median "
                  f"{statistics.median(rat):.3f}, per round {', '.join(f'{x:.3f}' for x in rat)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--variants", default="default=;t12=--intra=1 --inter=2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--intra", type=int, default=0)
    p.add_argument("--inter", type=int, default=0)
    p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"))
    p.add_argument("--out", default="")
    args = p.parse_args()
    (child if args.child else driver)(args)


if __name__ == "__main__":
    main()

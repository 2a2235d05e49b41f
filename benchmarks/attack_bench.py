"""Attack crafting side by side, ours vs PyTorch (issue 26): prints figures, writes JSON + Markdown.

    python -m benchmarks.attack_bench [--quick] [--attacks=ifgsm,pgd_cw]
        [--surrogates=conv3_mnist,conv4_cifar10] [--members=5] [--batches=64,128,256]
        [--torch_batches=64,128,256] [--torch_threads=1,2] [--ours=keras,export] [--rounds=3]
        [--out=benchmarks/attack_results.json] [--md=benchmarks/ATTACKS.md]

Figures, not a test. For every surrogate (N untrained members, the same weights on both sides --
the Keras weights are copied into the PyTorch members, so both sides craft against the same
function; speed does not depend on training) and attack (I-FGSM 10 steps of eps/10; PGD-CW 30 steps
of 2.5 eps / 30 on the CW hinge, kappa 50, random start):

* ours: ``tf_divtrain.attacks.make_attack(name, surrogate, eps)`` -- one compiled ``Attack`` per
  (attack, surrogate, eps), batch dimension ``None``, as ``evaluation.craft_cached`` builds it --
  with the surrogate as a Keras ``models.Ensemble`` (``keras``) and/or as the evaluation loads it,
  an exported SavedModel (``export.load_ensemble``, ``export``);
* PyTorch: ``benchmarks/torch_attacks.py`` -- the same attack written the peers' way
  (``torch.autograd.grad`` of the summed per-example mean member loss w.r.t. the input, frozen
  members in ``eval()``), float32, NCHW contiguous, at each ``--torch_threads``.

Batch size is a free parameter of each side: every (side, batch[, threads]) variant is timed, and
each side's *best* images/s is compared. All variants of one (surrogate, attack) are interleaved in
one process (one batch of each per round, order rotated per round) so background load hits all
alike; the first call of each variant (tracing / primitive creation) is reported apart. Load
average and CPU ISA (AVX2 / AVX-512 / AVX512_BF16 / AMX, ``ONEDNN_MAX_CPU_ISA``) are recorded; the
comparison is marked NOT valid when the load at the start exceeds the core count.

Target (issue 26; reported, not enforced): ours best >= 1.3 x PyTorch best, per surrogate and attack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SURROGATES = {"conv3_mnist": ("conv3", "mnist", 0.3), "conv4_cifar10": ("conv4", "cifar10", 0.03)}
NB_ITER = {"ifgsm": 10, "pgd_cw": 30}
TARGET = 1.3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="CI smoke run: 2 members, batch 8, 1 round")
    p.add_argument("--data_dir", default=os.environ.get("TF_DIVTRAIN_DATA"))
    p.add_argument("--attacks", default="ifgsm,pgd_cw")
    p.add_argument("--surrogates", default="conv3_mnist,conv4_cifar10")
    p.add_argument("--members", type=int, default=0, help="0 = 5 (quick: 2)")
    p.add_argument("--batches", default="", help="our batch sizes (default 64,128,256; quick: 8)")
    p.add_argument("--torch_batches", default="", help="PyTorch batch sizes (default as --batches)")
    p.add_argument("--torch_threads", default="", help="default: 1 and the core count")
    p.add_argument("--ours", default="keras,export",
                   help="our surrogate kinds: keras (models.Ensemble), export (export.load_ensemble)")
    p.add_argument("--rounds", type=int, default=0, help="timed rounds (0 = 3, quick: 1)")
    p.add_argument("--torch", default="1", help="0 = ours only")
    p.add_argument("--out", default=os.path.join(HERE, "attack_results.json"))
    p.add_argument("--md", default=os.path.join(HERE, "ATTACKS.md"))
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_divtrain import attacks as attacks_lib  # noqa: E402
from tf_divtrain import data as data_lib  # noqa: E402
from tf_divtrain import export as export_lib  # noqa: E402
from tf_divtrain import models as models_lib  # noqa: E402

from benchmarks import bench  # noqa: E402  (cpu_isa, quiet_check, model FLOPs)


def _ints(s, default):
    return [int(v) for v in str(s).split(",") if v.strip()] or list(default)


def torch_side(ens, model_name, shape, threads):
    """PyTorch members with ``ens``' weights (or the reason torch is unavailable)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return None, f"unavailable (torch not installed: {e})"
    from benchmarks import torch_attacks, torch_gal

    members = torch_gal.build_ensemble(len(ens.members), shape, 10, seed=0, model=model_name)
    for tm, km in zip(members, ens.members):
        torch_gal.load_keras_weights(tm, km)
    return torch_attacks.freeze(members), None


def bench_one(surrogate: str, attack: str, members: int, batches, torch_batches, threads, kinds,
              rounds: int, data_dir, use_torch: bool) -> dict:
    model_name, dataset, eps = SURROGATES[surrogate]
    nb_iter = NB_ITER[attack]
    n_imgs = max(batches + (torch_batches if use_torch else []))
    ds = data_lib.load_dataset(dataset, data_dir, train_size=16, test_size=n_imgs)
    shape = ds.input_shape
    x_all, y_all = ds.x_test[:n_imgs].astype(np.float32), ds.y_test[:n_imgs].astype(np.int64)
    ens = models_lib.build_ensemble(model_name, shape, 10, members, seed=0)
    fwd = bench.ensemble_forward_flops(ens)
    runners, meta, tmp = {}, {}, None
    for kind in kinds:
        if kind == "keras":
            sur = ens
        elif kind == "export":
            tmp = tmp or tempfile.mkdtemp(prefix="tfdt_attack_bench_")
            path = os.path.join(tmp, f"{surrogate}_saved_model")
            export_lib.export_ensemble(ens, path, {"dataset": dataset, "input_shape": list(shape),
                                                   "num_classes": 10, "models": [model_name] * members,
                                                   "mode": "baseline", "seed": 0}, overwrite=True)
            sur = export_lib.load_ensemble(path)
        else:
            raise SystemExit(f"error: unknown --ours kind {kind!r}; valid: keras, export")
        atk = attacks_lib.make_attack(attack, sur, eps, nb_iter=nb_iter)  # one trace, any batch
        for b in batches:
            xb, yb = tf.constant(x_all[:b]), tf.constant(y_all[:b])
            name = f"ours_{kind}_b{b}"
            runners[name] = (lambda r, a=atk, xb=xb, yb=yb: a(xb, yb, seed=[0, r]).numpy())
            meta[name] = {"side": "ours", "kind": kind, "batch": b, "attack_obj": atk}
    why = None
    if use_torch:
        tmembers, why = torch_side(ens, model_name, shape, threads)
        if tmembers is not None:
            import torch

            from benchmarks import torch_attacks, torch_gal

            fn = torch_attacks.ATTACKS[attack]
            for nt in threads:
                for b in torch_batches:
                    xb = torch_gal.to_torch_images(x_all[:b])
                    yb = torch.from_numpy(y_all[:b])
                    name = f"torch_t{nt}_b{b}"

                    def run(r, xb=xb, yb=yb, nt=nt):
                        torch.set_num_threads(nt)
                        kw = {"generator": torch.Generator().manual_seed(r)} if attack == "pgd_cw" else {}
                        return fn(tmembers, xb, yb, eps, nb_iter, **kw).numpy()

                    runners[name] = run
                    meta[name] = {"side": "torch", "threads": nt, "batch": b}
    names = list(runners)
    first = {}
    for n in names:
        t = time.perf_counter()
        runners[n](0)
        first[n] = time.perf_counter() - t
    times = {n: [] for n in names}
    load0 = list(os.getloadavg())
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = time.perf_counter()
            runners[n](r + 1)
            times[n].append(time.perf_counter() - t)
        print(f"  {surrogate} {attack}: round {r + 1}/{rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
    variants = {}
    for n in names:
        b = meta[n]["batch"]
        med = float(statistics.median(times[n]))
        v = {k: val for k, val in meta[n].items() if k != "attack_obj"}
        v.update({"first_call_s": first[n], "median_s": med, "images_per_s": b / med,
                  "achieved_flops_per_s": 2.0 * fwd * b * nb_iter / med, "times_s": times[n]})
        if "attack_obj" in meta[n]:
            v["tracing_count"] = meta[n]["attack_obj"].tracing_count
        variants[n] = v
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)

    def best(side):
        c = [n for n in names if meta[n]["side"] == side]
        return max(c, key=lambda n: variants[n]["images_per_s"]) if c else None

    bo, bt = best("ours"), best("torch")
    out = {"surrogate": surrogate, "model": model_name, "dataset": dataset, "members": members,
           "attack": attack, "nb_iter": nb_iter, "eps": eps, "flops_per_image": 2.0 * fwd * nb_iter,
           "variants": variants, "load_start": load0, "load_end": list(os.getloadavg()),
           "best_ours": bo, "best_torch": bt, "torch": why}
    if bo and bt:
        out["ours_over_torch"] = variants[bo]["images_per_s"] / variants[bt]["images_per_s"]
        out["paired"] = float(statistics.median(
            [(variants[bo]["batch"] / a) / (variants[bt]["batch"] / b)
             for a, b in zip(times[bo], times[bt])]))
    return out


def markdown(res) -> str:
    isa, v = res["isa"], res["validity"]
    lines = ["# Attack crafting, ours vs PyTorch (issue 26)", "",
             f"{res['timestamp_utc']} UTC -- {res['cpu_model']}, {res['cores']} cores, TF {res['tensorflow']}, "
             f"PyTorch {res['torch']}. CPU ISA: **{isa['label']}**. Load average at start "
             f"{', '.join(f'{x:.2f}' for x in res['load_start'])}, at end "
             f"{', '.join(f'{x:.2f}' for x in res['load_end'])}.", "",
             ("**Comparison valid**: " if v["valid"] else "**WARNING -- comparison NOT valid**: ")
             + v["reason"] + (f"; {v['warning']}" if v.get("warning") else "") + ".", "",
             "Settings: " + ", ".join(f"{k}={val}" for k, val in res["settings"].items()), "",
             "Images/s = batch / median seconds per batch over the rounds (interleaved); first call "
             "(trace / primitive setup) apart. Each side's best variant is compared.", ""]
    for r in res["runs"]:
        lines += [f"## {r['attack']} ({r['nb_iter']} iters, eps {r['eps']}) on {r['members']} x "
                  f"{r['model']} ({r['dataset']})", "",
                  f"Load at start {r['load_start'][0]:.2f}, at end {r['load_end'][0]:.2f}.", "",
                  "| variant | batch | threads | first call s | median s / batch | images/s | GFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
        for n, t in r["variants"].items():
            mark = " **(best)**" if n in (r["best_ours"], r["best_torch"]) else ""
            lines.append(f"| {n}{mark} | {t['batch']} | {t.get('threads', 'TF default')} | "
                         f"{t['first_call_s']:.2f} | {t['median_s']:.3f} | {t['images_per_s']:.1f} | "
                         f"{t['achieved_flops_per_s'] / 1e9:.1f} |")
        lines.append("")
        if "ours_over_torch" in r:
            ok = r["ours_over_torch"] >= TARGET
            lines.append(f"- ours best / PyTorch best: **{r['ours_over_torch']:.2f}x** (paired "
                         f"{r['paired']:.2f}x; target >= {TARGET} -> "
                         f"**{'met' if ok else 'NOT met'}{'' if v['valid'] else ', but INVALID (load)'}**)")
        elif r.get("torch"):
            lines.append(f"- PyTorch: {r['torch']}")
        lines.append("")
    lines += [f"Total wall time {res['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def main(args) -> dict:
    t0 = time.time()
    quick = args.quick
    members = args.members or (2 if quick else 5)
    batches = _ints(args.batches, [8] if quick else [64, 128, 256])
    torch_batches = _ints(args.torch_batches, batches)
    threads = _ints(args.torch_threads, bench.default_torch_threads())
    rounds = args.rounds or (1 if quick else 3)
    kinds = [k.strip() for k in args.ours.split(",") if k.strip()]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    surrogates = [s.strip() for s in args.surrogates.split(",") if s.strip()]
    for a in attacks:
        if a not in NB_ITER:
            raise SystemExit(f"error: unknown attack {a!r}; valid: {', '.join(NB_ITER)}")
    for s in surrogates:
        if s not in SURROGATES:
            raise SystemExit(f"error: unknown surrogate {s!r}; valid: {', '.join(SURROGATES)}")
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    load0 = list(os.getloadavg())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {"timestamp_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "cpu_model": bench.machine_info()["cpu_model"], "cores": cores, "isa": bench.cpu_isa(),
           "tensorflow": tf.__version__, "torch": torch_version, "load_start": load0,
           "settings": {"quick": quick, "members": members, "batches": batches,
                        "torch_batches": torch_batches, "torch_threads": threads, "ours": kinds,
                        "rounds": rounds, "attacks": attacks, "surrogates": surrogates},
           "runs": []}
    for s in surrogates:
        for a in attacks:
            r = bench_one(s, a, members, batches, torch_batches, threads, kinds, rounds,
                          args.data_dir, args.torch != "0")
            res["runs"].append(r)
            msg = (f"{s} {a}: ours {r['best_ours']} "
                   f"{r['variants'][r['best_ours']]['images_per_s']:.1f} img/s")
            if r.get("best_torch"):
                msg += (f", torch {r['best_torch']} {r['variants'][r['best_torch']]['images_per_s']:.1f} "
                        f"img/s, ratio {r['ours_over_torch']:.2f}")
            print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)
    res["load_end"] = list(os.getloadavg())
    res["validity"] = bench.quiet_check(load0, cores, res["load_end"])
    res["wall_s"] = time.time() - t0
    for path, text in ((args.out, json.dumps(res, indent=1)), (args.md, markdown(res))):
        if path:
            with open(path, "w") as f:
                f.write(text + "\n")
    print(markdown(res))
    return res


if __name__ == "__main__":
    main(ARGS)

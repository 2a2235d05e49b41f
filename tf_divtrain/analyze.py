"""CLI: coherence histograms, GAAS, member transferability and a white-box check (issue 5).

Example::

    python -m tf_divtrain.analyze --dataset=cifar10 --num_examples=500 \\
        --ensembles=T_Base=runs/base,T_Div=runs/div --out_dir=runs/analysis

Writes ``<out_dir>/analysis.json`` (all numbers), ``coherence_hist.png``, ``gaas.png`` and
``transfer_<label>.png``; prints a summary. The library functions are in
:mod:`tf_divtrain.analysis`.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags, logging

from tf_divtrain import cli_flags

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS) -> None:
    """Defines the analyze flags in ``fv`` (called by ``run()``, not at import, so the CLIs can
    share one process)."""
    flags.DEFINE_string("ensembles", None, "Comma list LABEL=DIR; DIR = a training out_dir or a "
                        "saved_model dir (e.g. T_Base=runs/base,T_Div=runs/div).", flag_values=fv)
    cli_flags.define_dataset_flags(fv, default="mnist")
    flags.DEFINE_integer("num_examples", 500, "Test subset size (the first N test images).", flag_values=fv)
    flags.DEFINE_integer("gaas_num_examples", 0, "GAAS uses the first N of the test subset (0 = all).", flag_values=fv)
    flags.DEFINE_integer("transfer_num_examples", 0, "Transfer matrix (and, unless "
                         "--whitebox_num_examples is set, the white-box check) use the first N (0 = all).", flag_values=fv)
    flags.DEFINE_integer("whitebox_num_examples", 0, "White-box check uses the first N (0 = "
                         "--transfer_num_examples, or all).", flag_values=fv)
    flags.DEFINE_list("gaas_k", ["4", "16", "36", "64"], "GAAS orders k (regular Hadamard orders: "
                      "4, 16, 36, 64, 144, ...).", flag_values=fv)
    flags.DEFINE_list("gaas_eps", None, "GAAS epsilons; default 0.1,0.2,0.3 (MNIST-like), "
                      "0.03,0.06,0.09 (CIFAR-10).", flag_values=fv)
    flags.DEFINE_enum("gaas_blocks", "balanced", ["balanced", "contiguous"],
                      "How input dims are split into the k GAAS blocks (see analysis.block_assignment).", flag_values=fv)
    flags.DEFINE_integer("gaas_forward_images", 1024, "Perturbed GAAS images per forward pass "
                         "(memory; 0 = --batch_size). Larger passes are faster on a CPU; the "
                         "counts are those of one pass per example (tested; identical on 100 "
                         "CIFAR-10 test images).",
                         flag_values=fv)
    flags.DEFINE_float("transfer_eps", None, "Epsilon of the member-to-member PGD; default 0.3 "
                       "(MNIST-like) / 0.09 (CIFAR-10).", flag_values=fv)
    flags.DEFINE_integer("transfer_iters", 20, "PGD iterations for the transferability matrix.", flag_values=fv)
    flags.DEFINE_list("whitebox_eps", None, "White-box PGD epsilons; default 0.1,0.3 / 0.03,0.09.", flag_values=fv)
    flags.DEFINE_integer("whitebox_iters", 40, "White-box PGD iterations (step 2.5 eps / iters).", flag_values=fv)
    flags.DEFINE_list("analyses", ["coherence", "gaas", "transfer", "whitebox"],
                      "Subset of coherence,gaas,transfer,whitebox, plus autoattack (ART's APGD-CE + "
                      "APGD-DLR on the white-box subset; needs pip install -e '.[eval]').", flag_values=fv)
    flags.DEFINE_bool("coherence_margin", False, "Also the coherence of the gradients of each "
                      "member's logit margin z_y - max_{j!=y} z_j (robustness check of Fig 4: it "
                      "does not vanish for confident members).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 100, "Batch size of every forward/backward pass.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the PGD random starts.", flag_values=fv)
    cli_flags.define_precision_flag(fv, "The ensembles compute in it. Default float32: coherence and "
                                    "GAAS measure cosines near 0 and points near the decision boundary, "
                                    "which bfloat16's 8-bit mantissa would shift; reduced precision is "
                                    "for quick looks only.")
    flags.DEFINE_string("out_dir", "runs/analysis", "Where analysis.json and the PNGs go.", flag_values=fv)


def main(argv, fv=None):
    """Runs the analyses named by the flags in ``fv`` (default: the global FLAGS); returns 0 or 2."""
    del argv
    FLAGS = fv if fv is not None else globals()["FLAGS"]  # noqa: N806
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_divtrain import analysis
    from tf_divtrain import precision as precision_lib

    precision_lib.resolve(FLAGS.precision)  # warns if this machine emulates it
    if not FLAGS.ensembles:
        cli_flags.fail("--ensembles is required, e.g. --ensembles=T_Base=runs/base,T_Div=runs/div")
    try:
        cfg = analysis.AnalysisConfig(**{f.name: FLAGS[f.name].value
                                         for f in dataclasses.fields(analysis.AnalysisConfig)})
        report = analysis.run(dataclasses.replace(cfg, ensembles=analysis.parse_ensembles(cfg.ensembles)))
    except (analysis.AnalysisError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n== summary ==")
    for label, e in report["ensembles"].items():
        line = f"{label}: {e['num_members']} members, clean acc {e['clean_accuracy']:.3f}"
        if e.get("coherence", {}).get("median") is not None:
            line += (f", coherence median {e['coherence']['median']:.3f} "
                     f"({analysis.vanishing_text(e['coherence'])})")
        if "transfer" in e and e["transfer"]["mean_off_diagonal"] is not None:
            line += f", member transfer {e['transfer']['mean_off_diagonal']:.3f}"
        if "whitebox" in e:
            line += ", white-box acc " + "/".join(
                f"{a:.3f}" for a in e["whitebox"]["adversarial_accuracy"].values())
        print(line)
    for w in report["warnings"]:
        print(w)
    logging.info("wrote %s", report["files"]["analysis_json"])
    return 0


def run():
    """Console-script entry point (tf_divtrain-analyze)."""
    define_flags()
    cli_flags.run_app(main)


if __name__ == "__main__":
    run()

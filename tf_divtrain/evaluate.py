"""CLI: black-box transfer evaluation, the paper's Table 2 (§4.1 "Attack Configuration").

    python -m tf_divtrain.evaluate --flagfile=flags/evaluate_mnist_conv3.cfg \
        --surrogate_dir=runs/surrogate --targets=T_Base=runs/base,T_Div=runs/div --out_dir=eval/mnist

Crafts every (attack, eps) once on the surrogate (cached under --cache_dir), scores every target
and the surrogate itself (white-box sanity row), writes results.json, results.csv, table2.md and
accuracy.png into --out_dir and prints the table.

Several surrogates (e.g. baselines of 3, 5 and 8 members, or a surrogate trained with the defense
itself -- the adaptive transfer attacker of the paper's §6): ``--surrogate_dir=S3=runs/s3,
S5=runs/s5,S_div=runs/sdiv`` (bare dirs are labelled S, S2...). Each crafts and caches its own
attacks; the reports hold one Table 2 block per surrogate.

The field's protocol (DVERGE / TRS; issue 23, :mod:`tf_divtrain.field`) instead of the paper's five
attacks: ``--protocol=field`` (M-PGD x 3 restarts, M-DI²-FGSM, SGM on residual surrogates, TRS's
PGD-50 x 3 runs; CE and CW; eps 0.01..0.07 on CIFAR-10, 0.1/0.2/0.3 on MNIST). Shrink it for a CPU
with ``--num_examples``, ``--steps``, ``--restarts``, ``--field_attacks``; table2.md lists every
reduction.

Crafting under tf.distribute (issue 23): ``--strategy=mirrored`` (the local devices) or
``--strategy=multi_worker`` (the cluster in $TF_CONFIG; start the same command on every machine):
each replica crafts whole batches with their seeds, so the examples equal one process's
(:mod:`tf_divtrain.evaluation.distributed`); only the chief writes the cache and the reports.
"""

from __future__ import annotations

import os

from absl import flags, logging

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import cli_flags
from tf_divtrain import data as data_lib
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import evaluation
from tf_divtrain import field as field_lib
from tf_divtrain import precision as precision_lib

FLAGS = flags.FLAGS


def _eps_ok(value):
    if value is None:
        return True
    try:
        return bool(value) and all(0.0 <= float(v) <= 1.0 for v in value)
    except ValueError:
        return False


def _targets_ok(value):
    if value is None:
        return True
    try:
        evaluation.parse_targets(value)
        return True
    except evaluation.EvaluationError:
        return False


def _surrogates_ok(value):
    if value is None:
        return True
    try:
        evaluation.parse_surrogates(value)
        return True
    except evaluation.EvaluationError:
        return False


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    """Defines the CLI flags on ``fv`` (idempotent). Done in :func:`run`, not at import, so that
    importing this module next to other tf_divtrain CLIs never clashes on shared flag names."""
    if "surrogate_dir" in fv:
        return
    d = dict(flag_values=fv)
    flags.DEFINE_string("surrogate_dir", None, "Export (training out_dir or saved_model dir) of the "
                        "surrogate ensemble S the attacks are crafted on; or a comma list of "
                        "LABEL=DIR (or bare DIR, labelled S, S2...) for several surrogates, e.g. "
                        "S5=runs/s5,S_div=runs/sdiv: one Table 2 block each.", **d)
    flags.DEFINE_string("targets", None, "Comma list LABEL=DIR of target exports, e.g. "
                        "T_Base=runs/base,T_Div=runs/div.", **d)
    cli_flags.define_dataset_flags(fv, default=None, default_help="; default: the surrogate's dataset")
    flags.DEFINE_list("eps", None, "L-inf perturbation sizes on the [0, 1] scale; default 0.1,0.3 "
                      "(mnist, fashion_mnist) or 0.03,0.09 (cifar10).", **d)
    flags.DEFINE_list("attacks", list(attacks_lib.ATTACKS),
                      f"Subset of {','.join(attacks_lib.ATTACKS)}.", **d)
    flags.DEFINE_integer("num_examples", 1000, "Evaluate on the first N test images.", lower_bound=1,
                         **d)
    flags.DEFINE_integer("batch_size", 250, "Crafting / evaluation batch size.", lower_bound=1, **d)
    flags.DEFINE_integer("seed", 0, "Seed of the random steps (R-FGSM, PGD-CW start).", **d)
    flags.DEFINE_string("out_dir", None, "Where the reports are written.", **d)
    flags.DEFINE_string("cache_dir", None, "Adversarial-example cache; default <out_dir>/adv_cache.",
                        **d)
    flags.DEFINE_bool("progress", True, "Show a tqdm progress bar per attack.", **d)
    flags.DEFINE_enum("attack_loss", "ce", list(evaluation.ATTACK_LOSSES),
                      "Objective of FGSM, R-FGSM, I-FGSM and MI-FGSM: ce = the paper's mean member "
                      "CE (§4.1); prediction_ce = CE of the ensemble's averaged-softmax prediction "
                      "(an attacker who knows averaged member gradients cancel on a GAL ensemble). "
                      "PGD-CW keeps its CW hinge.", **d)
    flags.DEFINE_string("attack_options", None, "JSON object of per-attack keyword arguments of "
                        "tf_divtrain.attacks, e.g. '{\"rfgsm\": {\"variant\": \"tramer\"}, "
                        "\"pgd_cw\": {\"nb_iter\": 100}}'; default: the paper's settings. Part of "
                        "the cache key; table2.md names them.", **d)
    flags.DEFINE_string("protocol", "paper", "paper = the paper's five attacks (§4.1); field = "
                        "DVERGE/TRS's transfer grid (tf_divtrain.field): --attacks, --attack_loss "
                        "and --attack_options do not apply to it.", **d)
    flags.DEFINE_list("field_attacks", None, f"--protocol=field: subset of "
                      f"{','.join(field_lib.FAMILIES)}; default all (sgm only on residual "
                      f"surrogates).", **d)
    flags.DEFINE_integer("steps", None, "--protocol=field: steps of every attack (default 100 "
                         "DVERGE's, 50 TRS's PGD-50); a reduction the report lists.", **d)
    flags.DEFINE_integer("restarts", None, f"--protocol=field: M-PGD restarts and PGD-50 runs "
                         f"(default {field_lib.RESTARTS}), each its own set.", **d)
    flags.DEFINE_enum("strategy", "default", list(distribute_lib.STRATEGIES), "tf.distribute "
                      "strategy of the crafting: default (one device), mirrored (local devices), "
                      "multi_worker (several processes or machines; cluster from $TF_CONFIG, the "
                      "same command on every one). Each replica crafts whole batches with their "
                      "seeds: the same examples as default (bitwise), the same cache; only the "
                      "chief writes the cache and the reports.", **d)
    cli_flags.define_precision_flag(fv, "The surrogate crafts the attacks in it; targets are always "
                                    "scored in float32. Reduced precision changes the attack itself "
                                    "(signs of small gradient components), so Table 2 numbers use "
                                    "float32 unless you ask.")
    flags.mark_flags_as_required(["surrogate_dir", "targets", "out_dir"], flag_values=fv)
    flags.register_validator(
        "attacks", lambda v: bool(v) and all(a in attacks_lib.ATTACKS for a in v),
        message=f"--attacks must be a non-empty subset of {','.join(attacks_lib.ATTACKS)}.",
        flag_values=fv)
    flags.register_validator("eps", _eps_ok, message="--eps must be a comma list of numbers in "
                             "[0, 1] (pixel scale), e.g. 0.1,0.3.", flag_values=fv)
    flags.register_validator("surrogate_dir", _surrogates_ok, message="--surrogate_dir must be DIR "
                             "or a comma list of LABEL=DIR / DIR with unique labels, e.g. "
                             "S5=runs/s5,S_div=runs/sdiv.", flag_values=fv)
    flags.register_validator("targets", _targets_ok, message="--targets must be a comma list of "
                             "LABEL=DIR, e.g. T_Base=runs/base,T_Div=runs/div.", flag_values=fv)


def main(argv, fv: flags.FlagValues = None):
    """Crafts, scores and writes the reports for the flags in ``fv`` (default: the global FLAGS)."""
    fv = fv if fv is not None else FLAGS
    if len(argv) > 1:
        cli_flags.fail(f"unexpected arguments {argv[1:]}")
    precision_lib.resolve(fv.precision)  # warns if this machine emulates it
    cache_dir = fv.cache_dir or os.path.join(fv.out_dir, "adv_cache")
    eps = None if fv.eps is None else [float(e) for e in fv.eps]
    field_options = {k: v for k, v in (("families", fv.field_attacks), ("steps", fv.steps),
                                       ("restarts", fv.restarts)) if v is not None}
    try:
        field_lib.check_protocol(fv.protocol)
        if fv.protocol != "field" and field_options:
            raise field_lib.FieldError("--field_attacks, --steps and --restarts apply to "
                                       "--protocol=field only.")
    except field_lib.FieldError as e:
        cli_flags.fail(e)
    try:
        attack_options = ({} if fv.protocol == "field" and not fv.attack_options else
                          evaluation.parse_attack_options(fv.attack_options, fv.attacks,
                                                          fv.attack_loss))
        results = evaluation.evaluate(
            fv.surrogate_dir, fv.targets, dataset=fv.dataset, data_dir=fv.data_dir,
            eps=eps, attacks=fv.attacks, num_examples=fv.num_examples,
            batch_size=fv.batch_size, seed=fv.seed, cache_dir=cache_dir,
            progress=fv.progress, precision=fv.precision,
            attack_options=attack_options, protocol=fv.protocol,
            field_options=field_options if fv.protocol == "field" else None,
            strategy=fv.strategy)
    except (evaluation.EvaluationError, data_lib.DataError) as e:
        cli_flags.fail(e)
    if not evaluation.writes_reports(results):
        logging.info("not the chief of the %s cluster: crafted and scored, wrote nothing",
                     fv.strategy)
        return 0
    paths = evaluation.write_reports(results, fv.out_dir)
    print(evaluation.format_table2(results))
    blocks = evaluation.surrogate_blocks(results)
    for b in blocks:
        on = f" on {b['label']}" if len(blocks) > 1 else ""
        for a, per_eps in b["crafting"].items():
            for e, c in per_eps.items():
                note = " (cached)" if c.get("cached") else ""
                ips = c.get("images_per_sec")
                logging.info("crafting %s eps=%s%s: %s", a, e, on,
                             f"{ips:.1f} images/s{note}" if ips else f"n/a{note}")
    logging.info("wrote %s", ", ".join(paths.values()))
    return 0


def run():
    """Console script ``tf_divtrain-evaluate``."""
    define_flags()
    cli_flags.run_app(main)


if __name__ == "__main__":
    run()

"""The whole transfer evaluation (Table 2): validate, load, craft on each surrogate, score."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import data as data_lib
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import export as export_lib
from tf_divtrain.evaluation import distributed
from tf_divtrain.evaluation.cache import fingerprint
from tf_divtrain.evaluation.score import _surrogate_block, correct_mask
from tf_divtrain.evaluation.validate import EvaluationError, attack_kwargs, check_attacks, check_compatible, check_eps_list, check_export_dir, default_eps, parse_surrogates, parse_targets, surrogate_row_label


log = logging.getLogger("tf_divtrain.evaluation")


# ----------------------------------------------------------------------------------------------
# The whole evaluation.

@dataclasses.dataclass
class EvalConfig:
    """Every setting of a transfer evaluation (the ``evaluate`` CLI fills it from its flags), as
    ``TrainConfig`` is for training. :func:`evaluate` takes the same fields as keywords."""

    surrogate_dir: object = None          # one export dir, "S5=dir,S_div=dir2", or a list
    targets: object = None                # [(label, dir)] or "LABEL=DIR,..."
    dataset: Optional[str] = None         # None: the (first) surrogate's
    data_dir: Optional[str] = None
    eps: Optional[Sequence[float]] = None  # None: the dataset's (paper, or field protocol) default
    attacks: Sequence[str] = attacks_lib.ATTACKS
    num_examples: int = 1000
    batch_size: int = 250
    seed: int = 0
    cache_dir: Optional[str] = None
    progress: bool = True
    attack_options: Optional[Dict[str, dict]] = None
    precision: str = "float32"            # the surrogate's crafting precision; scoring is float32
    protocol: str = "paper"               # paper | field
    field_options: Optional[dict] = None
    strategy: str = "default"             # who crafts: default | mirrored | multi_worker


def evaluate(surrogate_dir, targets, dataset: Optional[str] = None,
             data_dir: Optional[str] = None, eps: Optional[Sequence[float]] = None,
             attacks: Sequence[str] = attacks_lib.ATTACKS, num_examples: int = 1000,
             batch_size: int = 250, seed: int = 0, cache_dir: Optional[str] = None,
             progress: bool = True, attack_options: Optional[Dict[str, dict]] = None,
             precision: str = "float32", protocol: str = "paper",
             field_options: Optional[dict] = None, strategy: str = "default") -> dict:
    """:func:`run` of the :class:`EvalConfig` with these fields (the same names, the same order)."""
    return run(EvalConfig(surrogate_dir, targets, dataset, data_dir, eps, attacks, num_examples,
                          batch_size, seed, cache_dir, progress, attack_options, precision, protocol,
                          field_options, strategy))


def run(cfg: EvalConfig) -> dict:
    """Table-2 evaluation: crafts on the surrogate(s), scores every target. Returns the results dict.

    ``surrogate_dir``: one export dir, or several as ``"S5=dir,S_div=dir2"`` / a list of dirs or
    (label, dir) (see :func:`parse_surrogates`); one Table 2 block per surrogate (module docstring).

    ``precision``: the precision the *surrogate* crafts in (default float32). Targets are always
    scored by their float32 exports, so a reduced crafting precision changes the attack (the sign
    of small gradient components in FGSM-type steps), never how accuracy is measured; the cache
    keeps the examples of each crafting precision apart.

    ``targets``: [(label, dir)] or a ``"LABEL=DIR,..."`` string. ``dataset`` None -> the (first)
    surrogate's. Everything is validated (names, eps, paths, dataset / input shape of every export)
    before any data is loaded or any attack runs.

    ``protocol="field"``: DVERGE / TRS's grid (:mod:`tf_divtrain.field`) instead of ``attacks``;
    ``field_options`` = keyword arguments of :func:`tf_divtrain.field.attack_sets` (``families``,
    ``losses``, ``restarts``, ``steps``, ``cw_confidence``); default eps per dataset from
    ``field.FIELD_EPS``. Same schema, one "attack" per set, plus ``results["field"]``.

    ``strategy`` (:mod:`tf_divtrain.distribute`): ``mirrored`` / ``multi_worker`` craft under that
    ``tf.distribute`` strategy, one crafting batch per replica and step
    (:mod:`tf_divtrain.evaluation.distributed`): the same examples as ``default``, bitwise, so the
    cache is shared. Every worker returns the whole results; only the chief writes cache entries,
    and ``results["crafting_strategy"]["chief"]`` tells a caller whether to write the reports
    (:func:`writes_reports`). ``default`` adds nothing to the results.
    """
    from tf_divtrain import field as field_lib

    (surrogate_dir, targets, dataset, data_dir, eps, attacks, num_examples, batch_size, seed,
     cache_dir, progress, attack_options, precision, protocol, field_options, strategy) = (
        getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig))
    # --- validation, cheapest first ---
    try:
        field_lib.check_protocol(protocol)
        if protocol == "field":
            if attack_options:
                raise field_lib.FieldError("attack options belong to the paper protocol; the field "
                                           "protocol takes field_attacks / steps / restarts.")
            field_options = dict(field_options or {})
            sets = field_lib.attack_sets(**field_options)
    except field_lib.FieldError as err:
        raise EvaluationError(str(err)) from None
    if protocol == "field":
        attacks = tuple(sets)
        attack_options = {k: dict(v["options"], _attack=v["attack"]) for k, v in sets.items()}
    else:
        attacks = check_attacks(attacks)
        attack_options = attack_options or {}
        for a, o in attack_options.items():
            check_attacks([a])
            try:
                attacks_lib.check_options(a, attack_kwargs(o))
            except ValueError as err:
                raise EvaluationError(str(err)) from None
    if eps is not None:
        eps = check_eps_list(eps)
    if dataset is not None:
        data_lib.check_dataset_name(dataset)
    if num_examples < 1:
        raise EvaluationError(f"num_examples={num_examples} must be >= 1.")
    if batch_size < 1:
        raise EvaluationError(f"batch_size={batch_size} must be >= 1.")
    try:
        distribute_lib.check_strategy(strategy)
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    targets = parse_targets(targets)
    surrogate_specs = parse_surrogates(surrogate_dir)
    clash = {surrogate_row_label(l) for l, _ in surrogate_specs} & {l for l, _ in targets}
    if clash:
        raise EvaluationError(f"Target label(s) {sorted(clash)} clash with surrogate sanity rows.")
    sur_sms = [(label, check_export_dir(path, "surrogate" if len(surrogate_specs) == 1
                                        else f"surrogate {label}"))
               for label, path in surrogate_specs]
    tgt_sm = [(label, check_export_dir(path, f"target {label}")) for label, path in targets]
    strat = _start_strategy(strategy)
    with (strat.scope() if strat is not None else contextlib.nullcontext()):
        # Under a strategy its replicas get the surrogate's variables (mirrored onto each device).
        surrogates = [(label, sm, export_lib.load_ensemble(sm, precision=precision))
                      for label, sm in sur_sms]
    if dataset is None:
        dataset = data_lib.check_dataset_name(surrogates[0][2].dataset)
    if eps is None:
        eps = field_lib.default_eps(dataset) if protocol == "field" else default_eps(dataset)
    eps = check_eps_list(eps)
    for a, o in attack_options.items():  # option values too, before targets and data are loaded
        for e in eps:
            try:
                attacks_lib.check_option_values(o.get("_attack", a), e, attack_kwargs(o))
            except ValueError as err:
                raise EvaluationError(str(err)) from None
    omitted = {}
    if any(o.get("_attack") == "sgm" for o in attack_options.values()):
        flat = [label for label, _, sur in surrogates if not field_lib.is_residual(sur)]
        if flat and field_options.get("families") is not None:
            raise EvaluationError(f"SGM needs residual surrogates; {', '.join(flat)} has no residual "
                                  f"block (use resnet20/resnet26 members or leave sgm out).")
        if flat:  # the default grid: SGM applies only where every surrogate is residual
            omitted["sgm"] = f"surrogate {', '.join(flat)} has no residual blocks"
            attack_options = {k: o for k, o in attack_options.items() if o.get("_attack") != "sgm"}
            attacks = tuple(attack_options)
    for label, _, sur in surrogates:
        check_compatible(sur, "surrogate" if len(surrogates) == 1 else f"surrogate {label}", dataset)
    target_models = []
    for label, sm in tgt_sm:
        for s_label, s_sm, _ in surrogates:
            if os.path.realpath(sm) == os.path.realpath(s_sm):
                log.warning("Target %s is surrogate %s itself (%s): its row in that block is a "
                            "white-box, not a black-box (transfer) result.", label, s_label, sm)
        m = export_lib.load_ensemble(sm)
        check_compatible(m, f"target {label}", dataset)
        target_models.append((label, m))

    ds = data_lib.load_dataset(dataset, data_dir, test_size=num_examples)
    x, y = ds.x_test, ds.y_test
    cache_dir = cache_dir or os.path.join("adv_cache")
    target_clean = {label: correct_mask(m, x, y, batch_size) for label, m in target_models}

    blocks = []
    for label, sm, sur in surrogates:
        blocks.append(_surrogate_block(
            label, sur, fingerprint(sm), target_models, target_clean, x, y, dataset, attacks, eps,
            cache_dir, batch_size, seed, progress, attack_options, precision, strat))
    first = blocks[0]

    results = {
        "schema_version": 2,
        "dataset": dataset, "data_path": ds.path, "num_examples": int(len(x)), "seed": int(seed),
        "batch_size": int(batch_size), "eps": list(eps), "attacks": list(attacks),
        "crafting_precision": precision, "scoring_precision": "float32",
        "attack_options": attack_options,
        # Version-1 keys: the first surrogate's block.
        "surrogate": first["surrogate"], "rows": first["rows"], "crafting": first["crafting"],
        "by_surrogate": blocks, "cache_dir": os.path.abspath(cache_dir),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__},
    }
    if strat is not None:  # not part of the cache key: the examples are the default's
        results["crafting_strategy"] = distributed.describe(strat, strategy)
    if protocol == "field":
        fams = [f for f in field_lib.check_families(field_options.get("families")) if f not in omitted]
        settings = {"families": fams, "losses": list(field_options.get("losses", field_lib.LOSSES)),
                    "restarts": int(field_options.get("restarts", field_lib.RESTARTS)),
                    "steps": field_options.get("steps"), "omitted": omitted,
                    "sets": {k: sets[k] for k in attacks}}
        field_lib.annotate(results, settings)
    return results


def _start_strategy(name: str):
    """None for ``default`` (today's loop, unchanged); else the started strategy. A cluster that
    cannot start (a malformed ``$TF_CONFIG``) -> EvaluationError."""
    if name == "default":
        return None
    try:
        return distribute_lib.make_strategy(name)
    except (ValueError, KeyError, TypeError) as err:
        raise EvaluationError(f"strategy={name} could not start from ${distribute_lib.TF_CONFIG} "
                              f"({err}); see README, 'Several machines'.") from None


def writes_reports(results: dict) -> bool:
    """Whether this process writes the reports: the chief of a distributed run, every other run."""
    return bool(results.get("crafting_strategy", {}).get("chief", True))

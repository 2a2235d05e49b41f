"""Evaluation inputs checked before any work: attack names and options, eps, the target and
surrogate specs, and that every export fits the dataset."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple


from tf_divtrain import attacks as attacks_lib
from tf_divtrain import labels as labels_lib
from tf_divtrain import data as data_lib
from tf_divtrain import export as export_lib
from tf_divtrain import paper


DEFAULT_EPS = paper.TABLE2_EPS
SURROGATE_LABEL = "S (white-box)"


class EvaluationError(ValueError):
    """Bad evaluation inputs (mismatched models, bad attack list, missing exports...)."""


# ----------------------------------------------------------------------------------------------
# Validation.

def default_eps(dataset: str) -> Tuple[float, ...]:
    """The paper's two perturbation sizes: 0.1/0.3 (MNIST-like), 0.03/0.09 (CIFAR-10)."""
    return DEFAULT_EPS[data_lib.check_dataset_name(dataset)]


def check_attacks(names: Sequence[str]) -> Tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise EvaluationError(f"No attacks given; valid names: {', '.join(attacks_lib.ATTACKS)}.")
    bad = [n for n in names if n not in attacks_lib.ATTACKS]
    if bad:
        raise EvaluationError(f"Unknown attack(s) {bad}; valid names: {', '.join(attacks_lib.ATTACKS)}.")
    if len(set(names)) != len(names):
        raise EvaluationError(f"Attack list {list(names)} has duplicates.")
    return names


def check_eps_list(eps: Sequence[float]) -> Tuple[float, ...]:
    eps = tuple(eps)
    if not eps:
        raise EvaluationError("No eps given.")
    out = []
    for e in eps:
        try:
            out.append(attacks_lib.check_eps(e))
        except ValueError as err:
            raise EvaluationError(str(err)) from None
    if len(set(out)) != len(out):
        raise EvaluationError(f"eps list {list(eps)} has duplicates.")
    return tuple(out)


CE_ATTACKS = ("fgsm", "rfgsm", "ifgsm", "mifgsm")  # the attacks whose objective is a CE (§4.1)
ATTACK_LOSSES = ("ce", "prediction_ce")


def attack_kwargs(options: Optional[dict]) -> dict:
    """The keyword arguments of an attack among ``options``: keys starting with ``_`` (e.g.
    ``_crafting_precision``) are cache-key metadata, not arguments."""
    return {k: v for k, v in (options or {}).items() if not k.startswith("_")}


def attack_loss_options(attacks: Sequence[str], loss: str) -> Dict[str, dict]:
    """``attack_options`` giving the CE attacks among ``attacks`` the objective ``loss``.

    ``"ce"`` (the paper's mean member CE, §4.1) -> ``{}``, so the default keeps its cache keys;
    ``"prediction_ce"`` -> ``{a: {"loss": "prediction_ce"}}`` for FGSM, R-FGSM, I-FGSM and MI-FGSM
    (:func:`~tf_divtrain.attacks.prediction_ce`). PGD-CW keeps its CW hinge either way.
    """
    if loss not in ATTACK_LOSSES:
        raise EvaluationError(f"Unknown attack loss {loss!r}; valid: {', '.join(ATTACK_LOSSES)} "
                              f"(ce = the paper's mean member CE).")
    if loss == "ce":
        return {}
    return {a: {"loss": loss} for a in check_attacks(attacks) if a in CE_ATTACKS}


def parse_attack_options(text: Optional[str], attacks: Sequence[str], loss: str = "ce") -> Dict[str, dict]:
    """``--attack_options`` JSON (``{"rfgsm": {"variant": "tramer"}, "pgd_cw": {"nb_iter": 100}}``)
    merged with :func:`attack_loss_options` for ``loss``; validated against each attack's keyword
    arguments. Giving an attack's ``loss`` both ways with different values is an error."""
    options = attack_loss_options(attacks, loss)
    if not text:
        return options
    try:
        given = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvaluationError(f"--attack_options is not valid JSON ({e}); example: "
                              f'\'{{"rfgsm": {{"variant": "tramer"}}}}\'.') from None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise EvaluationError('--attack_options must map attack names to option objects, e.g. '
                              '{"rfgsm": {"variant": "tramer"}}.')
    for a, opts in given.items():
        check_attacks([a])
        if a not in attacks:
            raise EvaluationError(f"--attack_options sets {a!r}, which is not among the attacks "
                                  f"run ({', '.join(attacks)}).")
        merged = dict(options.get(a, {}))
        if "loss" in merged and "loss" in opts and opts["loss"] != merged["loss"]:
            raise EvaluationError(f"{a}: --attack_options gives loss={opts['loss']!r} but "
                                  f"--attack_loss={loss}; set it one way.")
        merged.update(opts)
        try:
            options[a] = attacks_lib.check_options(a, merged)
        except ValueError as err:
            raise EvaluationError(str(err)) from None
    return options


def parse_targets(spec) -> List[Tuple[str, str]]:
    """``"T_Base=runs/base,T_Div=runs/div"`` (or a list of such items) -> [(label, dir), ...]."""
    return labels_lib.parse_label_dirs(spec, "Target", "T_Base=runs/base", EvaluationError,
                                       reserved=(SURROGATE_LABEL,))


def check_export_dir(path: str, role: str) -> str:
    """Existing export (out_dir or saved_model dir) -> its saved_model dir; else a clear error."""
    try:
        return export_lib.find_export(path)
    except FileNotFoundError as e:
        raise EvaluationError(f"{role}: {e}") from None


def check_compatible(model, role: str, dataset: str) -> None:
    """The export's metadata must match the requested dataset, its input shape and classes."""
    problem = export_lib.dataset_mismatch(model.metadata, dataset)
    if problem:
        raise EvaluationError(f"{role} ({model.path}) {problem}; pass matching exports or --dataset.")


# ----------------------------------------------------------------------------------------------
# Several surrogates.

def parse_surrogates(spec) -> List[Tuple[str, str]]:
    """``"S5=runs/s5,S_div=runs/sdiv"``, a bare ``"runs/s"``, or a list of dirs / (label, dir).

    Bare dirs (no ``=``, or an existing path containing one) are labelled ``S``, then ``S2``,
    ``S3``... (skipping labels given explicitly). Labels must be unique.
    """
    return labels_lib.parse_label_dirs(spec, "Surrogate", "S5=runs/s5 or a bare runs/surrogate",
                                       EvaluationError, bare_label=lambda k: "S" if k == 1 else f"S{k}")


def surrogate_row_label(label: str) -> str:
    """White-box sanity row of surrogate ``label``; ``S`` keeps the historical SURROGATE_LABEL."""
    return f"{label} (white-box)"



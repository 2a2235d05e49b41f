"""The field's transfer protocol (issue 23): DVERGE's and TRS's attack grid as one named option.

``evaluate --protocol=field`` crafts, per surrogate, every *set* of the grid below at every eps
(once, cached like the paper's attacks), scores every target on every set and reports, per eps,
robust-to-all over all sets next to the worst single set. Read from the peers' repositories
(issue 23):

* DVERGE (zjysteven/DVERGE ``eval/eval_bbox.py``, ``scripts/evaluation.sh``): momentum PGD from 3
  random starts, M-DI²-FGSM (p = 0.5) and SGM (gamma = 0.2, residual surrogates only), each with
  CE and CW, 100 steps; eps 0.01 ... 0.07 on CIFAR-10; an image is robust at eps if it is correct
  on every set at that eps (``robust_to_all``).
* TRS (``utils/Empirical/surrogate.py``, ``eval/Empirical/blackbox.py``): PGD-50, step eps/10, one
  random start, CE and CW (confidence 0.1), 3 runs each; robust only if also correct clean
  (``robust_to_all_and_clean``).

Our choices where the repositories are silent (all options): momentum 1.0 and step eps/10 for
DVERGE's attacks (Dong et al. 2018, Xie et al. 2019; TRS's step), input diversity 32 -> [32, 36)
(:mod:`tf_divtrain.attacks.input_diversity`), CW confidence 0.1 for every CW set (TRS's; DVERGE's
is not stated). Our CE / CW are the mean over the surrogate's members (§4.1's construction); the
peers average the members' logits first. MNIST eps {0.1, 0.2, 0.3} are ours (the peers report
CIFAR-10 only).

Set names: ``mpgd_<loss>_r<k>`` (DVERGE M-PGD restart k), ``mdi2fgsm_<loss>``, ``sgm_<loss>``,
``pgd50_<loss>_r<k>`` (TRS run k; with ``steps`` overridden the name keeps ``pgd50``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tf_divtrain import attacks as attacks_lib
from tf_divtrain.results import eps_key, per_example_mask, surrogate_blocks

PROTOCOLS = ("paper", "field")
FAMILIES = ("mpgd", "mdi2fgsm", "sgm", "pgd50")  # DVERGE's three, TRS's PGD-50
FAMILY_NAMES = {"mpgd": "M-PGD", "mdi2fgsm": "M-DI²-FGSM", "sgm": "SGM", "pgd50": "PGD-50"}
LOSSES = ("ce", "cw")
DVERGE_STEPS = 100
TRS_STEPS = 50
RESTARTS = 3  # DVERGE's random starts, TRS's runs
CW_CONFIDENCE = 0.1  # TRS's CW confidence
DVERGE_EXAMPLES = 1000  # DVERGE / TRS evaluate on 1,000 test images (issue 23's white-box line)
FIELD_EPS = {"cifar10": (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07),
             "mnist": (0.1, 0.2, 0.3), "fashion_mnist": (0.1, 0.2, 0.3)}
WORST_KEY = "worst_set"
CLEAN_KEY = "robust_to_all_and_clean"


class FieldError(ValueError):
    """Bad field-protocol settings."""


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise FieldError(f"Unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)} (paper = the "
                         f"paper's five attacks, field = DVERGE/TRS's grid).")
    return name


def default_eps(dataset: str) -> Tuple[float, ...]:
    return FIELD_EPS[dataset]


def check_families(families: Optional[Sequence[str]]) -> Tuple[str, ...]:
    fams = FAMILIES if families is None else tuple(families)
    bad = [f for f in fams if f not in FAMILIES]
    if bad or not fams:
        raise FieldError(f"Unknown field attack(s) {bad or '(none given)'}; valid: "
                         f"{', '.join(FAMILIES)}.")
    if len(set(fams)) != len(fams):
        raise FieldError(f"Field attack list {list(fams)} has duplicates.")
    return fams


def attack_sets(families: Optional[Sequence[str]] = None, losses: Sequence[str] = LOSSES,
                restarts: int = RESTARTS, steps: Optional[int] = None,
                cw_confidence: float = CW_CONFIDENCE) -> Dict[str, dict]:
    """The grid: ``{set name: {"attack", "options", "display"}}`` (module docstring).

    ``steps`` overrides every family's step count (100 DVERGE / 50 TRS); ``restarts`` the number
    of M-PGD restarts and PGD-50 runs (each its own set). Options are validated by the attacks.
    """
    fams = check_families(families)
    try:
        restarts = attacks_lib.check_restarts(restarts)
        if steps is not None:
            steps = attacks_lib.check_nb_iter(steps)
        attacks_lib.check_confidence(cw_confidence)
    except ValueError as e:
        raise FieldError(str(e)) from None
    bad = [l for l in losses if l not in LOSSES]
    if bad or not losses:
        raise FieldError(f"Unknown field loss(es) {bad or '(none given)'}; valid: {', '.join(LOSSES)}.")
    sets = {}
    for fam in fams:
        for loss in losses:
            extra = {"confidence": float(cw_confidence)} if loss == "cw" else {}
            base = dict(loss=loss, **extra)
            shown = f"{FAMILY_NAMES[fam]} {loss.upper()}"
            if fam == "mpgd":
                for r in range(restarts):
                    sets[f"mpgd_{loss}_r{r}"] = {"attack": "mpgd", "display": f"{shown} r{r}", "options": dict(
                        base, nb_iter=steps or DVERGE_STEPS, first_restart=r)}
            elif fam == "pgd50":
                for r in range(restarts):
                    sets[f"pgd50_{loss}_r{r}"] = {"attack": "mpgd", "display": f"{shown} r{r}", "options": dict(
                        base, nb_iter=steps or TRS_STEPS, decay=0.0, first_restart=r)}
            else:
                sets[f"{fam}_{loss}"] = {"attack": fam, "display": shown,
                                         "options": dict(base, nb_iter=steps or DVERGE_STEPS)}
    return sets


def is_residual(surrogate) -> bool:
    """Whether SGM can hook into ``surrogate`` (some member has residual blocks)."""
    try:
        attacks_lib.hookable_surrogate(surrogate)
        return True
    except attacks_lib.NotResidualError:
        return False


def robust_to_all(correct_sets: Sequence[np.ndarray], clean: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-example robustness over sets: correct on every set (DVERGE), and also clean (TRS) when
    ``clean`` is given. Restarts are sets, so this is also how restarts combine on a target."""
    masks = [np.asarray(m, bool) for m in correct_sets] + ([] if clean is None else [np.asarray(clean, bool)])
    if not masks:
        raise FieldError("robust_to_all needs at least one set.")
    return np.logical_and.reduce(masks)


def annotate(results: dict, settings: dict) -> dict:
    """Adds ``results["field"]`` (the settings, sets and reductions) and, per row, ``worst_set``
    ``{eps: {"set", "accuracy"}}`` and ``robust_to_all_and_clean`` ``{eps: acc, "all": acc}``,
    computed from the rows' per-example masks (the evaluation already stored ``robust_to_all``)."""
    sets, eps = results["attacks"], [eps_key(e) for e in results["eps"]]
    for block in surrogate_blocks(results):
        for row in block["rows"]:
            row[WORST_KEY] = {}
            for e in eps:
                name = min(sets, key=lambda s: (row["attacks"][s][e], sets.index(s)))
                row[WORST_KEY][e] = {"set": name, "accuracy": row["attacks"][name][e]}
            clean = per_example_mask(row)
            per = {e: [per_example_mask(row, s, e) for s in sets] for e in eps}
            row[CLEAN_KEY] = {e: float(np.mean(robust_to_all(per[e], clean))) for e in eps}
            row[CLEAN_KEY]["all"] = float(np.mean(robust_to_all([m for e in eps for m in per[e]], clean)))
    results["protocol"] = "field"
    results["field"] = dict(settings, reductions=reductions(results, settings))
    if len(surrogate_blocks(results)) == 1:  # keep the version-1 keys in step
        results["rows"] = results["by_surrogate"][0]["rows"]
    return results


def reductions(results: dict, settings: dict) -> List[str]:
    """Every way this run is smaller than (or differs from) DVERGE / TRS's protocol."""
    out = []
    n = results["num_examples"]
    if n < DVERGE_EXAMPLES:
        out.append(f"{n} test images (DVERGE / TRS: {DVERGE_EXAMPLES})")
    if settings.get("steps") is not None:
        out.append(f"{settings['steps']} steps per attack (DVERGE: {DVERGE_STEPS}, TRS: {TRS_STEPS})")
    if settings["restarts"] < RESTARTS:
        out.append(f"{settings['restarts']} restart(s) / run(s) (DVERGE / TRS: {RESTARTS})")
    for fam in FAMILIES:
        if fam not in settings["families"]:
            why = settings.get("omitted", {}).get(fam, "not asked for")
            out.append(f"{FAMILY_NAMES[fam]} left out ({why})")
    if tuple(settings["losses"]) != LOSSES:
        out.append(f"losses {', '.join(settings['losses'])} only (peers: CE and CW)")
    full = FIELD_EPS.get(results["dataset"])
    if full and tuple(results["eps"]) != tuple(full):
        out.append(f"eps {', '.join(f'{e:g}' for e in results['eps'])} (protocol default: "
                   f"{', '.join(f'{e:g}' for e in full)})")
    if results["dataset"] != "cifar10":
        out.append(f"{results['dataset']}: the peers report CIFAR-10 only; eps {{0.1, 0.2, 0.3}} is ours")
    if results.get("batch_size") and results["batch_size"] < n:
        out.append(f"input-diversity draws are per batch of {results['batch_size']}")
    return out


def format_lines(results: dict) -> List[str]:
    """Markdown: per surrogate, clean / worst single set / robust-to-all per eps, and the list of
    reductions."""
    eps = [eps_key(e) for e in results["eps"]]
    f = results.get("field") or {}
    sets = f.get("sets", {})
    pct = lambda v: f"{100.0 * v:.1f}"  # noqa: E731
    lines = [f"### Field protocol (DVERGE / TRS): {len(results['attacks'])} sets per eps", "",
             "Per eps: worst single set (its name) / robust to all sets (DVERGE) / robust to all "
             "and clean (TRS), accuracy %.", ""]
    head = ["TARGET", "CLEAN"] + [f"eps {e}" for e in eps] + ["ALL EPS (all / +clean)"]
    for b in surrogate_blocks(results):
        lines += [f"Surrogate {b['label']}:", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] * len(head)) + "|"]
        for row in b["rows"]:
            cells = [row["label"] if row["role"] == "target" else f"*{row['label']}*", pct(row["clean"])]
            for e in eps:
                w = row[WORST_KEY][e]
                cells.append(f"{pct(w['accuracy'])} ({sets.get(w['set'], {}).get('display', w['set'])}) / "
                             f"{pct(row['robust_to_all'][e])} / {pct(row[CLEAN_KEY][e])}")
            cells.append(f"{pct(row['robust_to_all']['all'])} / {pct(row[CLEAN_KEY]['all'])}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Sets: " + "; ".join(f"{s['display']} = {s['attack']} "
                                      + ", ".join(f"{k}={v}" for k, v in sorted(s["options"].items()))
                                      for s in sets.values()) + ".")
    red = f.get("reductions") or []
    lines.append("Reductions and differences from the peers' protocol: "
                 + ("; ".join(red) if red else "none") + ".")
    return lines

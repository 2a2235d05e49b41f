"""The results schema: results.json (evaluate) and analysis.json (analyze), free of TensorFlow.

Evaluation and analysis write these files; the report, the pipeline and the experiments read them
through here, so rendering a report or planning a preset never loads TensorFlow. What a file holds:

- ``eps``: the ε values; cells are keyed by :func:`eps_key` (``0.1`` → ``"0.1"``).
- ``rows``: one per model (``label``, ``role`` target / surrogate, ``clean``, ``attacks`` →
  ``{attack: {eps_key: accuracy}}``, ``robust_to_all``, and ``per_example``: base64 bit masks of
  per-image correctness, clean and per cell, so paired statistics apply).
- ``by_surrogate`` (schema 2, several surrogates): one block of rows per surrogate.
- ``protocol`` = ``"field"`` (``evaluate --protocol=field``, :mod:`tf_divtrain.field`): ``attacks``
  are the field sets, ``field`` holds the settings, ``sets`` and ``reductions``, and each row also
  ``worst_set`` and ``robust_to_all_and_clean``; a preset row keeps it in ``<row>/eval_field/``
  (the report's "Field protocol" section, :mod:`tf_divtrain.report.field`).
- ``crafting_strategy`` (only when ``evaluate --strategy`` was not ``default``): ``name``,
  ``replicas``, ``workers``, ``chief``; the examples, hence every number, are the default's.
- analysis.json: ``ensembles`` → ``{label: {analysis: result}}``.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from tf_divtrain import io_utils, stats

ROBUST_ALL_KEY = "all"


class ResultsError(ValueError):
    """A results file that is missing, damaged or of the wrong kind; the message names the fix."""


def eps_key(eps: float) -> str:
    return f"{eps:g}"


def safe_label(label: str) -> str:
    """A label as it appears in the analysis' file names (``coherence_T_Ens+Div.png``...)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label)


def read_json(path: str, kind: str = "", stage: str = "") -> dict:
    """The JSON object in ``path`` (the package's one reader, :func:`io_utils.read_json`): a
    missing, cut-off or damaged file raises ``io_utils.IncompleteFileError`` naming the file and
    the stage to re-run, never a decoder traceback."""
    return io_utils.read_json(path, kind or None, stage or None)


def load_optional(path: str, kind: str = "", stage: str = "") -> Optional[dict]:
    """:func:`read_json`, or ``None`` when the file does not exist (a stage that did not run)."""
    return io_utils.read_json(path, kind or None, stage or None, missing_ok=True)


def copy_file(src: str, dst: str) -> None:
    """Copy through a temporary name, so a killed copy never leaves half a file at ``dst``."""
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def surrogate_blocks(results: dict) -> List[dict]:
    """One Table 2 block per surrogate, for results.json of either schema version.

    Each block: ``{"label", "surrogate", "rows", "crafting"}``. Version-1 results (no
    ``by_surrogate``) give a single block labelled ``S`` from the top-level keys.
    """
    if results.get("by_surrogate"):
        return list(results["by_surrogate"])
    return [{"label": results.get("surrogate", {}).get("label", "S"),
             "surrogate": results.get("surrogate", {}), "rows": results["rows"],
             "crafting": results.get("crafting", {})}]


def attack_options_text(results: dict, names: Dict[str, str]) -> str:
    """``"FGSM loss=prediction_ce; PGD-CW nb_iter=3"``: the attack options a paper-protocol
    results.json ran with instead of the paper's (``names``: attack -> display name); "" if none.
    A field run's options are its sets' settings, not changes, so they are not listed."""
    options = {a: o for a, o in (results.get("attack_options") or {}).items() if o}
    if not options or results.get("field"):
        return ""
    return "; ".join(f"{names.get(a, a)} " + ", ".join(f"{k}={v}" for k, v in sorted(o.items()))
                     for a, o in options.items())


def labels(results: dict) -> set:
    """Every label a results.json or analysis.json holds: rows, ensembles and surrogate blocks."""
    return ({r.get("label") for r in results.get("rows", [])} | set(results.get("ensembles", {}))
            | {b.get("label") for b in results.get("by_surrogate", [])})


def covers(results: dict, wanted: Iterable[str]) -> bool:
    """The file holds every label in ``wanted`` and per-example correctness in every row (the
    reports' paired tests need it), so a stage whose target list grew is re-run, not skipped."""
    rows = results.get("rows", []) + [r for b in results.get("by_surrogate", []) for r in b.get("rows", [])]
    return set(wanted) <= labels(results) and all(r.get("per_example") for r in rows)


def per_example_mask(row: dict, attack: Optional[str] = None,
                     eps: Optional[str] = None) -> Optional[np.ndarray]:
    """The row's per-example correctness, clean (no ``attack``) or under ``attack`` at ``eps``
    (an :func:`eps_key`); ``None`` when the results file predates per-example storage."""
    pe = row.get("per_example")
    if not pe:
        return None
    text = pe["clean"] if attack is None else pe["attacks"].get(attack, {}).get(eps)
    return None if text is None else stats.decode_mask(text, int(pe["n"]))


def paired_cell(row_a: dict, row_b: dict, attack: Optional[str] = None,
                eps: Optional[str] = None) -> Optional[dict]:
    """:func:`stats.paired_comparison` of two rows on one cell (clean without ``attack``), or
    ``None`` when either row lacks per-example results or they cover different images."""
    ma, mb = per_example_mask(row_a, attack, eps), per_example_mask(row_b, attack, eps)
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    return stats.paired_comparison(ma, mb)


def robust_to_all(correct: Dict[Tuple[str, str], np.ndarray]) -> Dict[str, float]:
    """Robust-to-all accuracy from per-example correctness of every (attack, eps_key) cell.

    ``correct[(attack, eps_key)]`` = bool array over the same examples. Returns
    ``{eps_key: fraction correct under every attack at that eps, ..., "all": fraction correct
    under every cell}``; each value is <= the minimum accuracy of the cells it covers.
    """
    if not correct:
        raise ResultsError("robust_to_all needs at least one (attack, eps) cell.")
    masks = {k: np.asarray(v, dtype=bool) for k, v in correct.items()}
    n = {m.shape for m in masks.values()}
    if len(n) != 1 or len(next(iter(n))) != 1:
        raise ResultsError(f"robust_to_all: per-example arrays must be 1-D of one length, got {n}.")
    out = {}
    for e in dict.fromkeys(e for _, e in masks):  # eps keys in first-seen order
        out[e] = float(np.mean(np.logical_and.reduce([m for (_, ee), m in masks.items() if ee == e])))
    out[ROBUST_ALL_KEY] = float(np.mean(np.logical_and.reduce(list(masks.values()))))
    return out

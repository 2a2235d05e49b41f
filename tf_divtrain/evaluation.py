"""Black-box transfer evaluation (paper §4.1 "Attack Configuration", Table 2).

Adversarial examples are crafted ONCE per (surrogate, attack, eps, test subset, seed) with
white-box attacks on the surrogate ensemble S (:mod:`tf_divtrain.attacks`), cached on disk as
``.npy`` and then fed to every target T. Accuracy = argmax of the ensemble's average softmax
equals the label. The surrogate's own (white-box) accuracy is reported as a sanity row: it should
be the lowest of all rows.

Cache: ``<cache_dir>/<attack>_eps<eps>_n<N>_<key>.npy`` where ``key`` hashes the surrogate's
fingerprint (sha256 of its ``saved_model.pb`` and ``variables/variables.index``), the dataset, the
attack and its options, eps, N, the seed and the batch size (random starts are drawn per batch
with seed ``[seed, batch_index]``). Files are written atomically (temp file + ``os.replace``).

Additions (issue 14):

* **Robust-to-all accuracy** per row: an example counts only if the row's model classifies it
  correctly under *every* (attack, eps) cell of the table -- per eps (all attacks at that eps) and
  overall (all attacks, all eps); as in the DVERGE / TRS papers. Computed from the per-example
  correctness already measured for the cells (nothing extra is crafted); clean correctness is not
  required. Stored as ``row["robust_to_all"] = {"0.1": acc, "0.3": acc, "all": acc}``.
* **Several surrogates** (``surrogate_dir="S5=runs/s5,S_div=runs/sdiv"``; bare dirs are accepted
  and labelled ``S``, ``S2``...). Each surrogate crafts (and caches, keyed by its fingerprint) its
  own examples; a surrogate trained with the defense itself is the adaptive transfer attacker of
  the paper's §6. ``results.json`` schema (``schema_version`` 2): the top-level ``surrogate`` /
  ``rows`` / ``crafting`` keys describe the FIRST surrogate exactly as in version 1 (so readers of
  the old schema keep working), and ``by_surrogate`` lists one block per surrogate, the first
  included: ``{"label", "surrogate": {path, fingerprint, metadata}, "rows", "crafting"}``. Use
  :func:`surrogate_blocks` to read either version.
* **Per-example correctness** per row (clean and every cell), so reports can test an ordering's
  significance on the same images (:mod:`tf_divtrain.stats`): ``row["per_example"] = {"n",
  "encoding": "packbits-base64", "clean": str, "attacks": {attack: {eps_key: str}}}``; read it
  with :func:`per_example_mask` (``None`` for results written before it existed).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_divtrain import attacks as attacks_lib
from tf_divtrain import batching
from tf_divtrain import labels as labels_lib
from tf_divtrain import data as data_lib
from tf_divtrain import export as export_lib
from tf_divtrain import io_utils, paper, stats
from tf_divtrain.results import (ROBUST_ALL_KEY, eps_key, paired_cell, per_example_mask,  # noqa: F401
                                 robust_to_all, surrogate_blocks)

DEFAULT_EPS = paper.TABLE2_EPS
SURROGATE_LABEL = "S (white-box)"
CACHE_VERSION = 1
log = logging.getLogger(__name__)


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
# Crafting with an on-disk cache.

def fingerprint(saved_model_dir: str) -> str:
    """sha256 (16 hex) of an export's graph and variable index: identifies the surrogate."""
    h = hashlib.sha256()
    for rel in ("saved_model.pb", os.path.join("variables", "variables.index")):
        p = os.path.join(saved_model_dir, rel)
        h.update(rel.encode())
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def cache_path(cache_dir: str, surrogate_id: str, dataset: str, attack: str, eps: float,
               num_examples: int, seed: int, batch_size: int, options: Optional[dict] = None) -> str:
    key = json.dumps({"v": CACHE_VERSION, "surrogate": surrogate_id, "dataset": dataset,
                      "attack": attack, "eps": float(eps), "n": int(num_examples), "seed": int(seed),
                      "batch_size": int(batch_size), "options": options or {}}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{attack}_eps{eps:g}_n{num_examples}_{digest}.npy")


def _atomic_save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            io_utils.fault_point("write:" + os.path.basename(path), tmp)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise io_utils.output_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def craft(attack_fn, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
          desc: str = "", progress: bool = True) -> np.ndarray:
    """Runs ``attack_fn(x_b, y_b, [seed, b])`` over batches (tqdm bar), returns float32 x_adv."""
    out = batching.map_batches(lambda xb, yb, b: attack_fn(xb, yb, tf.constant([seed, b], tf.int64)),
                               x, y, batch_size=batch_size, with_index=True, progress=progress,
                               desc=desc)
    return out.astype(np.float32, copy=False)


def craft_cached(surrogate, surrogate_id: str, dataset: str, attack: str, eps: float,
                 x: np.ndarray, y: np.ndarray, cache_dir: str, batch_size: int = 250, seed: int = 0,
                 progress: bool = True, options: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
    """x_adv for (surrogate, attack, eps, first len(x) test images, seed), from cache if present.

    Returns ``(x_adv, info)`` with info = {seconds, images_per_sec, cached, path}; seconds and
    images/s describe the original crafting run (stored next to the array as ``.json``) and
    include the one-off ``tf.function`` trace.
    """
    options = dict(options or {})
    path = cache_path(cache_dir, surrogate_id, dataset, attack, eps, len(x), seed, batch_size, options)
    meta_path = path[:-4] + ".json"
    if os.path.isfile(path):
        # An entry is complete when both the array and its sidecar (written last) read back;
        # anything less (a kill between the two, a damaged file) is recomputed -- crafting is
        # seeded, so the array comes out the same.
        try:
            arr = np.load(path, allow_pickle=False)
            info = io_utils.read_json(meta_path, "adversarial-cache entry", "evaluate (the entry "
                                      "is recomputed)", required=("seconds",))
            if arr.shape == x.shape and arr.dtype == np.float32:
                info.update(cached=True, path=path)
                return arr, info
            log.warning("cache entry %s holds %s %s, expected %s float32; recomputing it",
                            path, arr.shape, arr.dtype, x.shape)
        except (OSError, ValueError) as e:  # unreadable / truncated / no sidecar: recompute
            log.warning("cache entry %s is incomplete (%s); recomputing it", path,
                            str(e).splitlines()[0][:300])
    name = options.get("_attack", attack)  # a field-protocol set names its attack (issue 23)
    attack_fn = attacks_lib.make_attack(name, surrogate, eps, **attack_kwargs(options))
    t0 = time.perf_counter()
    x_adv = craft(attack_fn, x, y, batch_size, seed,
                  desc=f"{attacks_lib.DISPLAY_NAMES[name]} eps={eps:g}", progress=progress)
    seconds = time.perf_counter() - t0  # includes the one-off trace
    info = {"seconds": seconds, "images_per_sec": len(x) / max(seconds, 1e-9),
            "num_examples": len(x), "batch_size": batch_size}
    _atomic_save(path, x_adv)
    io_utils.atomic_write_json(meta_path, info)
    info.update(cached=False, path=path)
    return x_adv, info


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of argmax(average member softmax) == y (the ensemble's prediction, §4.1)."""
    return float(np.mean(correct_mask(model, x, y, batch_size)))


def correct_mask(model, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Per-example bool: argmax(average member softmax) == y. ``mean()`` is :func:`accuracy`."""
    pred = batching.map_batches(lambda xb: tf.argmax(model.probabilities(tf.cast(xb, tf.float32)), -1),
                                x, batch_size=batch_size)
    return pred == np.asarray(y)


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


# ----------------------------------------------------------------------------------------------
# The whole evaluation.

def evaluate(surrogate_dir, targets, dataset: Optional[str] = None,
             data_dir: Optional[str] = None, eps: Optional[Sequence[float]] = None,
             attacks: Sequence[str] = attacks_lib.ATTACKS, num_examples: int = 1000,
             batch_size: int = 250, seed: int = 0, cache_dir: Optional[str] = None,
             progress: bool = True, attack_options: Optional[Dict[str, dict]] = None,
             precision: str = "float32", protocol: str = "paper",
             field_options: Optional[dict] = None) -> dict:
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
    """
    from tf_divtrain import field as field_lib

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
    targets = parse_targets(targets)
    surrogate_specs = parse_surrogates(surrogate_dir)
    clash = {surrogate_row_label(l) for l, _ in surrogate_specs} & {l for l, _ in targets}
    if clash:
        raise EvaluationError(f"Target label(s) {sorted(clash)} clash with surrogate sanity rows.")
    sur_sms = [(label, check_export_dir(path, "surrogate" if len(surrogate_specs) == 1
                                        else f"surrogate {label}"))
               for label, path in surrogate_specs]
    tgt_sm = [(label, check_export_dir(path, f"target {label}")) for label, path in targets]
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
            cache_dir, batch_size, seed, progress, attack_options, precision))
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
    if protocol == "field":
        fams = [f for f in field_lib.check_families(field_options.get("families")) if f not in omitted]
        settings = {"families": fams, "losses": list(field_options.get("losses", field_lib.LOSSES)),
                    "restarts": int(field_options.get("restarts", field_lib.RESTARTS)),
                    "steps": field_options.get("steps"), "omitted": omitted,
                    "sets": {k: sets[k] for k in attacks}}
        field_lib.annotate(results, settings)
    return results


def _surrogate_block(label, surrogate, sur_id, target_models, target_clean, x, y, dataset,
                     attacks, eps, cache_dir, batch_size, seed, progress, attack_options,
                     precision) -> dict:
    """Crafts every (attack, eps) on one surrogate and scores every target plus the surrogate
    itself (white-box row). Returns ``{"label", "surrogate", "rows", "crafting"}``."""
    clean = [target_clean[t_label] for t_label, _ in target_models]
    clean.append(correct_mask(surrogate, x, y, batch_size))
    rows = [{"label": t_label, "role": "target", "path": m.path, "metadata": m.metadata,
             "attacks": {a: {} for a in attacks}}
            for t_label, m in target_models]
    rows.append({"label": surrogate_row_label(label), "role": "surrogate", "path": surrogate.path,
                 "metadata": surrogate.metadata, "attacks": {a: {} for a in attacks}})
    for row, c in zip(rows, clean):
        row["clean"] = float(np.mean(c))
        row["per_example"] = {"n": int(len(c)), "encoding": stats.ENCODING,
                              "clean": stats.encode_mask(c), "attacks": {a: {} for a in attacks}}
    crafting = {a: {} for a in attacks}
    models_by_row = [m for _, m in target_models] + [surrogate]
    correct = [{} for _ in rows]  # per row: (attack, eps_key) -> per-example bool
    for a in attacks:
        for e in eps:
            options = dict(attack_options.get(a) or {})
            if precision != "float32":  # part of the cache key, not passed to the attack
                options["_crafting_precision"] = precision
            x_adv, info = craft_cached(surrogate, sur_id, dataset, a, e, x, y, cache_dir, batch_size,
                                       seed, progress, options or None)
            crafting[a][eps_key(e)] = {k: info.get(k) for k in
                                       ("seconds", "images_per_sec", "cached", "path")}
            for row, m, c in zip(rows, models_by_row, correct):
                c[(a, eps_key(e))] = correct_mask(m, x_adv, y, batch_size)
                row["attacks"][a][eps_key(e)] = float(np.mean(c[(a, eps_key(e))]))
                row["per_example"]["attacks"][a][eps_key(e)] = stats.encode_mask(c[(a, eps_key(e))])
    for row, c in zip(rows, correct):
        row["robust_to_all"] = robust_to_all(c)
    return {"label": label,
            "surrogate": {"label": label, "path": surrogate.path, "fingerprint": sur_id,
                          "metadata": surrogate.metadata},
            "rows": rows, "crafting": crafting}


# ----------------------------------------------------------------------------------------------
# Reports.

def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}"


ROBUST_HEADERS = ("ROBUST TO ALL", "ALL EPS")


def display_name(results: dict, attack: str) -> str:
    """Column name of an attack, or of a field-protocol set (``results["field"]["sets"]``)."""
    sets = (results.get("field") or {}).get("sets") or {}
    return sets[attack]["display"] if attack in sets else attacks_lib.DISPLAY_NAMES[attack]


def _has_robust(rows) -> bool:
    return any("robust_to_all" in r for r in rows)


def _table2_lines(results: dict, rows: List[dict]) -> List[str]:
    """The Markdown table of one surrogate block (robust-to-all columns when the rows have them)."""
    attacks, eps = results["attacks"], [eps_key(e) for e in results["eps"]]
    robust = _has_robust(rows)
    head = (["TARGET", "CLEAN"] + [display_name(results, a).upper() for a in attacks]
            + (list(ROBUST_HEADERS) if robust else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        best = {e: min(row["attacks"][a][e] for a in attacks) for e in eps}
        cells = []
        for a in attacks:
            parts = []
            for e in eps:
                v = row["attacks"][a][e]
                s = _pct(v)
                parts.append(f"**{s}**" if _pct(best[e]) == s else s)
            cells.append(" / ".join(parts))
        if robust:
            r = row.get("robust_to_all") or {}
            cells.append(" / ".join(_pct(r[e]) if e in r else "—" for e in eps))
            cells.append(_pct(r[ROBUST_ALL_KEY]) if ROBUST_ALL_KEY in r else "—")
        label = row["label"] if row["role"] == "target" else f"*{row['label']}*"
        lines.append("| " + " | ".join([label, _pct(row["clean"])] + cells) + " |")
    return lines


def format_table2(results: dict) -> str:
    """Markdown in Table 2's layout: cells "acc@eps1 / acc@eps2" (%), lowest per eps in bold.

    Rows with ``robust_to_all`` get two more columns (robust to every attack, per eps and over all
    eps). Several surrogates -> one captioned table per surrogate block.
    """
    eps = [eps_key(e) for e in results["eps"]]
    blocks = surrogate_blocks(results)
    robust = any(_has_robust(b["rows"]) for b in blocks)
    what = (f"adversarial examples crafted on the surrogate `{results['surrogate']['path']}`"
            if len(blocks) == 1 else
            f"one table per surrogate ({', '.join(b['label'] for b in blocks)}) the adversarial "
            f"examples are crafted on")
    lines = [f"Accuracy (%) on {results['dataset']}, first {results['num_examples']} test images, "
             f"eps = {' / '.join(eps)}; {what}. Bold: most successful attack per eps.", ""]
    for b in blocks:
        if len(blocks) > 1:
            lines += [f"### Surrogate {b['label']} (`{b['surrogate'].get('path', '')}`)", ""]
        lines += _table2_lines(results, b["rows"]) + [""]
    sanity = ", ".join(f"*{r['label']}*" for b in blocks for r in b["rows"] if r["role"] != "target")
    lines.append(f"{sanity}: the surrogate attacked white-box (sanity row, not a target).")
    options = {a: o for a, o in (results.get("attack_options") or {}).items()
               if o and not results.get("field")}
    if options:
        lines.append("Attack options (not the paper's defaults): " + "; ".join(
            f"{attacks_lib.DISPLAY_NAMES[a]} " + ", ".join(f"{k}={v}" for k, v in sorted(o.items()))
            for a, o in options.items()) + ".")
    if robust:
        lines.append(f"{ROBUST_HEADERS[0]}: fraction of the test images classified correctly under "
                     f"every attack at that eps; {ROBUST_HEADERS[1]}: under every attack at every "
                     f"eps (same crafted examples, per example).")
    if results.get("field"):
        from tf_divtrain import field as field_lib

        lines += [""] + field_lib.format_lines(results)
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["label", "role", "attack", "eps", "accuracy", "craft_seconds", "images_per_sec",
              "surrogate"]


def _csv_text(results: dict) -> str:
    """One line per (surrogate, row, cell); robust-to-all as attack ``robust_to_all`` with eps
    ``<eps>`` or ``all``; the ``surrogate`` column (last, so old column positions hold) labels the
    block."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for b in surrogate_blocks(results):
        s = b["label"]
        for row in b["rows"]:
            w.writerow([row["label"], row["role"], "clean", "", f"{row['clean']:.6f}", "", "", s])
            for a in results["attacks"]:
                for e in (eps_key(v) for v in results["eps"]):
                    c = b["crafting"][a][e]
                    sec = "" if c.get("seconds") is None else f"{c['seconds']:.3f}"
                    ips = "" if c.get("images_per_sec") is None else f"{c['images_per_sec']:.2f}"
                    w.writerow([row["label"], row["role"], a, e, f"{row['attacks'][a][e]:.6f}",
                                sec, ips, s])
            for e, v in (row.get("robust_to_all") or {}).items():
                w.writerow([row["label"], row["role"], "robust_to_all", e, f"{v:.6f}", "", "", s])
    return buf.getvalue()


def plot(results: dict, path: str) -> str:
    """PNG: accuracy vs attack (clean first), one line per row, one panel per eps (one row of
    panels per surrogate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [eps_key(e) for e in results["eps"]]
    names = ["CLEAN"] + [display_name(results, a) for a in results["attacks"]]
    blocks = surrogate_blocks(results)
    fig, axes = plt.subplots(len(blocks), len(eps), figsize=(5.5 * len(eps), 4 * len(blocks)),
                             squeeze=False)
    for ax_row, b in zip(axes, blocks):
        for ax, e in zip(ax_row, eps):
            for row in b["rows"]:
                vals = [row["clean"]] + [row["attacks"][a][e] for a in results["attacks"]]
                style = "--" if row["role"] == "surrogate" else "-"
                ax.plot(names, [100 * v for v in vals], style, marker="o", label=row["label"])
            where = f", surrogate {b['label']}" if len(blocks) > 1 else ""
            ax.set_title(f"{results['dataset']}, eps = {e}{where}")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.tick_params(axis="x", labelrotation=30)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


_write_text = io_utils.atomic_write_text


def write_reports(results: dict, out_dir: str) -> Dict[str, str]:
    """Writes results.json, results.csv, table2.md and accuracy.png into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, n) for k, n in
             (("json", "results.json"), ("csv", "results.csv"), ("table", "table2.md"),
              ("plot", "accuracy.png"))}
    _write_text(paths["json"], json.dumps(results, indent=2, sort_keys=True) + "\n")
    _write_text(paths["csv"], _csv_text(results))
    _write_text(paths["table"], format_table2(results))
    try:
        plot(results, paths["plot"])
    except OSError as e:
        raise io_utils.output_error(paths["plot"], e) from e
    return paths

"""The whole analysis run behind ``python -m tf_divtrain.analyze``: validation, LABEL=DIR
parsing, loading the exports, every analysis, plots and analysis.json."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from tf_divtrain import io_utils

from tf_divtrain.analysis.common import (
    ANALYSES, AnalysisError, GAAS_DEFINITION, _compiled, num_members)
from tf_divtrain.analysis.config import AnalysisConfig
from tf_divtrain.analysis.parts import Parts, data_digest, part_key
from tf_divtrain.analysis.gaas import gaas_analysis
from tf_divtrain.analysis.coherence import (COHERENCE_DEFINITION, MARGIN_DEFINITION,
                                            coherence_stats, summarize_coherence, vanishing_text)
from tf_divtrain.analysis.transfer import transfer_matrix
from tf_divtrain.analysis.whitebox import whitebox_check
from tf_divtrain.analysis.plots import (plot_coherence_hist, plot_gaas, plot_transfer, safe_label)


# ----------------------------------------------------------------------------------------------
# Validation and the whole run.

def load_targets(ensembles: Mapping[str, object], dataset: str,
                 precision: str = "float32") -> Dict[str, object]:
    """Resolves {label: dir or ensemble object}; every dir is checked before any is loaded.

    ``precision``: what the loaded exports compute in (default float32: the cosines behind
    coherence and GAAS sit near 0, where bfloat16's 8-bit mantissa would change what is measured).
    Exports come back with their members as Keras models where that is exact
    (:func:`~tf_divtrain.export.with_members`): per-member gradients and attacks cost 1/N.
    """
    from tf_divtrain import export as export_lib

    for label, t in ensembles.items():
        if isinstance(t, str):
            try:
                export_lib.find_export(t)
            except FileNotFoundError as e:
                raise AnalysisError(f"Ensemble {label!r}: {e}") from None
    out = {}
    for label, t in ensembles.items():
        if isinstance(t, str):
            ens = export_lib.with_members(export_lib.load_ensemble(t, precision=precision))
            problem = export_lib.dataset_mismatch(ens.metadata, dataset)
            if problem:
                raise AnalysisError(f"Ensemble {label!r} ({t}) {problem}; pass --dataset="
                                    f"{ens.metadata.get('dataset')} or an ensemble trained on {dataset}.")
            out[label] = ens
        else:
            out[label] = t
    return out


def computed_on(given, ensemble, precision: str = "float32") -> str:
    """What an ensemble's analyses ran on, for analysis.json (``given``: a dir or an object)."""
    from tf_divtrain import export as export_lib

    if not isinstance(given, str):
        return "the ensemble object passed in"
    if isinstance(ensemble, export_lib.LoadedEnsemble):
        return "the export's served graph"
    if precision != "float32":
        return f"the export's members rebuilt as Keras models in {precision}"
    return "the export's members rebuilt as Keras models (logits checked equal to the served graph's)"


def export_fingerprint(path: str) -> str:
    """The fingerprint of the export at ``path`` (a training out_dir or its saved_model dir)."""
    from tf_divtrain import export as export_lib

    return export_lib.fingerprint(export_lib.find_export(path))


def run_analysis(ensembles: Mapping[str, object], dataset: str, out_dir: str,
                 data_dir: Optional[str] = None, num_examples: int = 500,
                 analyses: Iterable[str] = ANALYSES, gaas_k: Optional[Sequence[int]] = None,
                 gaas_eps: Optional[Sequence[float]] = None, transfer_eps: Optional[float] = None,
                 transfer_iters: int = 20, whitebox_eps: Optional[Sequence[float]] = None,
                 whitebox_iters: int = 40, batch_size: int = 100, seed: int = 0,
                 gaas_blocks: str = "balanced", gaas_num_examples: int = 0,
                 transfer_num_examples: int = 0, whitebox_num_examples: int = 0,
                 x: Optional[np.ndarray] = None,
                 y: Optional[np.ndarray] = None, log: Callable[[str], None] = print,
                 precision: str = "float32", coherence_margin: bool = False,
                 gaas_forward_images: int = 1024) -> dict:
    """:func:`run` of the :class:`AnalysisConfig` with these fields (``x``, ``y``: test data to
    use instead of the dataset's first ``num_examples`` test images; ``log``: progress lines)."""
    cfg = AnalysisConfig(ensembles, dataset, out_dir, data_dir, num_examples, analyses, gaas_k,
                         gaas_eps, transfer_eps, transfer_iters, whitebox_eps, whitebox_iters,
                         batch_size, seed, gaas_blocks, gaas_num_examples, transfer_num_examples,
                         whitebox_num_examples, precision, coherence_margin, gaas_forward_images)
    return run(cfg, x, y, log)


def run(cfg: AnalysisConfig, x: Optional[np.ndarray] = None, y: Optional[np.ndarray] = None,
        log: Callable[[str], None] = print) -> dict:
    """Runs the chosen analyses on every ensemble and writes ``out_dir``/analysis.json + PNGs.

    Resumable: each (ensemble, analysis) result is kept in ``out_dir``/.parts as it finishes
    (:mod:`tf_divtrain.analysis.parts`), and a re-run with the same inputs starts after the last
    finished one and writes the same analysis.json.

    All inputs are validated (:meth:`AnalysisConfig.validate`) before any heavy work. Returns the
    dict written to analysis.json.
    """
    from tf_divtrain import data as data_lib

    cfg = cfg.validate()
    (ensembles, dataset, out_dir, data_dir, num_examples, analyses, gaas_k, gaas_eps, transfer_eps,
     transfer_iters, whitebox_eps, whitebox_iters, batch_size, seed, gaas_blocks, _, _, _,
     precision, coherence_margin, gaas_forward_images) = (
        getattr(cfg, f.name) for f in dataclasses.fields(AnalysisConfig))
    targets = load_targets(ensembles, dataset, precision)
    if "coherence" in analyses:
        small = [lbl for lbl, t in targets.items() if num_members(t) < 2]
        if small:
            raise AnalysisError(f"Coherence needs >= 2 members; {small} have fewer. Drop "
                                f"'coherence' from --analyses or use larger ensembles.")
    if x is None:
        ds = data_lib.load_dataset(dataset, data_dir, test_size=num_examples)
        x, y = ds.x_test, ds.y_test
    else:
        x, y = np.asarray(x, np.float32)[:num_examples], np.asarray(y, np.int64)[:num_examples]
    os.makedirs(out_dir, exist_ok=True)

    n_sub = cfg.subset_sizes(len(x))
    report = {"dataset": dataset, "num_examples": int(len(x)), "seed": int(seed), "precision": precision,
              "analyses": analyses, "subset_sizes": n_sub, "settings": cfg.settings(),
              "computed_on": {label: computed_on(ensembles[label], t, precision)
                              for label, t in targets.items()},
              "ensembles": {}, "files": {}, "warnings": []}
    parts = Parts(out_dir, log)
    common_key = {"dataset": dataset, "data": data_digest(x, y), "seed": int(seed),
                  "precision": precision, "settings": cfg.settings()}  # settings: batch size too
    coh_values, gaas_res = {}, {}
    for label, ens in targets.items():
        ens_id = (export_fingerprint(ensembles[label]) if isinstance(ensembles[label], str) else None)

        def part(name: str, n: int, compute: Callable[[], object]):
            """``compute()`` as JSON-safe data, or its value kept by an interrupted run."""
            key = part_key(ensemble=ens_id, analysis=name, n=int(n), **common_key)
            kept = parts.load(label, name, key) if ens_id else None
            if kept is not None:
                log(f"[{label}] {name}: kept from an interrupted run ({parts.path(label, name)})")
                return kept
            value = _json_safe(compute())
            if ens_id:
                parts.save(label, name, key, value)
            return value

        c = _compiled(ens)
        pred, mem = c.predict(x, batch_size)
        entry = {"source": ensembles[label] if isinstance(ensembles[label], str) else type(ens).__name__,
                 "num_members": c.n, "clean_accuracy": float(np.mean(pred == y)),
                 "member_clean_accuracy": [float(v) for v in np.mean(mem == y[:, None], 0)]}
        if "coherence" in analyses:
            for key, objective in (("coherence", "ce"),) + ((("coherence_margin", "margin"),)
                                                            if coherence_margin else ()):
                def coherence(objective=objective):
                    st = coherence_stats(ens, x, y, batch_size, objective)
                    return {"summary": summarize_coherence(st),
                            "values": st["values"] if objective == "ce" else None}

                got = part(key, len(x), coherence)
                entry[key] = c_ = got["summary"]
                if objective == "ce":
                    coh_values[label] = np.array([np.nan if v is None else v for v in got["values"]],
                                                 np.float64)
                log(f"[{label}] {key}: mean {_num(c_.get('mean'))}, median "
                    f"{_num(c_.get('median'))} ({vanishing_text(c_)})")
        if "gaas" in analyses:
            m = n_sub["gaas"]
            gaas_res[label] = entry["gaas"] = part("gaas", m, lambda: gaas_analysis(
                ens, x[:m], y[:m], gaas_k, gaas_eps, batch_size, gaas_blocks, gaas_forward_images))
            for e, per_k in gaas_res[label]["results"].items():
                log(f"[{label}] GAAS eps={e}: " + ", ".join(
                    f"k={k}: p_all={_num(r['p_all'])}" for k, r in per_k.items()))
        if "transfer" in analyses:
            m = n_sub["transfer"]
            entry["transfer"] = tm = part("transfer", m, lambda: transfer_matrix(
                ens, x[:m], y[:m], transfer_eps, transfer_iters, batch_size, seed))
            path = os.path.join(out_dir, f"transfer_{safe_label(label)}.png")
            plot_transfer(tm["matrix"], label, path, transfer_eps)
            report["files"][f"transfer_{label}"] = path
            log(f"[{label}] transfer eps={transfer_eps:g}: mean off-diagonal success "
                f"{tm['mean_off_diagonal']}")
        if "whitebox" in analyses:
            m = n_sub["whitebox"]
            entry["whitebox"] = wb = part("whitebox", m, lambda: whitebox_check(
                ens, x[:m], y[:m], whitebox_eps, whitebox_iters, batch_size, seed))
            log(f"[{label}] white-box PGD-{whitebox_iters}: clean {wb['clean_accuracy']:.3f}, " +
                ", ".join(f"eps={e}: {a:.3f} (prediction CE: "
                          f"{wb['adversarial_accuracy_prediction_ce'][e]:.3f})"
                          for e, a in wb["adversarial_accuracy"].items()))
            for key in ("warning", "objective_warning"):
                if key in wb:
                    report["warnings"].append(f"[{label}] {wb[key]}")
                    log(f"[{label}] {wb[key]}")
        if "autoattack" in analyses:  # ART's APGD-CE + APGD-DLR on the white-box subset and eps
            from tf_divtrain.analysis.autoattack import autoattack_check

            m = n_sub["whitebox"]
            entry["autoattack"] = aa = part("autoattack", m, lambda: autoattack_check(
                ens, x[:m], y[:m], whitebox_eps, batch_size=batch_size, seed=seed))
            log(f"[{label}] AutoAttack (ART APGD-CE, APGD-DLR): " + ", ".join(
                f"eps={e}: {a:.3f}" for e, a in aa["robust_accuracy"].items()))
        report["ensembles"][label] = entry
    if coh_values:
        report["coherence_definition"] = COHERENCE_DEFINITION
        if coherence_margin:
            report["coherence_margin_definition"] = MARGIN_DEFINITION
        path = plot_coherence_hist(coh_values, os.path.join(out_dir, "coherence_hist.png"),
                                   f"Coherence of member input gradients ({dataset})")
        report["files"]["coherence_hist"] = path
    if gaas_res:
        path = plot_gaas(gaas_res, os.path.join(out_dir, "gaas.png"),
                         f"GAAS ({dataset}): probability of k orthogonal adversarial directions")
        report["files"]["gaas"] = path
        report["gaas_definition"] = GAAS_DEFINITION
    report["gradient_masking_suspected"] = any(
        e.get("whitebox", {}).get("gradient_masking_suspected", False)
        for e in report["ensembles"].values())
    path = os.path.join(out_dir, "analysis.json")
    report["files"]["analysis_json"] = path
    report = _json_safe(report)
    io_utils.atomic_write_json(path, report, indent=2, allow_nan=False)
    parts.clear()  # analysis.json holds every part now
    return report


def _num(v) -> str:
    """A statistic for a log line: ``0.123``, or ``nan`` where it is undefined (None in JSON)."""
    return "nan" if v is None else f"{v:.3f}"


def _json_safe(o):
    """NaN/inf -> None, numpy scalars/arrays -> Python, recursively."""
    if isinstance(o, Mapping):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return _json_safe(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o

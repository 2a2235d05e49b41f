"""``AnalysisConfig``: every setting of an analysis run, validated once (as ``TrainConfig`` is for
training and ``EvalConfig`` for evaluation). The ``analyze`` CLI fills it from its flags;
``run_analysis`` takes the same fields as keywords."""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np

from tf_divtrain import labels as labels_lib
from tf_divtrain.analysis.common import (ANALYSES, AnalysisError, BLOCK_MODES, DEFAULT_ATTACK_EPS,
                                         DEFAULT_GAAS_EPS, DEFAULT_GAAS_K, check_eps)
from tf_divtrain.analysis.gaas import check_gaas_k

OPTIONAL_ANALYSES = ("autoattack",)  # not in the default list: needs the '.[eval]' extra (ART)


def parse_ensembles(spec) -> Dict[str, str]:
    """``"T_Base=runs/base,T_Div=runs/div"`` (or a list / dict) -> ordered {label: dir}."""
    return dict(labels_lib.parse_label_dirs(spec, "Ensemble", "--ensembles=T_Base=runs/base,T_Div=runs/div",
                                            AnalysisError))


def check_analyses(analyses) -> list:
    if isinstance(analyses, str):
        analyses = [a.strip() for a in analyses.split(",") if a.strip()]
    valid = ANALYSES + OPTIONAL_ANALYSES
    bad = [a for a in analyses if a not in valid]
    if bad or not analyses:
        raise AnalysisError(f"Unknown analysis {bad}; valid: {', '.join(valid)}.")
    if "autoattack" in analyses:
        from tf_divtrain.analysis import autoattack

        try:
            autoattack.require_art()
        except autoattack.AutoAttackUnavailable as e:
            raise AnalysisError(str(e)) from None
    return list(dict.fromkeys(analyses))


def _to_list(v, cast):
    if v is None:
        return None
    if isinstance(v, str):
        return [cast(s.strip()) for s in v.split(",") if s.strip()]
    if isinstance(v, (int, float)):
        return [cast(v)]
    return [cast(s) for s in v]


@dataclasses.dataclass
class AnalysisConfig:
    """Every setting of an analysis run; :meth:`validate` checks them all and fills the defaults.

    ``ensembles``: {label: training out_dir / saved_model dir / ensemble object} or
    ``"LABEL=DIR,..."``. GAAS, the transfer matrix and the white-box check use only the first
    ``gaas_num_examples`` / ``transfer_num_examples`` / ``whitebox_num_examples`` of the
    ``num_examples`` test images (0 = all; the white-box subset defaults to the transfer one).
    Unset eps lists take the dataset's defaults (Fig. 5's GAAS eps, Table 2's attack eps).
    """

    ensembles: object = None
    dataset: str = "mnist"
    out_dir: str = ""
    data_dir: Optional[str] = None
    num_examples: int = 500
    analyses: object = ANALYSES
    gaas_k: object = None
    gaas_eps: object = None
    transfer_eps: Optional[float] = None
    transfer_iters: int = 20
    whitebox_eps: object = None
    whitebox_iters: int = 40
    batch_size: int = 100
    seed: int = 0
    gaas_blocks: str = "balanced"
    gaas_num_examples: int = 0
    transfer_num_examples: int = 0
    whitebox_num_examples: int = 0
    precision: str = "float32"
    coherence_margin: bool = False
    gaas_forward_images: int = 1024

    def validate(self) -> "AnalysisConfig":
        """A copy with every field checked and resolved (lists, defaults, subset sizes), before
        any model is loaded; bad input -> :class:`AnalysisError`."""
        from tf_divtrain import data as data_lib

        try:
            data_lib.check_dataset_name(self.dataset)
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        ds = self.dataset
        analyses = check_analyses(self.analyses)
        ensembles = self.ensembles
        if isinstance(ensembles, str) or not isinstance(ensembles, Mapping):
            ensembles = parse_ensembles(ensembles)
        gaas_k = [check_gaas_k(k) for k in (_to_list(self.gaas_k, int) or list(DEFAULT_GAAS_K))]
        gaas_eps = [check_eps(e, "GAAS eps") for e in (_to_list(self.gaas_eps, float) or DEFAULT_GAAS_EPS[ds])]
        whitebox_eps = [check_eps(e, "white-box eps")
                        for e in (_to_list(self.whitebox_eps, float) or DEFAULT_ATTACK_EPS[ds])]
        transfer_eps = check_eps(self.transfer_eps if self.transfer_eps is not None
                                 else DEFAULT_ATTACK_EPS[ds][-1], "transfer eps")
        if self.gaas_blocks not in BLOCK_MODES:
            raise AnalysisError(f"Unknown GAAS block mode {self.gaas_blocks!r}; valid: {', '.join(BLOCK_MODES)}.")
        if min(self.num_examples, self.batch_size, self.transfer_iters, self.whitebox_iters) < 1:
            raise AnalysisError("num_examples, batch_size, transfer_iters and whitebox_iters must be >= 1.")
        if min(self.gaas_num_examples, self.transfer_num_examples, self.whitebox_num_examples) < 0:
            raise AnalysisError("gaas/transfer/whitebox_num_examples must be >= 0 (0 = num_examples).")
        if self.gaas_forward_images < 0:
            raise AnalysisError(f"gaas_forward_images={self.gaas_forward_images} must be >= 0 "
                                f"(0 = batch_size perturbed images per forward pass).")
        d = int(np.prod(data_lib.DATASETS[ds][0]))
        if max(gaas_k) > d:
            raise AnalysisError(f"GAAS k={max(gaas_k)} exceeds the input dimension {d} of {ds}.")
        return dataclasses.replace(
            self, ensembles=ensembles, analyses=analyses, gaas_k=gaas_k,
            gaas_eps=gaas_eps, whitebox_eps=whitebox_eps, transfer_eps=transfer_eps,
            whitebox_num_examples=self.whitebox_num_examples or self.transfer_num_examples)

    def subset_sizes(self, n: int) -> Dict[str, int]:
        """Images per analysis when ``n`` test images are loaded (a validated config)."""
        want = {"gaas": self.gaas_num_examples, "transfer": self.transfer_num_examples,
                "whitebox": self.whitebox_num_examples}
        return {"coherence": int(n), **{a: int(min(v or self.num_examples, n)) for a, v in want.items()}}

    def settings(self) -> dict:
        """The ``settings`` entry of analysis.json (a validated config)."""
        from tf_divtrain.analysis.common import PGD_STEP_FACTOR

        return {"gaas_k": list(self.gaas_k), "gaas_eps": list(self.gaas_eps),
                "gaas_blocks": self.gaas_blocks,
                "gaas_forward_images": int(self.gaas_forward_images),
                "transfer_eps": self.transfer_eps,
                "transfer_iters": int(self.transfer_iters), "whitebox_eps": list(self.whitebox_eps),
                "whitebox_iters": int(self.whitebox_iters),
                "pgd_step": f"{PGD_STEP_FACTOR:g} * eps / iters, random start",
                "batch_size": int(self.batch_size)}


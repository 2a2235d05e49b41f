"""Analyses of trained ensembles (paper §3.2, §4.3, §4.4; issue 5).

Every function takes plain arguments (an ensemble object, numpy arrays, numbers); the absl CLI
lives in :mod:`tf_divtrain.analyze`. An *ensemble* here is anything with
``member_logits(x) -> [B, N, C]``: a :class:`tf_divtrain.models.Ensemble` (keras members) or an
export :class:`tf_divtrain.export.LoadedEnsemble`. Its prediction is the argmax of the average
member softmax (``models.ensemble_probabilities``), as everywhere else in the project.

Analyses
--------
* **Coherence** (Eq 7) of the members' input gradients ``grad_x CE_i(x, y)``, per example, with
  :func:`tf_divtrain.gal.scale_free_coherence` (true cosines at any scale; examples whose member
  gradients vanish are counted, not scored; optionally of the logit margin's gradients). Keras ensembles use
  :func:`tf_divtrain.gal.member_input_gradients` itself; exports (stacked logits only) use
  :func:`member_input_gradients` below, which gives the same per-member gradients in one backward
  pass over N tiled copies of the batch (copy i feeds only member i's CE).
* **GAAS** (Tramèr et al. 2017, §3; paper §4.4) -- see :func:`gaas_directions` and
  :func:`gaas_analysis` for the exact construction and the reported probabilities.
* **Transferability matrix** inside an ensemble -- :func:`transfer_matrix`.
* **White-box check** (gradient-masking alarm) -- :func:`whitebox_check`.

Attacks are :func:`tf_divtrain.attacks.pgd` (L-inf PGD on the average member CE, outputs inside
the eps-ball and [0, 1]), compiled once per (ensemble, eps) with ``tf.function`` (the member
to attack is a tensor argument).

Layout: ``common`` (defaults, errors, per-member gradients, PGD), ``coherence``, ``gaas`` (with the
regular Hadamard construction), ``transfer``, ``whitebox``, ``plots``, ``config`` (``AnalysisConfig``), ``parts`` (each finished (ensemble, analysis) kept on disk, so a killed run resumes), ``runner`` (``run_analysis``, ``run``).
Everything is re-exported here, so ``from tf_divtrain import analysis; analysis.X`` keeps working.
"""

from __future__ import annotations

from tf_divtrain.analysis.common import (  # noqa: F401
    ANALYSES,
    AnalysisError,
    BLOCK_MODES,
    DEFAULT_ATTACK_EPS,
    DEFAULT_GAAS_EPS,
    DEFAULT_GAAS_K,
    GAAS_DEFINITION,
    MASKING_RATIO,
    PGD_STEP_FACTOR,
    _Compiled,
    _attack_all,
    _compiled,
    _logits_fn,
    _nan_to_none,
    _pgd_fn,
    check_eps,
    ensemble_log_prediction,
    member_input_gradients,
    num_members,
    predictions,
    summarize,
)
from tf_divtrain.analysis.gaas import (  # noqa: F401
    block_assignment,
    check_gaas_k,
    gaas_analysis,
    gaas_directions,
    regular_hadamard,
    supported_hadamard_orders,
)
from tf_divtrain.analysis.coherence import (  # noqa: F401
    COHERENCE_DEFINITION,
    MARGIN_DEFINITION,
    coherence_stats,
    coherence_values,
    summarize_coherence,
    vanishing_text,
)
from tf_divtrain.analysis.transfer import (  # noqa: F401
    transfer_matrix,
)
from tf_divtrain.analysis.whitebox import (  # noqa: F401
    WHITEBOX_OBJECTIVES,
    whitebox_check,
)
from tf_divtrain.analysis.plots import (  # noqa: F401
    _plt,
    plot_coherence_hist,
    plot_gaas,
    plot_transfer,
    safe_label,
)
from tf_divtrain.analysis.config import (  # noqa: F401
    AnalysisConfig,
    OPTIONAL_ANALYSES,
    _to_list,
    check_analyses,
    parse_ensembles,
)
from tf_divtrain.analysis.runner import (  # noqa: F401
    _json_safe,
    load_targets,
    run,
    run_analysis,
)

"""tf_divtrain: Diversity Training (Kariyappa & Qureshi, 2019) for TensorFlow 2 / Keras 3.

The public API below is imported lazily (PEP 562): ``import tf_divtrain`` loads no TensorFlow;
the first use of a name imports its module. Use GAL on your own Keras models::

    import tf_divtrain as td
    ens = td.DiversityEnsemble([model_a, model_b, model_c], gal_lambda=0.5)   # Eq 9 in fit()
    ens.compile(optimizer="adam"); ens.fit(x, y, epochs=3)
    td.coherence_values(ens, x_test, y_test)                                   # Eq 7 per example

Groups: GAL maths (Eqs 6-9) -- the training step and its objectives -- the Keras model and the
CLI trainer -- data maps -- export/load -- attacks -- evaluation and analysis entry points.
The command-line tools are the modules ``train``, ``evaluate``, ``analyze`` and ``report``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    # GAL maths (paper §3.2-3.3)
    "member_input_gradients": ("gal", "member_input_gradients"),
    "member_cross_entropy": ("gal", "member_cross_entropy"),
    "pairwise_cosine": ("gal", "pairwise_cosine"),
    "pair_cosines": ("gal", "pair_cosines"),
    "coherence": ("gal", "coherence"),
    "gradient_alignment_loss": ("gal", "gradient_alignment_loss"),
    "div_loss_per_example": ("gal", "div_loss_per_example"),
    # the shared training step and its objectives (injection point for new methods)
    "Objective": ("step", "Objective"),
    "DiversityObjective": ("step", "DiversityObjective"),
    "CrossEntropyObjective": ("step", "CrossEntropyObjective"),
    "apply_step": ("step", "apply_step"),
    # models and training
    "DiversityEnsemble": ("diversity", "DiversityEnsemble"),
    "EnsembleLike": ("protocols", "EnsembleLike"),
    "Ensemble": ("models", "Ensemble"),
    "build_model": ("models", "build_model"),
    "build_ensemble": ("models", "build_ensemble"),
    "TrainConfig": ("training", "TrainConfig"),
    "Trainer": ("training", "Trainer"),
    "run_training": ("training", "train"),
    # the training loop's hooks (tensorflow/models "actions"): run_training(cfg, hooks=[...])
    "Hook": ("loop", "Hook"),
    "LoopState": ("loop", "LoopState"),
    "NaNGuard": ("loop", "NaNGuard"),
    "TrainingError": ("loop", "TrainingError"),
    # data (paper §4.1)
    "load_dataset": ("data", "load_dataset"),
    "augment_map": ("data", "augment_map"),
    "noise_map": ("data", "noise_map"),
    "diversity_map": ("data", "diversity_map"),
    # export
    "export_ensemble": ("export", "export_ensemble"),
    "load_ensemble": ("export", "load_ensemble"),
    # attacks, evaluation (Table 2) and analyses (§4.3-4.4)
    "map_batches": ("batching", "map_batches"),
    "make_attack": ("attacks", "make_attack"),
    "ATTACKS": ("attacks", "ATTACKS"),
    "evaluate_transfer": ("evaluation", "evaluate"),
    "run_analysis": ("analysis", "run_analysis"),
    "coherence_values": ("analysis", "coherence_values"),
    "gaas_analysis": ("analysis", "gaas_analysis"),
    "transfer_matrix": ("analysis", "transfer_matrix"),
    "whitebox_check": ("analysis", "whitebox_check"),
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'tf_divtrain' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"tf_divtrain.{module}"), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from tf_divtrain.analysis import (coherence_values, gaas_analysis, run_analysis,  # noqa: F401
                                      transfer_matrix, whitebox_check)
    from tf_divtrain.attacks import ATTACKS, make_attack  # noqa: F401
    from tf_divtrain.data import augment_map, diversity_map, load_dataset, noise_map  # noqa: F401
    from tf_divtrain.diversity import DiversityEnsemble  # noqa: F401
    from tf_divtrain.evaluation import evaluate as evaluate_transfer  # noqa: F401
    from tf_divtrain.export import export_ensemble, load_ensemble  # noqa: F401
    from tf_divtrain.batching import map_batches  # noqa: F401
    from tf_divtrain.loop import Hook, LoopState, NaNGuard, TrainingError  # noqa: F401
    from tf_divtrain.gal import (coherence, div_loss_per_example, gradient_alignment_loss,  # noqa: F401
                                 member_cross_entropy, member_input_gradients, pair_cosines,
                                 pairwise_cosine)
    from tf_divtrain.models import Ensemble, build_ensemble, build_model  # noqa: F401
    from tf_divtrain.protocols import EnsembleLike  # noqa: F401
    from tf_divtrain.step import (CrossEntropyObjective, DiversityObjective, Objective,  # noqa: F401
                                  apply_step)
    from tf_divtrain.training import Trainer, TrainConfig  # noqa: F401
    from tf_divtrain.training import train as run_training  # noqa: F401

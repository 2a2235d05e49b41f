"""A training run's settings: ``TrainConfig`` (every field, one validation) and how a mode's batch
is split between its sources (``batch_parts``). The modes themselves: :mod:`tf_divtrain.modes`."""

from __future__ import annotations

import dataclasses
from typing import Optional


from tf_divtrain import data as data_lib
from tf_divtrain import distribute as distribute_lib
from tf_divtrain import ens_adv as ens_adv_lib
from tf_divtrain import loop as loop_lib
from tf_divtrain import methods as methods_lib
from tf_divtrain import models as models_lib
from tf_divtrain import modes as modes_lib
from tf_divtrain import precision as precision_lib

# Views of the one mode registry (tf_divtrain.modes) under the names the trainer uses.
MODES = {name: m.sources for name, m in modes_lib.MODES.items()}
GAL_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.gal)
METHOD_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.method)
ADV_MODES = tuple(name for name, m in modes_lib.MODES.items() if m.adv)
ADV_LABELS = ens_adv_lib.ADV_LABELS
STRATEGIES = distribute_lib.STRATEGIES  # tf_divtrain.distribute, shared with evaluate
# mixed_float16: a non-finite loss makes LossScaleOptimizer skip the step and halve its scale; this
# many in a row (scale / 2^25) means the run itself diverged, and the NaN guard stops it.
MAX_SKIPPED_FP16_STEPS = 25
TrainingError = loop_lib.TrainingError  # a run cannot start or continue (config mismatch, NaN, ...)

def _resumable(default):
    """A config field that may differ when a run is resumed (it does not change the result)."""
    return dataclasses.field(default=default, metadata={"resumable": True})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the CLI fills it from absl flags)."""

    # Fields marked resumable may change between a run and its resumption (they do not change
    # the result); every other field must match the run's config.json (see prepare_out_dir).
    dataset: str = "mnist"
    data_dir: Optional[str] = _resumable(None)
    model: str = "conv3"
    ensemble_size: int = 5
    mode: str = "baseline"
    gal_lambda: float = 0.5
    epochs: int = _resumable(10)
    max_steps: int = _resumable(0)  # 0 = no cap
    batch_size: int = 128
    learning_rate: float = 1e-3
    noise_eps: Optional[float] = None  # None = dataset default (0.3 MNIST, 0.09 CIFAR-10)
    adv_eps: Optional[float] = None  # None = dataset default (same as noise_eps)
    static_model: str = ""
    seed: int = 0
    out_dir: str = _resumable("runs/default")
    train_examples: int = 0  # 0 = all
    validation_examples: int = 0
    eval_examples: int = _resumable(1000)  # test subset for metrics.json (0 = whole test split)
    strategy: str = _resumable("default")
    jit_compile: bool = _resumable(False)
    log_every: int = _resumable(20)
    checkpoint_every: int = _resumable(100)
    fresh: bool = _resumable(False)
    progress: bool = _resumable(True)
    download: bool = _resumable(False)
    deterministic: bool = _resumable(True)  # tf.config.experimental.enable_op_determinism
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (tf_divtrain.precision)
    adv_labels: str = "predicted"  # D_adv FGSM labels: the static model's prediction, or "true"
    adv_share: float = 0.5  # fraction of each batch that is D_adv in the ens_adv modes
    # Modes adp / trs / dverge: "name=value,..." overriding the method's defaults (see
    # tf_divtrain.methods). TRS's radius schedule spans --epochs (a resumed run with other
    # --epochs follows the new schedule from its current epoch on).
    method_params: str = ""

    def validate(self) -> "TrainConfig":
        data_lib.check_dataset_name(self.dataset)
        models_lib.member_names(self.model, self.ensemble_size)
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; valid: {', '.join(MODES)}.")
        n = len(models_lib.member_names(self.model, self.ensemble_size))
        if self.mode in GAL_MODES and n < 2:
            raise ValueError(f"mode={self.mode} needs an ensemble of at least 2 members (GAL compares "
                             f"pairs), got {n}; raise --ensemble_size.")
        self._validate_method()
        if self.gal_lambda < 0:
            raise ValueError(f"gal_lambda must be >= 0, got {self.gal_lambda}.")
        for name in ("noise_eps", "adv_eps"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} is outside [0, 1] (epsilons are in [0, 1] pixel scale).")
        if self.mode in ADV_MODES and not self.static_model:
            raise ValueError(f"mode={self.mode} needs --static_model: the out_dir (or saved_model dir)"
                             f" of a pre-trained model of the same architecture.")
        precision_lib.check_precision(self.precision)
        if self.adv_labels not in ADV_LABELS:
            raise ValueError(f"Unknown adv_labels {self.adv_labels!r}; valid: {', '.join(ADV_LABELS)} "
                             f"('predicted' avoids label leaking, Kurakin et al. 2016).")
        if not 0.0 < self.adv_share < 1.0:
            raise ValueError(f"adv_share={self.adv_share} must be in (0, 1): the fraction of each batch "
                             f"that is D_adv in the ens_adv modes (default 0.5).")
        if self.batch_size < len(MODES[self.mode]):
            raise ValueError(f"batch_size={self.batch_size} is too small for mode={self.mode}.")
        batch_parts(self.mode, self.batch_size, self.adv_share)
        distribute_lib.check_strategy(self.strategy)
        if self.learning_rate <= 0 or self.epochs < 0 or self.max_steps < 0:
            raise ValueError("learning_rate must be > 0; epochs and max_steps must be >= 0.")
        return self

    def _validate_method(self) -> None:
        if self.mode not in METHOD_MODES:
            if self.method_params:
                raise ValueError(f"method_params={self.method_params!r} is only for the modes "
                                 f"{', '.join(METHOD_MODES)}; mode={self.mode} takes none (drop "
                                 f"--method_params, or pick one of those modes).")
            return
        names = models_lib.member_names(self.model, self.ensemble_size)
        if len(names) < 2:
            raise ValueError(f"mode={self.mode} needs an ensemble of at least 2 members (its diversity "
                             f"term compares members), got {len(names)}; raise --ensemble_size.")
        if self.mode == "dverge" and len(set(names)) > 1:
            raise ValueError(f"mode=dverge distils every member at the same layer index, which needs "
                             f"members of one architecture (as in the authors' code); got "
                             f"{', '.join(names)}. Use --model=<one name> with --ensemble_size.")
        self.method_config()
        refused = modes_lib.check_precision(self.mode, self.precision)
        if refused:
            raise ValueError(refused)

    def method_config(self):
        """The validated hyper-parameters of a method mode (defaults + ``method_params``), else None."""
        if self.mode not in METHOD_MODES:
            return None
        return methods_lib.config_from_string(self.mode, self.method_params)

    @property
    def members(self):
        return models_lib.member_names(self.model, self.ensemble_size)

    def resolved_noise_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.noise_eps is None else self.noise_eps

    def resolved_adv_eps(self) -> float:
        return data_lib.default_noise_eps(self.dataset) if self.adv_eps is None else self.adv_eps

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


RESUMABLE_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))


def batch_parts(mode: str, batch_size: int, adv_share: float = 0.5) -> list:
    """Sizes of the contiguous parts of a batch, in ``MODES[mode]`` order.

    Without D_adv: equal parts (remainder to the first). With D_adv: the last part holds
    ``round(adv_share * B)`` examples and the others split the rest equally -- so ens_adv and
    ens_adv_div craft the same number of D_adv examples per step.
    """
    sources = MODES[mode]
    if "adv" not in sources:
        return data_lib.split_sizes(batch_size, len(sources))
    n_adv = int(round(adv_share * batch_size))
    rest = batch_size - n_adv
    if n_adv < 1 or rest < len(sources) - 1:
        raise ValueError(f"batch_size={batch_size} with adv_share={adv_share} leaves {n_adv} D_adv and "
                         f"{rest} other examples for mode={mode}; raise --batch_size.")
    return data_lib.split_sizes(rest, len(sources) - 1) + [n_adv]



"""Numeric precision of a run: float32, mixed_bfloat16 or mixed_float16 (Keras dtype policies).

What "mixed" means here, everywhere in the package:

* Variables (weights, optimizer slots) stay float32, so a checkpoint written in one precision
  restores in another, and the SavedModel export is identical in structure.
* Layers compute in the reduced dtype (Keras autocasts their float32 inputs).
* Member logits are cast to float32 as they leave a member (``models.member_logits``), so CE,
  the input gradients' cosines (Eq 6), coherence (Eq 7), GAL (Eq 8) and Eq 9 are float32 maths on
  float32 tensors. The input gradient itself carries the reduced precision of the backward pass.
* ``mixed_float16`` (GPUs without bfloat16) needs loss scaling: the optimizer is a Keras
  ``LossScaleOptimizer`` (dynamic scale), and in GAL modes the *inner* input-gradient loss is
  scaled by the same dynamic scale and unscaled in float32 afterwards (``gal.member_input_gradients``
  ``loss_scale``), so small input gradients do not flush to zero in float16; an inner overflow makes
  the outer gradients non-finite, the optimizer skips that step and halves the scale -- the same
  recovery as for the outer loss. The cosine is scale-invariant, so only under/overflow matters.
* Exports and evaluation numbers are float32: training in a mixed precision exports a float32
  copy of the weights (``models.clone_ensemble``), and attacks/analyses run in float32 unless the
  user asks otherwise on their CLI.

``auto`` picks ``mixed_bfloat16`` where the hardware runs bfloat16 natively (a CPU with
AVX512_BF16 or AMX-BF16, or a GPU of compute capability >= 8.0) and ``float32`` elsewhere, with a
message saying which and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CHOICES = PRECISIONS + ("auto",)


def check_precision(name: str, allow_auto: bool = False) -> str:
    valid = CHOICES if allow_auto else PRECISIONS
    if name not in valid:
        raise ValueError(f"Unknown precision {name!r}; valid: {', '.join(valid)}.")
    return name


def compute_dtype(precision: str) -> str:
    return {"float32": "float32", "mixed_bfloat16": "bfloat16",
            "mixed_float16": "float16"}[check_precision(precision)]


CPUINFO_ENV = "TF_DIVTRAIN_CPUINFO"  # tests: a fake /proc/cpuinfo (this file's path)


def _cpu_flags() -> set:
    try:
        with open(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bfloat16() -> Optional[str]:
    """Why this machine runs bfloat16 natively (a short string), or None if it does not."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cc and tuple(cc) >= (8, 0):
            return f"GPU with compute capability {cc[0]}.{cc[1]}"
    flags = _cpu_flags() & {"avx512_bf16", "amx_bf16"}
    if flags:
        return "CPU with " + " and ".join(sorted(flags))
    return None


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def emulation_warning(precision: str) -> Optional[str]:
    """One line if this machine would emulate ``precision`` (no GPU, and a CPU without the
    instructions for its dtype), naming the missing CPU feature and suggesting ``auto``; else None.
    A CPU emulating bfloat16 ran a GAL run more than 5x slower than float32 (issue 25)."""
    if precision not in ("mixed_bfloat16", "mixed_float16") or _gpus():
        return None
    need = ({"avx512_bf16", "amx_bf16"} if precision == "mixed_bfloat16"
            else {"avx512_fp16", "amx_fp16"})
    if _cpu_flags() & need:
        return None
    names = " or ".join(n.upper().replace("AMX_", "AMX-") for n in sorted(need))
    return (f"warning: --precision={precision} is emulated on this CPU (no {names} in its flags), "
            f"typically several times slower than float32; use --precision=auto "
            f"({'mixed_bfloat16' if native_bfloat16() else 'float32'} here)")


def resolve(precision: str, log: Optional[logging.Logger] = None) -> str:
    """``auto`` -> mixed_bfloat16 on native-bfloat16 hardware, else float32 (says which, why).
    An explicit reduced precision this hardware emulates gets :func:`emulation_warning`."""
    check_precision(precision, allow_auto=True)
    if precision != "auto":
        warning = emulation_warning(precision)
        if warning:
            (log.warning if log else _stderr)(warning)
        return precision
    why = native_bfloat16()
    chosen = "mixed_bfloat16" if why else "float32"
    msg = (f"precision=auto -> {chosen} ("
           + (f"{why})" if why else "no native bfloat16: no AVX512_BF16/AMX-BF16 CPU flag, no GPU of "
              "compute capability >= 8.0; bfloat16 would be emulated and slower)"))
    (log.info if log else print)(msg)
    return chosen


BATCH_NORM_MODELS = ("resnet20", "resnet26")  # members with BatchNormalization (models.py)


def serial_ops_for_determinism(precision: str, objective: str, members, deterministic: bool) -> bool:
    """True when a bitwise-repeatable run needs one inter-op thread: mixed_bfloat16, an input-gradient
    (GAL) objective and batch-norm members, with ``deterministic`` on.

    Measured on a 2-core Xeon (AVX-512, AMX; TF 2.21), ResNet-20 x 2, 4 GAL steps, two fresh Trainers
    with one seed (results/studies/determinism_probe): with TensorFlow's default inter-op pool, 3 of 4
    repetitions ended on different weights (max |dw| 6e-4 to 4e-3; the same with oneDNN capped below
    AMX); with one inter-op thread, 4 of 4 were identical. Float32, bfloat16 CE-only steps and the
    batch-norm-free Conv-3 / Conv-4 were identical either way. Some concurrently scheduled bfloat16
    kernel of the double backprop is the cause; which one is not measured. Cost of one inter-op
    thread, same machine: ResNet-20 x 5 bfloat16 GAL step 1.21x slower (Conv-3 x 5: 1.38x, which is
    why the rule stays this narrow). TRS / DVERGE with batch-norm members in bfloat16 were not measured.
    """
    return (deterministic and precision == "mixed_bfloat16" and objective == "gal"
            and any(m in BATCH_NORM_MODELS for m in members))


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


@contextlib.contextmanager
def policy_scope(precision: str):
    """Builds Keras layers under ``precision``'s dtype policy, restoring the global one after."""
    import keras

    check_precision(precision)
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


def main() -> None:
    """``python -m tf_divtrain.precision``: prints what ``auto`` resolves to (for shell presets)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print("mixed_bfloat16" if native_bfloat16() else "float32")


if __name__ == "__main__":
    main()

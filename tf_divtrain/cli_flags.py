"""Flags and error exits shared by the CLIs (train, evaluate, analyze, report).

Each CLI defines its flags on a ``FlagValues`` in ``define_flags(fv)`` (called by ``run()``, not at
import) and reads them only in ``main(argv, fv=None)``: library functions take plain arguments.
The flags several CLIs have -- ``--dataset`` / ``--data_dir`` and ``--precision`` -- are defined
here once, with one validator and one help text each; :func:`fail` is the one way a CLI reports
bad input (``error: ...`` on stderr, exit status 2).
"""

from __future__ import annotations

import sys
from typing import NoReturn, Optional, Sequence

from absl import flags

from tf_divtrain import precision as precision_lib

USAGE_ERROR = 2


def define_dataset_flags(fv: flags.FlagValues, default: Optional[str] = "mnist",
                         default_help: str = "") -> None:
    """``--dataset`` (validated against ``data.DATASETS``; ``default=None`` lets the CLI infer it)
    and ``--data_dir`` (default ``$TF_DIVTRAIN_DATA``)."""
    from tf_divtrain import data as data_lib  # here, not at import: the report CLI loads no TensorFlow

    names = ", ".join(sorted(data_lib.DATASETS))
    flags.DEFINE_string("dataset", default, f"One of {names}{default_help}. Every export used must "
                        "have been trained on it.", flag_values=fv)
    flags.register_validator("dataset", lambda v: v is None or v in data_lib.DATASETS,
                             message=f"--dataset must be one of {names}.", flag_values=fv)
    flags.DEFINE_string("data_dir", None, f"Folder with <dataset>.npz; default ${data_lib.ENV_VAR}, "
                        "else ~/.cache/tf_divtrain/data.", flag_values=fv)


def define_precision_flag(fv: flags.FlagValues, why: str, default: str = "float32",
                          choices: Sequence[str] = precision_lib.PRECISIONS) -> None:
    """``--precision`` with the CLI's own reason for its default (``why``)."""
    flags.DEFINE_enum("precision", default, list(choices), f"Compute precision ({', '.join(choices)}). "
                      + why, flag_values=fv)


def fail(message) -> NoReturn:
    """Reports bad input the same way in every CLI: ``error: <message>`` on stderr, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


__all__ = ["define_dataset_flags", "define_precision_flag", "fail", "USAGE_ERROR"]

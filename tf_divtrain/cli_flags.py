"""Flags and error exits shared by the CLIs (train, evaluate, analyze, report).

Each CLI defines its flags on a ``FlagValues`` in ``define_flags(fv)`` (called by ``run()``, not at
import) and reads them only in ``main(argv, fv=None)``: library functions take plain arguments.
The flags several CLIs have -- ``--dataset`` / ``--data_dir`` and ``--precision`` -- are defined
here once, with one validator and one help text each; :func:`fail` is the one way a CLI reports
bad input (``error: ...`` on stderr, exit status 2). :func:`run_app` is every CLI's ``app.run``:
a flag error is one short ``error:`` line (absl would print every flag's value before it), and an
unusable file (:class:`tf_divtrain.io_utils.FileProblem`) is reported the same way.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

from tf_divtrain import io_utils
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


def short_flag_error(error: Exception, fv: flags.FlagValues) -> str:
    """absl's flag error without the ``flags a=1, b=2, ...:`` value dump it puts before a
    validator's message (a multi-flag validator lists every flag it covers)."""
    prefixes = set()
    for flag in fv._flags().values():  # noqa: SLF001 -- absl has no public validator listing
        for v in getattr(flag, "validators", ()):
            try:
                prefixes.add(v.print_flags_with_values(fv) + ": ")
            except Exception:  # noqa: BLE001 -- a flag absl could not set has no value to print
                pass
    lines = []
    for line in str(error).splitlines():
        for p in sorted(prefixes, key=len, reverse=True):
            if line.startswith(p):
                line = line[len(p):]
                break
        lines.append(line.strip())
    return "; ".join(l for l in lines if l)


def parse_flags(argv, fv: flags.FlagValues = flags.FLAGS):
    """absl ``flags_parser``: parses ``argv`` into ``fv``; a bad flag -> :func:`fail` (one line)."""
    try:
        return fv(argv)
    except flags.Error as e:
        fail(short_flag_error(e, fv))


def guarded(main: Callable) -> Callable:
    """``main`` with unusable files (``io_utils.FileProblem``) reported by :func:`fail`."""
    def wrapped(argv, *args, **kwargs):
        try:
            return main(argv, *args, **kwargs)
        except io_utils.FileProblem as e:
            fail(e)
    return wrapped


def run_app(main: Callable, fv: flags.FlagValues = flags.FLAGS) -> None:
    """``absl.app.run(main)`` with :func:`parse_flags` and :func:`guarded`: every CLI's entry."""
    app.run(guarded(main), flags_parser=lambda argv: parse_flags(argv, fv))


__all__ = ["define_dataset_flags", "define_precision_flag", "fail", "parse_flags", "guarded",
           "run_app", "short_flag_error", "USAGE_ERROR"]

"""``python -m tf_divtrain.report --preset=cpu --results_dir=results/cpu``: writes REPORT.md."""

from __future__ import annotations

import os

from absl import flags, logging

from tf_divtrain import cli_flags, io_utils
from tf_divtrain import results as results_lib
from tf_divtrain.report import build_report

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS):
    """Defined by ``run()``, not at import: importing this module must not add required flags to
    a process that parses its own (tests, notebooks, other CLIs)."""
    flags.DEFINE_string("preset", "cpu", "Preset name (for the title).", flag_values=fv)
    flags.DEFINE_string("results_dir", None, "results/<preset> directory written by run_all.sh.",
                        flag_values=fv)
    flags.mark_flag_as_required("results_dir", flag_values=fv)


def main(argv, fv: flags.FlagValues = None):
    """Writes <results_dir>/REPORT.md for the flags in ``fv`` (default: the global FLAGS)."""
    fv = fv if fv is not None else FLAGS
    if len(argv) > 1:
        cli_flags.fail(f"unexpected arguments {argv[1:]}")
    if not os.path.isdir(fv.results_dir):
        cli_flags.fail(f"{fv.results_dir} does not exist; run run_all.sh first.")
    try:
        text = build_report(fv.preset, fv.results_dir)
    except results_lib.ResultsError as e:
        cli_flags.fail(e)
    path = os.path.join(fv.results_dir, "REPORT.md")
    io_utils.atomic_write_text(path, text)
    logging.info("wrote %s", path)
    return 0


def run():
    define_flags()
    cli_flags.run_app(main)

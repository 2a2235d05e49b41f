"""Builds ``results/<preset>/REPORT.md`` from what run_all.sh produced.

``python -m tf_divtrain.report --preset=cpu --results_dir=results/cpu``

Reads, per Table 2 row: the training runs' ``config.json`` / ``metrics.json`` (under ``work/``),
``<row>/eval/results.json`` (evaluate), ``<row>/analysis/analysis.json`` (analyze), the stage
timings ``stage_times.tsv``, and an optional hand-written ``notes.md`` (discussion). It states, cell
by cell, whether the paper's orderings hold. Every number comes from those files.

Modules: ``table2`` (the Table 2 report), ``checks`` (its ordering checks and the distance from the paper), ``analyses`` (Fig. 4 / 5,
transferability and white-box sections), ``methods`` (the ``cpu-methods`` comparison report),
``field`` (the "Field protocol" section, when ``<row>/eval_field/results.json`` holds an
``evaluate --protocol=field`` run),
``common`` (constants, reading run outputs, header / footer), ``cli`` (the command line).
"""

from tf_divtrain.report.analyses import hadamard_note
from tf_divtrain.report.methods import METHODS_PRESETS, build_methods_report, methods_table
from tf_divtrain.report.table2 import build_table2_report, ordering_checks, table2_side_by_side

__all__ = ["build_report", "build_table2_report", "build_methods_report", "methods_table",
           "ordering_checks", "table2_side_by_side", "hadamard_note", "define_flags", "main", "run"]


def build_report(preset: str, results_dir: str) -> str:
    """The REPORT.md text for a run_all.sh preset: the methods comparison for ``cpu-methods``,
    the Table 2 report for every other preset."""
    if preset in METHODS_PRESETS:
        return build_methods_report(preset, results_dir)
    return build_table2_report(preset, results_dir)


# The command line, like every other CLI module's (tests/test_cli.py); imported last because it
# uses build_report.
from tf_divtrain.report.cli import define_flags, main, run  # noqa: E402

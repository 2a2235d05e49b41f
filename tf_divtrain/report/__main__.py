"""``python -m tf_divtrain.report``."""

from tf_divtrain.report.cli import run

run()

"""Stages of the pipeline that are experiments rather than core jobs, each a module with a CLI:
``member_accuracy`` (every target's members clean and under the evaluation's cached examples),
``compare_evals`` (two evaluations cell by cell, McNemar) and ``method_steps`` (every training
mode's step cost timed interleaved). Run as ``python -m tf_divtrain.experiments.<name>``."""

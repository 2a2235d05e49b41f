"""Black-box transfer evaluation (paper §4.1 "Attack Configuration", Table 2).

Adversarial examples are crafted ONCE per (surrogate, attack, eps, test subset, seed) with
white-box attacks on the surrogate ensemble S (:mod:`tf_divtrain.attacks`), cached on disk as
``.npy`` and then fed to every target T. Accuracy = argmax of the ensemble's average softmax
equals the label. The surrogate's own (white-box) accuracy is reported as a sanity row: it should
be the lowest of all rows.

Cache: ``<cache_dir>/<attack>_eps<eps>_n<N>_<key>.npy`` where ``key`` hashes the surrogate's
fingerprint (sha256 of its ``saved_model.pb`` and ``variables/variables.index``), the dataset, the
attack and its options, eps, N, the seed and the batch size (random starts are drawn per batch
with seed ``[seed, batch_index]``). Files are written atomically (temp file + ``os.replace``).

Additions (issue 14):

* **Robust-to-all accuracy** per row: an example counts only if the row's model classifies it
  correctly under *every* (attack, eps) cell of the table -- per eps (all attacks at that eps) and
  overall (all attacks, all eps); as in the DVERGE / TRS papers. Computed from the per-example
  correctness already measured for the cells (nothing extra is crafted); clean correctness is not
  required. Stored as ``row["robust_to_all"] = {"0.1": acc, "0.3": acc, "all": acc}``.
* **Several surrogates** (``surrogate_dir="S5=runs/s5,S_div=runs/sdiv"``; bare dirs are accepted
  and labelled ``S``, ``S2``...). Each surrogate crafts (and caches, keyed by its fingerprint) its
  own examples; a surrogate trained with the defense itself is the adaptive transfer attacker of
  the paper's §6. ``results.json`` schema (``schema_version`` 2): the top-level ``surrogate`` /
  ``rows`` / ``crafting`` keys describe the FIRST surrogate exactly as in version 1 (so readers of
  the old schema keep working), and ``by_surrogate`` lists one block per surrogate, the first
  included: ``{"label", "surrogate": {path, fingerprint, metadata}, "rows", "crafting"}``. Use
  :func:`surrogate_blocks` to read either version.
* **Per-example correctness** per row (clean and every cell), so reports can test an ordering's
  significance on the same images (:mod:`tf_divtrain.stats`): ``row["per_example"] = {"n",
  "encoding": "packbits-base64", "clean": str, "attacks": {attack: {eps_key: str}}}``; read it
  with :func:`per_example_mask` (``None`` for results written before it existed).
"""

# One job per module: validate (inputs, before any work) / cache (crafting once, on disk) / score
# (per-example correctness, robust-to-all) / run (the whole evaluation, ``EvalConfig``) / render
# (Markdown, CSV, plot). The results schema is ``tf_divtrain.results``. Every name is importable
# from here as before (``from tf_divtrain import evaluation; evaluation.evaluate(...)``).
from tf_divtrain import attacks as attacks_lib  # noqa: F401  (tests patch attacks through here)
from tf_divtrain.evaluation.validate import (  # noqa: F401
    ATTACK_LOSSES, CE_ATTACKS, DEFAULT_EPS, SURROGATE_LABEL, EvaluationError, attack_kwargs,
    attack_loss_options, check_attacks, check_compatible, check_eps_list, check_export_dir,
    default_eps, parse_attack_options, parse_surrogates, parse_targets, surrogate_row_label)
from tf_divtrain.evaluation.cache import (  # noqa: F401
    CACHE_VERSION, cache_path, craft, craft_cached, fingerprint)
from tf_divtrain.evaluation.score import _surrogate_block, accuracy, correct_mask  # noqa: F401
from tf_divtrain.evaluation.run import EvalConfig, evaluate, run, writes_reports  # noqa: F401
from tf_divtrain.evaluation.render import (  # noqa: F401
    CSV_FIELDS, ROBUST_HEADERS, _csv_text, display_name, format_table2, plot, write_reports)
from tf_divtrain.results import (  # noqa: F401
    ROBUST_ALL_KEY, eps_key, paired_cell, per_example_mask, robust_to_all, surrogate_blocks)

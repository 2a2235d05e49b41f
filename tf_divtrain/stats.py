"""Paired significance of accuracy differences between two models on the same test images.

Table 2's orderings (T_Div > T_Base, T_Ens+Div >= T_Ens) compare two targets on the *same*
adversarial examples, so the right test is paired: only the discordant examples carry evidence
-- ``only_a`` (model A right, B wrong) and ``only_b`` (B right, A wrong). Under "no difference"
each discordant example is equally likely to fall either way, so ``only_a ~ Binomial(only_a +
only_b, 1/2)``: McNemar's exact test (McNemar 1947), two-sided, via ``scipy.stats.binomtest``.
The 95 % interval of the accuracy difference is the Wald interval for paired proportions,
``d +- 1.96 * sqrt(only_a + only_b - n d^2) / n`` with ``d = (only_a - only_b) / n``
(Agresti, *Categorical Data Analysis*, §10.1). The test is per cell; :func:`holm_adjusted` gives
Holm's (1979) step-down adjustment over the ten cells of a row, so the report can say which
differences survive the multiple comparison as well.

Per-example correctness is stored in ``results.json`` as :func:`encode_mask` strings (1,000
images -> 168 characters), so a report can test any pair of rows without the models.
"""

from __future__ import annotations

import base64
import math
from typing import Dict

import numpy as np

ENCODING = "packbits-base64"
ALPHA = 0.05


class StatsError(ValueError):
    """Malformed per-example data (lengths, encoding)."""


def encode_mask(mask) -> str:
    """1-D bool array -> base64 of ``np.packbits`` (big-endian bit order, zero-padded)."""
    m = np.asarray(mask)
    if m.ndim != 1:
        raise StatsError(f"encode_mask needs a 1-D array, got shape {m.shape}.")
    return base64.b64encode(np.packbits(m.astype(bool)).tobytes()).decode("ascii")


def decode_mask(text: str, n: int) -> np.ndarray:
    """Inverse of :func:`encode_mask` for ``n`` examples."""
    try:
        raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    except (ValueError, TypeError) as e:
        raise StatsError(f"per-example mask is not valid {ENCODING}: {e}") from None
    if len(raw) != (n + 7) // 8:
        raise StatsError(f"per-example mask holds {len(raw) * 8} bits, expected {n} examples "
                         f"({(n + 7) // 8} bytes); the results file is inconsistent, re-run evaluate.")
    return np.unpackbits(raw)[:n].astype(bool)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    if only_a < 0 or only_b < 0:
        raise StatsError(f"discordant counts must be >= 0, got {only_a}, {only_b}.")
    if only_a + only_b == 0:
        return 1.0
    from scipy.stats import binomtest  # scipy ships with cleverhans; imported lazily
    return float(binomtest(int(only_a), int(only_a + only_b), 0.5, alternative="two-sided").pvalue)


def paired_comparison(correct_a, correct_b) -> Dict[str, float]:
    """Accuracy of A minus accuracy of B on the same examples, with McNemar's exact p-value and
    a 95 % Wald interval (module docstring). Inputs: 1-D bool arrays of one length."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise StatsError(f"paired_comparison needs two non-empty 1-D arrays of one length, got "
                         f"{a.shape} and {b.shape}.")
    n = a.size
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    d = (only_a - only_b) / n
    half = 1.959963984540054 * math.sqrt(max(only_a + only_b - n * d * d, 0.0)) / n
    return {"n": n, "acc_a": float(a.mean()), "acc_b": float(b.mean()), "diff": d,
            "only_a": only_a, "only_b": only_b, "p_value": mcnemar_exact_p(only_a, only_b),
            "ci95": (d - half, d + half)}


def holm_adjusted(p_values) -> list:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sorted ascending ``p_(1) <= ... <= p_(m)``: ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    Rejecting where ``adj < alpha`` controls the family-wise error rate at alpha for any dependence
    between the tests (here: the cells of one row, which share images).
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise StatsError(f"holm_adjusted needs a 1-D list of p-values in [0, 1], got {p_values!r}.")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def fisher_exact_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided Fisher exact p-value for hits_a / n_a vs hits_b / n_b on *different* examples
    (e.g. GAAS, whose examples are each ensemble's correctly classified ones): the unpaired
    counterpart of :func:`mcnemar_exact_p`, via ``scipy.stats.fisher_exact``."""
    if not (0 <= hits_a <= n_a and 0 <= hits_b <= n_b) or n_a + n_b == 0:
        raise StatsError(f"need 0 <= hits <= n, got {hits_a}/{n_a} and {hits_b}/{n_b}.")
    from scipy.stats import fisher_exact

    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(fisher_exact(table, alternative="two-sided")[1])


def describe(cmp: Dict[str, float]) -> str:
    """Short text for a report cell: discordant counts, p-value, significance at ALPHA."""
    sig = "significant" if cmp["p_value"] < ALPHA else "within noise"
    return (f"+{cmp['only_a']}/−{cmp['only_b']} images, McNemar p = {cmp['p_value']:.2g}, "
            f"{sig}")

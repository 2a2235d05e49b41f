"""Regular Hadamard matrices for GAAS (paper §4.4, Fig. 5), in NumPy only.

GAAS needs k orthogonal ±1 directions that each have a positive inner product with sign(∇J):
the rows of a *regular* Hadamard matrix (H Hᵀ = kI, every row sum +√k). They exist only for
k = 4u²; this module constructs 4, 36 and their Kronecker products. The report re-checks them
without loading TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np


class HadamardError(ValueError):
    """An order k for which no regular Hadamard matrix is constructed here."""


def _latin_square_hadamard(n: int) -> np.ndarray:
    """Regular Hadamard matrix of order n^2 from the Latin-square graph L_3(n), n = 6.

    Vertices: the n^2 cells (r, c) of the cyclic Latin square L[r, c] = (r + c) mod n; two cells
    are adjacent iff they share a row, a column or a symbol. This is a strongly regular graph
    SRG(n^2, 3(n-1), n-2+2, 6); for n = 6 it is SRG(36, 15, 6, 6), and since lambda = mu its
    adjacency A satisfies A^2 = 9 I + 6 J, hence H = J - 2A has H H^T = H^2 = 36 I and constant row
    sum 36 - 2*15 = 6 = sqrt(36).
    """
    cells = [(r, c, (r + c) % n) for r in range(n) for c in range(n)]
    v = len(cells)
    a = np.zeros((v, v), np.int64)
    for i, (r1, c1, s1) in enumerate(cells):
        for j, (r2, c2, s2) in enumerate(cells):
            if i != j and (r1 == r2 or c1 == c2 or s1 == s2):
                a[i, j] = 1
    return np.ones((v, v), np.int64) - 2 * a


_H4 = np.ones((4, 4), np.int64) - 2 * np.eye(4, dtype=np.int64)  # J - 2I, row sums 2


def _regular_hadamard_or_none(k: int):
    if k == 1:
        return np.ones((1, 1), np.int64)
    if k == 4:
        return _H4
    if k == 36:
        return _latin_square_hadamard(6)
    for base in (36, 4):  # Kronecker products of regular Hadamard matrices are regular Hadamard
        if k % base == 0 and k > base:
            rest = _regular_hadamard_or_none(k // base)
            if rest is not None:
                return np.kron(_regular_hadamard_or_none(base), rest)
    return None


def supported_orders(limit: int = 1296) -> list:
    """Orders k <= limit for which :func:`regular_hadamard` has a construction (4^a * 36^b)."""
    return [k for k in range(2, limit + 1) if _regular_hadamard_or_none(k) is not None]


def check_order(k) -> int:
    try:
        k_int = int(str(k).strip()) if isinstance(k, str) else int(k)
        if not isinstance(k, str) and k_int != k:
            raise ValueError
    except (TypeError, ValueError):
        raise HadamardError(f"GAAS k={k!r} is not an integer; valid orders: "
                            f"{', '.join(map(str, supported_orders(1024)))}.") from None
    if _regular_hadamard_or_none(k_int) is None or k_int < 2:
        root = math.isqrt(k_int) if k_int > 0 else 0
        why = ("regular Hadamard matrices exist only for orders 4u^2"
               if not (k_int > 0 and k_int % 4 == 0 and root * root == k_int)
               else "no construction for this order 4u^2 is implemented")
        raise HadamardError(
            f"GAAS k={k_int}: {why}; valid orders here: "
            f"{', '.join(map(str, supported_orders(1024)))} (products of 4 and 36). "
            f"The paper's k=25 is not a regular Hadamard order; use e.g. --gaas_k=4,16,36,64.")
    return k_int


def regular_hadamard(k: int) -> np.ndarray:
    """A regular Hadamard matrix of order ``k`` (int64 +-1 entries, H H^T = k I, row sums +sqrt(k)).

    Constructions: order 4 = J - 2I; order 36 = J - 2A of the Latin-square graph L_3(6) (see
    :func:`_latin_square_hadamard`); other orders = Kronecker products of these (16 = 4x4,
    64 = 4x16, 144 = 4x36, ...). Any other k raises :class:`HadamardError` naming valid orders.
    """
    k = check_order(k)
    h = _regular_hadamard_or_none(k)
    if h[0].sum() < 0:  # all constructions give +sqrt(k); keep the invariant explicit
        h = -h
    return h

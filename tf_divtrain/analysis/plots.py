"""Plots of the analyses (Agg backend, PNG): coherence histograms, GAAS curves, transfer matrices."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from tf_divtrain import io_utils


# ----------------------------------------------------------------------------------------------
# Plots (Agg backend, PNG).

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_coherence_hist(values: Mapping[str, np.ndarray], path: str, title: str = "") -> str:
    """Overlaid coherence histograms (Fig 4), one per ensemble label. NaN values are vanishing
    examples (no defined member pair): left out of the histogram, counted in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-1.0, 1.0, 41)
    for label, v in values.items():
        v = np.asarray(v, np.float64)
        ok = v[np.isfinite(v)]
        med = f"{np.median(ok):.2f}" if ok.size else "n/a"
        ax.hist(ok, bins=bins, alpha=0.5,
                label=f"{label} (median {med}; vanishing {v.size - ok.size} of {v.size})")
    ax.set_xlabel("Coherence (max pairwise cosine of member input gradients, Eq 7)")
    ax.set_ylabel("Number of test examples")
    ax.set_title(title or "Distribution of coherence values")
    ax.legend()
    fig.tight_layout()
    io_utils.atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_gaas(gaas: Mapping[str, dict], path: str, title: str = "") -> str:
    """Fig 5: P(all k orthogonal directions adversarial) vs k, one panel per eps, one line per
    ensemble. ``gaas`` maps label -> :func:`gaas_analysis` output."""
    plt = _plt()
    eps_keys = []
    for res in gaas.values():
        for e in res["results"]:
            if e not in eps_keys:
                eps_keys.append(e)
    n = max(len(eps_keys), 1)
    fig, axes = plt.subplots(1, n, figsize=(max(4 * n, 7), 3.8), squeeze=False)
    for ax, e in zip(axes[0], eps_keys):
        for label, res in gaas.items():
            per_k = res["results"].get(e, {})
            ks = sorted(int(k) for k in per_k)
            ax.plot(ks, [per_k[str(k)]["p_all"] for k in ks], marker="o", label=label)
            ax.set_xticks(ks)
        ax.set_xlabel("k (orthogonal directions)")
        ax.set_ylabel("P(all k directions adversarial)")
        ax.set_title(f"eps = {e}")
        ax.set_ylim(-0.03, 1.03)
        ax.legend()
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title or "Gradient aligned adversarial subspace (GAAS)",
                                         width=int(16 * max(4 * n, 7)))))
    fig.tight_layout()
    io_utils.atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def plot_transfer(matrix, label: str, path: str, eps: Optional[float] = None) -> str:
    """Heat map of a member-to-member transferability matrix."""
    plt = _plt()
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], float)
    n = m.shape[0]
    fig, ax = plt.subplots(figsize=(max(4.5, 2.2 + 0.9 * n), max(3.8, 1.4 + 0.9 * n)))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(n):
        for j in range(n):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if m[i, j] < 0.5 else "black", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("Evaluated on member j")
    ax.set_ylabel("Crafted on member i")
    ax.set_title(f"{label}: member-to-member transfer\nsuccess rate" +
                 (f" (PGD, eps={eps:g})" if eps is not None else ""), fontsize=10)
    fig.colorbar(im, ax=ax, label="success rate")
    fig.tight_layout()
    io_utils.atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


from tf_divtrain.results import safe_label  # noqa: E402,F401  (the PNG names are part of the schema)

"""Table 2 of an evaluation as Markdown, CSV, JSON and a plot (written atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List


from tf_divtrain import attacks as attacks_lib
from tf_divtrain import field as field_lib
from tf_divtrain import io_utils
from tf_divtrain.results import ROBUST_ALL_KEY, attack_options_text, eps_key, surrogate_blocks



# ----------------------------------------------------------------------------------------------
# Reports.

def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}"


ROBUST_HEADERS = ("ROBUST TO ALL", "ALL EPS")


def display_name(results: dict, attack: str) -> str:
    """Column name of an attack, or of a field-protocol set (``results["field"]["sets"]``)."""
    sets = (results.get("field") or {}).get("sets") or {}
    return sets[attack]["display"] if attack in sets else attacks_lib.DISPLAY_NAMES[attack]


def _has_robust(rows) -> bool:
    return any("robust_to_all" in r for r in rows)


def _table2_lines(results: dict, rows: List[dict]) -> List[str]:
    """The Markdown table of one surrogate block (robust-to-all columns when the rows have them)."""
    attacks, eps = results["attacks"], [eps_key(e) for e in results["eps"]]
    robust = _has_robust(rows)
    head = (["TARGET", "CLEAN"] + [display_name(results, a).upper() for a in attacks]
            + (list(ROBUST_HEADERS) if robust else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in rows:
        best = {e: min(row["attacks"][a][e] for a in attacks) for e in eps}
        cells = []
        for a in attacks:
            parts = []
            for e in eps:
                v = row["attacks"][a][e]
                s = _pct(v)
                parts.append(f"**{s}**" if _pct(best[e]) == s else s)
            cells.append(" / ".join(parts))
        if robust:
            r = row.get("robust_to_all") or {}
            cells.append(" / ".join(_pct(r[e]) if e in r else "—" for e in eps))
            cells.append(_pct(r[ROBUST_ALL_KEY]) if ROBUST_ALL_KEY in r else "—")
        label = row["label"] if row["role"] == "target" else f"*{row['label']}*"
        lines.append("| " + " | ".join([label, _pct(row["clean"])] + cells) + " |")
    return lines


def format_table2(results: dict) -> str:
    """Markdown in Table 2's layout: cells "acc@eps1 / acc@eps2" (%), lowest per eps in bold.

    Rows with ``robust_to_all`` get two more columns (robust to every attack, per eps and over all
    eps). Several surrogates -> one captioned table per surrogate block.
    """
    eps = [eps_key(e) for e in results["eps"]]
    blocks = surrogate_blocks(results)
    robust = any(_has_robust(b["rows"]) for b in blocks)
    what = (f"adversarial examples crafted on the surrogate `{results['surrogate']['path']}`"
            if len(blocks) == 1 else
            f"one table per surrogate ({', '.join(b['label'] for b in blocks)}) the adversarial "
            f"examples are crafted on")
    lines = [f"Accuracy (%) on {results['dataset']}, first {results['num_examples']} test images, "
             f"eps = {' / '.join(eps)}; {what}. Bold: most successful attack per eps.", ""]
    for b in blocks:
        if len(blocks) > 1:
            lines += [f"### Surrogate {b['label']} (`{b['surrogate'].get('path', '')}`)", ""]
        lines += _table2_lines(results, b["rows"]) + [""]
    sanity = ", ".join(f"*{r['label']}*" for b in blocks for r in b["rows"] if r["role"] != "target")
    lines.append(f"{sanity}: the surrogate attacked white-box (sanity row, not a target).")
    options = attack_options_text(results, attacks_lib.DISPLAY_NAMES)
    if options:
        lines.append(f"Attack options (not the paper's defaults): {options}.")
    if robust:
        lines.append(f"{ROBUST_HEADERS[0]}: fraction of the test images classified correctly under "
                     f"every attack at that eps; {ROBUST_HEADERS[1]}: under every attack at every "
                     f"eps (same crafted examples, per example).")
    if results.get("field"):
        lines += [""] + field_lib.format_lines(results)
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["label", "role", "attack", "eps", "accuracy", "craft_seconds", "images_per_sec",
              "surrogate"]


def _csv_text(results: dict) -> str:
    """One line per (surrogate, row, cell); robust-to-all as attack ``robust_to_all`` with eps
    ``<eps>`` or ``all``; the ``surrogate`` column (last, so old column positions hold) labels the
    block."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for b in surrogate_blocks(results):
        s = b["label"]
        for row in b["rows"]:
            w.writerow([row["label"], row["role"], "clean", "", f"{row['clean']:.6f}", "", "", s])
            for a in results["attacks"]:
                for e in (eps_key(v) for v in results["eps"]):
                    c = b["crafting"][a][e]
                    sec = "" if c.get("seconds") is None else f"{c['seconds']:.3f}"
                    ips = "" if c.get("images_per_sec") is None else f"{c['images_per_sec']:.2f}"
                    w.writerow([row["label"], row["role"], a, e, f"{row['attacks'][a][e]:.6f}",
                                sec, ips, s])
            for e, v in (row.get("robust_to_all") or {}).items():
                w.writerow([row["label"], row["role"], "robust_to_all", e, f"{v:.6f}", "", "", s])
    return buf.getvalue()


def plot(results: dict, path: str) -> str:
    """PNG: accuracy vs attack (clean first), one line per row, one panel per eps (one row of
    panels per surrogate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [eps_key(e) for e in results["eps"]]
    names = ["CLEAN"] + [display_name(results, a) for a in results["attacks"]]
    blocks = surrogate_blocks(results)
    fig, axes = plt.subplots(len(blocks), len(eps), figsize=(5.5 * len(eps), 4 * len(blocks)),
                             squeeze=False)
    for ax_row, b in zip(axes, blocks):
        for ax, e in zip(ax_row, eps):
            for row in b["rows"]:
                vals = [row["clean"]] + [row["attacks"][a][e] for a in results["attacks"]]
                style = "--" if row["role"] == "surrogate" else "-"
                ax.plot(names, [100 * v for v in vals], style, marker="o", label=row["label"])
            where = f", surrogate {b['label']}" if len(blocks) > 1 else ""
            ax.set_title(f"{results['dataset']}, eps = {e}{where}")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.tick_params(axis="x", labelrotation=30)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


_write_text = io_utils.atomic_write_text


def write_reports(results: dict, out_dir: str) -> Dict[str, str]:
    """Writes results.json, results.csv, table2.md and accuracy.png into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, n) for k, n in
             (("json", "results.json"), ("csv", "results.csv"), ("table", "table2.md"),
              ("plot", "accuracy.png"))}
    _write_text(paths["json"], json.dumps(results, indent=2, sort_keys=True) + "\n")
    _write_text(paths["csv"], _csv_text(results))
    _write_text(paths["table"], format_table2(results))
    try:
        plot(results, paths["plot"])
    except OSError as e:
        raise io_utils.output_error(paths["plot"], e) from e
    return paths

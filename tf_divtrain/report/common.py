"""What both report builders share: table constants, reading run outputs, header and footer."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Dict, List, Optional, Tuple

from tf_divtrain import paper
from tf_divtrain import results as results_lib
from tf_divtrain.pipeline import clock
from tf_divtrain.results import eps_key

ROLES = (("surrogate", "S"), ("static", "static"), ("base", "T_Base"), ("div", "T_Div"),
         ("ens", "T_Ens"), ("ensdiv", "T_Ens+Div"))
TARGETS = ("T_Base", "T_Div", "T_Ens", "T_Ens+Div")
ATTACK_ORDER = paper.TABLE2_ATTACKS  # Table 2's column order
ATTACK_NAMES = paper.ATTACK_NAMES
ROWS = {"mnist_conv3": "CONV-3 (MNIST)", "cifar10_conv4": "CONV-4 (CIFAR-10)",
        "cifar10_resnet20": "RESNET-20 (CIFAR-10)", "cifar10_mix": "MIX (CIFAR-10)"}
ROW_DATASET = {"mnist_conv3": "mnist", "cifar10_conv4": "cifar10", "cifar10_resnet20": "cifar10",
               "cifar10_mix": "cifar10"}
# Rows each run_all.sh preset is meant to produce: a planned row without outputs is shown as
# "not run". Other presets show only the rows that have outputs.
PRESET_ROWS = {"paper": tuple(ROWS), "mnist-paper": ("mnist_conv3",), "cifar-paper": ("cifar10_conv4",), "cpu": ("mnist_conv3",),
               "smoke": ("mnist_conv3",),
               "cpu-cifar": ("cifar10_conv4", "cifar10_resnet20", "cifar10_mix"),
               "smoke-cifar": ("cifar10_conv4",)}
NOT_RUN = "not run"

# The paper's numbers and settings (tf_divtrain.paper), under the names the builders use.
PAPER_TABLE2 = paper.TABLE2_ACCURACY
PAPER_EPOCHS = paper.TABLE2_EPOCHS
PAPER_TEST_EXAMPLES = paper.TEST_EXAMPLES
PAPER_GAAS_K = paper.GAAS_K


def load_json(path: str) -> Optional[dict]:
    """A run's JSON, ``None`` if the stage did not run; a damaged file raises ResultsError."""
    return results_lib.load_optional(path)


def pct(v) -> str:
    return "—" if v is None else f"{100.0 * v:.1f}"


def result_cells(results: dict) -> List[Tuple[str, str]]:
    """``(attack, eps key)`` of every cell of an evaluation: attacks in Table 2 order, then eps."""
    eps = [eps_key(e) for e in results["eps"]]
    return [(a, e) for a in ATTACK_ORDER if a in results["attacks"] for e in eps]


def target_rows(results: dict) -> Dict[str, dict]:
    return {r["label"]: r for r in results["rows"] if r.get("role") == "target"}


def run_metrics(work: str, role: str) -> Optional[dict]:
    """metrics.json of a training run: work/<row>/<role>/ or its committed copy <row>/train/<role>/."""
    row = os.path.basename(work.rstrip("/"))
    results_dir = os.path.dirname(os.path.dirname(work.rstrip("/")))
    return (load_json(os.path.join(work, role, "metrics.json"))
            or load_json(os.path.join(results_dir, row, "train", role, "metrics.json")))


def all_metrics(work: str) -> Dict[str, dict]:
    """{label: metrics.json} of every training run of a row that exists (ROLES order)."""
    return {label: m for role, label in ROLES if (m := run_metrics(work, role))}


def stage_table(results_dir: str) -> List[str]:
    """Each stage's latest run: its wall time summed over the sessions it took (``clock``)."""
    runs = clock.stage_runs(results_dir)
    if not runs:
        return []
    out = ["| stage | seconds | sessions | status | command |", "|---|---|---|---|---|"]
    total = 0
    for r in runs:
        total += r.seconds if r.status == "ok" else 0
        kinds = [s.status for s in r.sessions[:-1]]
        sessions = str(len(r.sessions)) + (f" ({', '.join(sorted(set(kinds)))} before)" if kinds else "")
        out.append(f"| {r.stage} | {r.seconds} | {sessions} | {r.status} | `{r.command}` |")
    out.append(f"| **total (ok stages)** | {total} ({total / 60:.1f} min) | | | |")
    return out


def _version(mod: str) -> Optional[str]:
    """``mod.__version__`` without importing TensorFlow: tensorflow and keras (whose import loads
    it) are read from their installed metadata, the light packages from the module itself."""
    import importlib.metadata

    try:
        if mod in ("tensorflow", "keras"):
            return importlib.metadata.version(mod)
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 -- a version string is best effort
        return None


def versions() -> str:
    parts = [f"Python {platform.python_version()}", f"TensorFlow {_version('tensorflow')}",
             f"NumPy {_version('numpy')}"]
    for mod in ("keras", "cleverhans", "matplotlib"):
        v = _version(mod)
        if v is not None:
            parts.append(f"{mod} {v}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts.append(f"CPU {cpu}, {os.cpu_count()} cores")
    return ", ".join(parts)


def header(title: str, extra: str = "") -> List[str]:
    """Title, provenance line and software/machine line of a REPORT.md."""
    return [f"# {title}", "",
            f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
            f"`python -m tf_divtrain.report` from the files run_all.sh wrote; every number below is "
            f"read from those files{extra}.", "", f"Software and machine: {versions()}.", ""]


def footer(results_dir: str) -> List[str]:
    """The hand-written ``notes.md`` (Discussion) and the stage timings, when present."""
    lines = []
    notes = os.path.join(results_dir, "notes.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            lines += ["## Discussion", "", f.read().strip(), ""]
    st = stage_table(results_dir)
    if st:
        lines += ["## Stages: commands and wall time", ""] + st + [""]
    return lines

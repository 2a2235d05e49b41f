"""Resumable analyses: each (ensemble, analysis) result is kept on disk as it finishes, so that a
killed ``analyze``, re-run with the same command, starts after the last finished part and writes
the same analysis.json.

Why: at the paper's sizes one analysis run takes hours (cifar-paper: an estimated 1.5-2 h on 2
cores, extrapolated from probes), which may outlast a working session. Every analysis is seeded
per call (PGD starts from ``[seed, batch]``, ART from ``np.random.seed(seed)``), so a part does not
depend on what ran before it in the process, and a kept part is the value a fresh run computes.

A part is ``<out_dir>/.parts/<label>.<analysis>.json`` and carries a key: the sha256 of
everything its numbers depend on (the ensemble's export fingerprint, the test images and labels,
the settings, the subset size, seed, batch size and precision, and the package's own source
code). A part whose key differs (another model in the same directory, other settings, changed
code) is recomputed and replaced; a damaged one too. Only
ensembles loaded from an export directory have a fingerprint; an in-memory ensemble's parts are
computed and not kept. The parts are removed once analysis.json is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from typing import Callable, Optional

import numpy as np

from tf_divtrain import io_utils
from tf_divtrain.results import safe_label

PARTS_DIR = ".parts"
PART_VERSION = 1


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 (16 hex) of the test images and labels (their dtype, shape and bytes)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (16 hex) of the tf_divtrain package's Python sources: a part computed by other code
    (a ``git pull`` between a kill and the re-run) is not reused."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):  # every directory, in path order
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(d, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def part_key(**fields) -> str:
    """sha256 (16 hex) of ``fields`` and :func:`code_digest` as sorted JSON (plain values)."""
    text = json.dumps(dict(fields, v=PART_VERSION, code=code_digest()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Parts:
    """The parts of one analysis run (``out_dir``/.parts)."""

    def __init__(self, out_dir: str, log: Callable[[str], None] = print):
        self.dir = os.path.join(out_dir, PARTS_DIR)
        self.log = log

    def path(self, label: str, name: str) -> str:
        return os.path.join(self.dir, f"{safe_label(label)}.{name}.json")

    def load(self, label: str, name: str, key: str) -> Optional[dict]:
        """The kept value of (label, name) if its key is ``key``, else None."""
        path = self.path(label, name)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError) as e:  # a damaged part is recomputed, not an error
            self.log(f"[{label}] {name}: the kept part {path} is unreadable ({str(e)[:200]}); "
                     f"recomputing it")
            return None
        if not isinstance(part, dict) or part.get("key") != key or "value" not in part:
            return None  # computed for another model or other settings: recomputed
        return part["value"]

    def save(self, label: str, name: str, key: str, value) -> None:
        os.makedirs(self.dir, exist_ok=True)
        io_utils.atomic_write_json(self.path(label, name),
                                   {"key": key, "label": label, "analysis": name, "value": value},
                                   allow_nan=False)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

"""Atomic file writes: a reader (or a killed run) never sees half a file.

Every JSON/text output of the package (config.json, metrics.json, analysis.json, results.*,
the adversarial-cache sidecars, REPORT.md) goes through here: write ``<path>.tmp<pid>``, then
``os.replace`` it onto ``path`` (atomic on POSIX; the pid keeps concurrent writers apart).
"""

from __future__ import annotations

import json
import os
from typing import Tuple


def atomic_write_text(path: str, text: str) -> str:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(path: str, obj, **dump_kwargs) -> str:
    """``json.dumps(obj, **dump_kwargs)`` written atomically (serialised before the file opens)."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def write_md_and_json(prefix: str, markdown: str, obj) -> Tuple[str, str]:
    """``<prefix>.md`` and ``<prefix>.json`` (an experiment script's two outputs), atomically, in a
    directory created if missing. Returns both paths."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    return atomic_write_text(prefix + ".md", markdown), atomic_write_json(prefix + ".json", obj)

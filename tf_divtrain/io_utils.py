"""Atomic file writes: a reader (or a killed run) never sees half a file.

Every JSON/text output of the package (config.json, metrics.json, analysis.json, results.*,
the adversarial-cache sidecars, REPORT.md) goes through here: write ``<path>.tmp<pid>``, then
``os.replace`` it onto ``path`` (atomic on POSIX; the pid keeps concurrent writers apart).
"""

from __future__ import annotations

import json
import os


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

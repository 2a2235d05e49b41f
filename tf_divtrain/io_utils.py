"""Atomic file writes and checked JSON reads: a reader (or a killed run) never sees half a file.

Every JSON/text output of the package (config.json, metrics.json, analysis.json, results.*,
the adversarial-cache sidecars, REPORT.md) goes through here: write ``<path>.tmp<pid>``, then
``os.replace`` it onto ``path`` (atomic on POSIX; the pid keeps concurrent writers apart). A write
that fails (a full disk, a read-only or vanished directory) raises :class:`OutputError` naming the
path; the old file, if any, is left as it was.

Every reader of those JSON files calls :func:`read_json`, which turns a cut-off or damaged file into
:class:`IncompleteFileError`: ``<file> is not a complete <kind> (<why>); re-run <stage>``.

This module imports no TensorFlow (the pipeline imports it before deciding to start TF).

Fault injection (tests only): ``$TF_DIVTRAIN_FAULT`` = ``point[@n]=action[,...]`` makes the
``n``-th (default first) call of :func:`fault_point` with that ``point`` (a glob: ``write:*.npy``)
in this process ``kill``
itself (SIGKILL: no cleanup, like a power cut or the OOM killer), ``crash`` (raise
:class:`InjectedCrash`, the in-process stand-in), raise ``enospc`` / ``erofs`` (an ``OSError``, as
a full disk / read-only filesystem would); ``torn-kill`` / ``torn-crash`` first truncate the file
being written to half (a torn write). Points: ``write:<basename>`` (in the middle of writing a file),
``checkpoint:saved`` (a checkpoint's files are written, the ``checkpoint`` state file is not yet),
``export:swap`` (the new SavedModel is complete, not yet in place). Unset, it costs a dict lookup.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import signal
from typing import Optional, Sequence, Tuple

FAULT_ENV = "TF_DIVTRAIN_FAULT"
_fault_hits: dict = {}

# What each of the project's JSON files is, and which stage writes it (for read_json's message).
KINDS = {
    "config.json": ("training config", "train with --fresh"),
    "metrics.json": ("training metrics file", "train (the same command)"),
    "results.json": ("evaluation results file", "evaluate (the same command)"),
    "analysis.json": ("analysis file", "analyze (the same command)"),
    "member_accuracy.json": ("member-accuracy file", "the members stage (tf_divtrain.experiments.member_accuracy)"),
    "comparison.json": ("comparison file", "the compare stage (tf_divtrain.experiments.compare_evals)"),
    "method_steps.json": ("step benchmark", "the benchmark stage (tf_divtrain.experiments.method_steps)"),
}


class FileProblem(ValueError):
    """A file the package reads or writes is unusable; the message says which and what to do."""


class IncompleteFileError(FileProblem):
    """A JSON file is cut off, damaged, or not the kind of file expected."""


class OutputError(FileProblem):
    """An output could not be written (full disk, read-only or vanished directory, ...)."""


# ----------------------------------------------------------------------------------------------
# Fault injection (tests).

def _fault_action(point: str) -> Optional[str]:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    for item in spec.split(","):
        where, _, action = item.strip().partition("=")
        name, _, nth = where.partition("@")
        if fnmatch.fnmatchcase(point, name):
            n = _fault_hits[item] = _fault_hits.get(item, 0) + 1  # counted per spec item
            if n == int(nth or 1):
                return action
    return None


def reset_fault_counts() -> None:
    """Starts the ``@n`` counts of :func:`fault_point` over (an in-process test's next run)."""
    _fault_hits.clear()


class InjectedCrash(BaseException):
    """Raised by the ``crash`` fault action: an in-process stand-in for SIGKILL (tests that
    cannot afford a new process). A BaseException, so no ``except Exception`` swallows it."""


def fault_point(point: str, path: str = "") -> None:
    """Test hook: acts as ``$TF_DIVTRAIN_FAULT`` says at this point (see the module docstring)."""
    action = _fault_action(point)
    if action is None:
        return
    if action.startswith("torn-"):
        if path and os.path.isfile(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        action = action[len("torn-"):]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "crash":
        raise InjectedCrash(f"{FAULT_ENV}: crash at {point}")
    if action in ("enospc", "erofs"):
        code = errno.ENOSPC if action == "enospc" else errno.EROFS
        raise OSError(code, os.strerror(code), path or point)
    raise ValueError(f"{FAULT_ENV}: unknown action {action!r} at {point!r}")


# ----------------------------------------------------------------------------------------------
# Writes.

def output_error(path: str, e: BaseException) -> OutputError:
    """The one message for a failed write: names the path, the reason and what to do."""
    why = getattr(e, "strerror", None) or str(e)
    hint = ("free some space" if getattr(e, "errno", None) == errno.ENOSPC
            else "check that its directory exists and is writable")
    return OutputError(f"cannot write {path} ({why}); {hint}, then re-run the same command "
                       f"(what was saved before is kept)")


def atomic_write_text(path: str, text: str) -> str:
    """Writes ``text`` to ``path`` atomically; a failure raises :class:`OutputError` and leaves
    any old ``path`` untouched."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            half = len(text) // 2
            f.write(text[:half])
            f.flush()
            fault_point("write:" + os.path.basename(path), tmp)
            f.write(text[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(path: str, obj, **dump_kwargs) -> str:
    """``json.dumps(obj, **dump_kwargs)`` written atomically (serialised before the file opens)."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_savefig(fig, path: str, **savefig_kwargs) -> str:
    """``fig.savefig(path)`` through a temp file renamed into place (no half PNG under ``path``)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        fig.savefig(tmp, **savefig_kwargs)
        fault_point("write:" + os.path.basename(path), tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_md_and_json(prefix: str, markdown: str, obj) -> Tuple[str, str]:
    """``<prefix>.md`` and ``<prefix>.json`` (an experiment script's two outputs), atomically, in a
    directory created if missing. Returns both paths."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    except OSError as e:
        raise output_error(prefix + ".md", e) from e
    return atomic_write_text(prefix + ".md", markdown), atomic_write_json(prefix + ".json", obj)


# ----------------------------------------------------------------------------------------------
# Reads.

def read_json(path: str, kind: Optional[str] = None, stage: Optional[str] = None,
              missing_ok: bool = False, required: Sequence[str] = ()):
    """The JSON object in ``path``, or :class:`IncompleteFileError` if it is cut off or damaged.

    ``kind`` / ``stage`` name the file and the command that rewrites it (default: from
    :data:`KINDS` by the file's name). ``missing_ok``: a missing file gives None instead of an
    error. ``required``: top-level keys a complete file has.
    """
    default_kind, default_stage = KINDS.get(os.path.basename(path), ("JSON file", "the stage that wrote it"))
    kind, stage = kind or default_kind, stage or default_stage

    def bad(why: str) -> IncompleteFileError:
        return IncompleteFileError(f"{path} is not a complete {kind} ({why}); re-run {stage}")

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise bad("it does not exist") from None
    except OSError as e:
        raise bad(f"unreadable: {e.strerror or e}") from None
    if not raw.strip():
        raise bad("it is empty")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise bad(f"{e.msg}: line {e.lineno} column {e.colno} of {len(raw)} bytes") from None
    if not isinstance(obj, dict):
        raise bad(f"top level is a {type(obj).__name__}, not an object")
    missing = [k for k in required if k not in obj]
    if missing:
        raise bad(f"no {', '.join(repr(k) for k in missing)}")
    return obj


__all__ = ["FAULT_ENV", "KINDS", "InjectedCrash", "reset_fault_counts", "FileProblem",
           "IncompleteFileError", "OutputError", "fault_point", "output_error", "atomic_write_text",
           "atomic_write_json", "atomic_savefig", "write_md_and_json", "read_json"]

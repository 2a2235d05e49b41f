"""Stage wall time across sessions: ``stage_times.tsv`` rows, one per session of a stage.

A long stage (a paper-length training) is killed at a session's end and resumed by the next one;
until now only the finishing session was timed, so a stage's time said, e.g., 8,529 s for a
three-session run. Each session now keeps a *clock* (``<results>/.clock/<stage>.json``),
rewritten every ``TICK_SECONDS`` while the stage runs. A session that ends normally appends its
row (``ok`` or ``failed``) and removes the clock. A clock left by a killed session becomes an
``interrupted`` row, with its last tick's seconds, when the runner next starts, so at most one
tick of time is lost per kill.

A *run* of a stage is its sessions up to and including an ``ok`` one (or its trailing sessions
not yet finished); the report shows the latest run's total and its session count.
Pure standard library (the report loads it without TensorFlow).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Dict, List, Optional

from tf_divtrain import io_utils

TIMES_HEADER = "stage\tseconds\tstatus\tcommand\tended\n"
CLOCK_DIR = ".clock"
TICK_SECONDS = 30.0
STATUSES = ("ok", "failed", "interrupted")


@dataclasses.dataclass(frozen=True)
class Session:
    stage: str
    seconds: int
    status: str
    command: str
    ended: str = ""  # UTC time the row was written ("" in files from before sessions were kept)


@dataclasses.dataclass(frozen=True)
class Run:
    """A stage's sessions up to its finishing one (``status`` is the last session's)."""
    stage: str
    sessions: tuple

    @property
    def seconds(self) -> int:
        return sum(s.seconds for s in self.sessions)

    @property
    def status(self) -> str:
        return self.sessions[-1].status

    @property
    def command(self) -> str:
        return self.sessions[-1].command


def now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"


def times_path(results: str) -> str:
    return os.path.join(results, "stage_times.tsv")


def _clock_path(results: str, stage: str) -> str:
    return os.path.join(results, CLOCK_DIR, f"{stage}.json")


def _append(results: str, s: Session) -> None:
    path = times_path(results)
    new = not os.path.exists(path)
    cut = False
    if not new and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"  # a row cut off by a kill: start on a line of our own
    with open(path, "a") as f:
        if new:
            f.write(TIMES_HEADER)
        f.write(("\n" if cut else "") + f"{s.stage}\t{s.seconds}\t{s.status}\t{s.command}\t{s.ended}\n")


def recover(results: str) -> List[Session]:
    """Turns every clock left by a killed session into an ``interrupted`` row; returns them."""
    d = os.path.join(results, CLOCK_DIR)
    found = []
    if not os.path.isdir(d):
        return found
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if not name.endswith(".json"):  # a tick's temp file, left by a kill mid-write
            os.remove(path)
            continue
        try:
            with open(path) as f:
                c = json.load(f)
            s = Session(c["stage"], int(c["seconds"]), "interrupted", c["command"], c["ticked"])
        except (OSError, ValueError, KeyError, TypeError):
            os.remove(path)  # not a clock of ours (ticks are atomic): nothing to recover
            continue
        _append(results, s)
        os.remove(path)
        found.append(s)
    return found


class Clock:
    """The clock of one session of ``stage``: :meth:`tick` while it runs, :meth:`close` at its end."""

    def __init__(self, results: str, stage: str, command: str):
        self.results, self.stage, self.command = results, stage, command
        os.makedirs(os.path.join(results, CLOCK_DIR), exist_ok=True)
        self.tick(0)

    def tick(self, seconds: float) -> None:
        io_utils.atomic_write_json(_clock_path(self.results, self.stage),
                                   {"stage": self.stage, "seconds": int(round(seconds)),
                                    "command": self.command, "ticked": now()})

    def close(self, seconds: float, status: str) -> None:
        _append(self.results, Session(self.stage, int(round(seconds)), status, self.command, now()))
        try:
            os.remove(_clock_path(self.results, self.stage))
        except FileNotFoundError:
            pass  # removed by hand while the stage ran: its row is written all the same
        try:
            os.rmdir(os.path.join(self.results, CLOCK_DIR))
        except OSError:
            pass  # another stage's clock (or a stranger's file) is still there


def read_sessions(path: str) -> List[Session]:
    """Every row of a ``stage_times.tsv`` (the 4-column files of older runs included)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, errors="replace") as f:
        for line in list(f)[1:]:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4 or not parts[1].isdigit() or parts[2] not in STATUSES:
                continue  # a row cut off by a kill (the next row starts on its own line)
            ended = parts[4] if len(parts) > 4 else ""
            out.append(Session(parts[0], int(parts[1]), parts[2], parts[3], ended))
    return out


def runs(sessions: List[Session]) -> List[Run]:
    """Sessions grouped into runs, each stage's latest run only, in the order stages last ran.

    A run ends at an ``ok`` session; ``failed`` and ``interrupted`` sessions continue into the
    next one (a failed or killed training resumes from its checkpoint)."""
    current: Dict[str, List[Session]] = {}
    latest: Dict[str, Run] = {}
    last_row: Dict[str, int] = {}
    for i, s in enumerate(sessions):
        cur = current.setdefault(s.stage, [])
        cur.append(s)
        latest[s.stage] = Run(s.stage, tuple(cur))
        last_row[s.stage] = i
        if s.status == "ok":
            del current[s.stage]
    return sorted(latest.values(), key=lambda r: last_row[r.stage])


def stage_runs(results: str) -> List[Run]:
    return runs(read_sessions(times_path(results)))


def run_of(results: str, stage: str) -> Optional[Run]:
    return next((r for r in stage_runs(results) if r.stage == stage), None)

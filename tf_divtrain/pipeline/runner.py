"""Runs a plan's stages in order: each logged to ``logs/<stage>.log`` and timed in
``stage_times.tsv``; a stage whose output is up to date is skipped, so a re-run after an
interruption continues where it stopped (training resumes from its last checkpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Sequence, TextIO

from tf_divtrain.pipeline.plan import Context, Stage

TIMES_HEADER = "stage\tseconds\tstatus\tcommand\n"


class StageFailed(RuntimeError):
    def __init__(self, stage: Stage, returncode: int):
        super().__init__(f"{stage.name} failed (exit {returncode})")
        self.stage, self.returncode = stage, returncode


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _record(times: str, name: str, seconds: int, status: str, command: str) -> None:
    with open(times, "a") as f:
        f.write(f"{name}\t{seconds}\t{status}\t{command}\n")


def run(stages: Sequence[Stage], ctx: Context, dry_run: bool = False, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr, env=None) -> None:
    """Runs (or, with ``dry_run``, prints) every stage that is not up to date."""
    logs, times = os.path.join(ctx.results, "logs"), os.path.join(ctx.results, "stage_times.tsv")
    if not dry_run:
        os.makedirs(ctx.work, exist_ok=True)
        os.makedirs(logs, exist_ok=True)
        if not os.path.exists(times):
            with open(times, "w") as f:
                f.write(TIMES_HEADER)
    for stage in stages:
        go, messages = stage.decide()
        for m in messages:
            print(m, file=out, flush=True)
        ran = False
        if go and dry_run:
            print(f"== {stage.name}: would run: {stage.command()}", file=out, flush=True)
        elif go:
            print(f"== {stage.name}: {stage.command()}", file=out, flush=True)
            log = os.path.join(logs, f"{stage.name}.log")
            t0 = time.monotonic()
            with open(log, "w") as f:
                rc = subprocess.call(list(stage.argv), stdout=f, stderr=subprocess.STDOUT, env=env)
            dt = int(round(time.monotonic() - t0))
            _record(times, stage.name, dt, "ok" if rc == 0 else "failed", stage.command())
            if rc != 0:
                print(f"   FAILED after {dt}s (exit {rc}); last lines of {log}:", file=err)
                print(_tail(log), file=err, end="", flush=True)
                raise StageFailed(stage, rc)
            print(f"   finished in {dt}s (log: {log})", file=out, flush=True)
            ran = True
        if stage.after is not None and not dry_run:
            stage.after(ran)

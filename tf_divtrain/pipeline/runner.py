"""Runs a plan's stages in order: each logged to ``logs/<stage>.log`` and timed in
``stage_times.tsv``; a stage whose output is up to date is skipped, so a re-run after an
interruption continues where it stopped (training resumes from its last checkpoint).

A stage's log is appended to, one ``== session`` header per session, so a resumed stage keeps
the log of the session that was killed; its time is kept per session by :mod:`clock`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence, TextIO

from tf_divtrain import io_utils, locking
from tf_divtrain.pipeline import clock
from tf_divtrain.pipeline.plan import Context, Stage
from tf_divtrain.pipeline.presets import PresetError


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


def _session_header(stage: Stage, results: str) -> str:
    """The line that opens a session in the stage's log (which earlier sessions' text precedes)."""
    before = clock.run_of(results, stage.name)
    resumed = before is not None and before.status != "ok"
    n = len(before.sessions) + 1 if resumed else 1
    what = f"session {n}, resuming after {before.status} session(s)" if resumed else "session 1"
    return (f"== {stage.name}: {what}, started {clock.now()}\n"
            f"== {stage.command()}\n")


def _call(argv, log: str, header: str, tick, env) -> int:
    """Runs ``argv`` with its output appended to ``log``; ``tick(seconds)`` every TICK_SECONDS."""
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(header)
        f.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=f, stderr=subprocess.STDOUT, env=env)
        except OSError as e:  # e.g. PYTHON names no interpreter: the stage never started
            f.write(f"== cannot start {argv[0]}: {e.strerror or e}\n")
            raise PresetError(f"cannot start {argv[0]} ({e.strerror or e}); set PYTHON to an "
                              f"interpreter that has tf_divtrain installed") from None
        while True:
            try:
                return proc.wait(timeout=clock.TICK_SECONDS)
            except subprocess.TimeoutExpired:
                tick(time.monotonic() - t0)
            except BaseException:  # Ctrl-C: stop the stage; its clock is kept, as interrupted
                proc.kill()
                proc.wait()
                tick(time.monotonic() - t0)
                raise


def run(stages: Sequence[Stage], ctx: Context, dry_run: bool = False,
        out: Optional[TextIO] = None, err: Optional[TextIO] = None, env=None) -> None:
    """Runs (or, with ``dry_run``, prints) every stage that is not up to date, holding
    ``<results>/.lock`` so that a second pipeline on the same results refuses (its stages would
    share logs, clocks and caches)."""
    out = sys.stdout if out is None else out  # the streams of the call, not of the import
    err = sys.stderr if err is None else err
    if dry_run:
        return _run(stages, ctx, True, out, err, env)
    try:
        with locking.RunLock() as lock, _sigterm_interrupts():
            lock.acquire(ctx.results, "pipeline run",
                         "set RESULTS_ROOT to run this preset in another folder")
            return _run(stages, ctx, False, out, err, env)
    except OSError as e:  # the runner's own files (logs, clocks, stage times): one error line
        raise io_utils.output_error(e.filename or ctx.results, e) from e


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM (``kill PID``, a scheduler's stop) acts as Ctrl-C: the running stage is stopped and
    its clock kept, instead of the runner dying alone and leaving the stage running unsupervised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(stages, ctx, dry_run, out, err, env) -> None:
    logs = os.path.join(ctx.results, "logs")
    if not dry_run:
        os.makedirs(ctx.work, exist_ok=True)
        os.makedirs(logs, exist_ok=True)
        for s in clock.recover(ctx.results):
            print(f"== {s.stage}: its last session was killed after about {s.seconds}s; that time "
                  f"is kept in stage_times.tsv as 'interrupted'", file=out, flush=True)
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
            header = _session_header(stage, ctx.results)
            c = clock.Clock(ctx.results, stage.name, stage.command())
            t0 = time.monotonic()
            try:
                rc = _call(stage.argv, log, header, c.tick, env)
            except PresetError:
                c.close(time.monotonic() - t0, "failed")
                raise
            dt = int(round(time.monotonic() - t0))
            c.close(dt, "ok" if rc == 0 else "failed")
            if rc != 0:
                print(f"   FAILED after {dt}s (exit {rc}); last lines of {log}:", file=err)
                print(_tail(log), file=err, end="", flush=True)
                raise StageFailed(stage, rc)
            whole = clock.run_of(ctx.results, stage.name)
            over = (f"; {whole.seconds}s over its {len(whole.sessions)} sessions"
                    if whole is not None and len(whole.sessions) > 1 else "")
            print(f"   finished in {dt}s{over} (log: {log})", file=out, flush=True)
            ran = True
        if stage.after is not None and not dry_run:
            stage.after(ran)

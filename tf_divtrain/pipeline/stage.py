"""A stage of the pipeline and what it runs with: :class:`Stage` (a command, the output whose
presence means done, and the rules that find it out of date: :class:`Newer`, :class:`Lacks`),
:class:`Context` (paths, interpreter, precision), and the helpers that build stage commands.
:mod:`.plan` makes a preset's stages from these; :mod:`.studies` its studies' stages.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Tuple

from tf_divtrain import results as results_lib
from tf_divtrain.pipeline.presets import PresetError


@dataclasses.dataclass(frozen=True)
class Newer:
    """Out of date when one of ``inputs`` is newer than the output; ``why`` is said (or nothing)."""
    inputs: Tuple[str, ...]
    why: str = ""

    def __call__(self, done: str) -> Optional[str]:
        t = os.path.getmtime(done)
        if any(os.path.exists(p) and os.path.getmtime(p) > t for p in self.inputs):
            return self.why.format(done=done)
        return None


@dataclasses.dataclass(frozen=True)
class Lacks:
    """Out of date when the results file does not cover ``labels`` with per-example results."""
    labels: Tuple[str, ...]
    why: str

    def __call__(self, done: str) -> Optional[str]:
        if results_lib.covers(results_lib.read_json(done), self.labels):
            return None
        return self.why.format(done=done)


@dataclasses.dataclass
class Stage:
    name: str
    kind: str
    argv: Tuple[str, ...]
    done: str = ""                                   # output whose presence means done
    rules: Tuple[Callable[[str], Optional[str]], ...] = ()
    after: Optional[Callable[[bool], None]] = None   # after(ran): bookkeeping, never on a dry run
    requires: Tuple[str, ...] = ()                   # inputs another preset makes (checked first)

    def decide(self) -> Tuple[bool, List[str]]:
        """(run?, messages): run when the output is missing or a rule finds it out of date."""
        missing = [p for p in self.requires if not os.path.exists(p)]
        if missing:
            raise PresetError(f"{self.name} needs {missing[0]}, which another preset trains: run that "
                              f"preset first (the study's --help says which)")
        if not self.done or not os.path.exists(self.done):
            return True, []
        for rule in self.rules:
            why = rule(self.done)
            if why is not None:
                return True, [f"== {self.name}: {why}"] if why else []
        return False, [f"== {self.name}: done already ({self.done} exists), skipped"]

    def command(self) -> str:
        return " ".join(self.argv)


@dataclasses.dataclass(frozen=True)
class Context:
    """Where a preset runs and with what: paths, interpreter, precision and the user's extra flags."""
    results: str                 # results/<preset>
    python: str
    precision: str
    extra_train_flags: Tuple[str, ...] = ()
    members: bool = True

    @property
    def work(self) -> str:
        return os.path.join(self.results, "work")


def _module(ctx: Context, module: str, *args: str) -> Tuple[str, ...]:
    return (ctx.python, "-m", module) + tuple(args)


def _copy_run(work_dir: str, dest: str, stamp_load: bool) -> Callable[[bool], None]:
    """Keep a run's small JSON with the results (work/ holds weights and is git-ignored); with
    ``stamp_load``, the load average when a training that ran here finished: was the machine shared?"""
    def after(ran: bool) -> None:
        os.makedirs(dest, exist_ok=True)
        for f in ("metrics.json", "config.json"):
            results_lib.copy_file(os.path.join(work_dir, f), os.path.join(dest, f))
        if stamp_load and ran:
            try:
                with open("/proc/loadavg") as src:
                    load = src.read()
            except OSError:
                return
            with open(os.path.join(dest, "loadavg.txt"), "w") as out:
                out.write(load)
    return after

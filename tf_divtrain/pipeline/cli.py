"""``python -m tf_divtrain.pipeline [--only=STAGE] [--dry-run] PRESET`` (``run_all.sh`` calls it)."""

from __future__ import annotations

import os
import sys
import textwrap
from typing import List, Optional

from tf_divtrain import io_utils
from tf_divtrain.pipeline import plan as plan_lib
from tf_divtrain.pipeline import runner
from tf_divtrain.pipeline.presets import PRESETS, PresetError, knob_values, resolve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USAGE_ERROR = 2

ENVIRONMENT = (
    "TF_DIVTRAIN_DATA = folder with mnist.npz / cifar10.npz (default: the package's lookup rules); "
    "PYTHON (default: this interpreter); RESULTS_ROOT (default results); PRESET_TRAIN_FLAGS = extra "
    "flags appended to every training command of any preset (default empty), e.g. "
    "PRESET_TRAIN_FLAGS=\"--intra_op_threads=-1\"; PRESET_PRECISION = the training precision "
    "(default: auto for cpu, cpu-cifar, cpu-methods, mnist-paper and cifar-paper -- mixed_bfloat16 "
    "where the CPU/GPU runs bfloat16 natively, else float32 -- and float32 for paper and the smoke "
    "presets; the study behind it: results/studies/precision_study/REPORT.md). Evaluation and analysis stay "
    "float32. MEMBERS_STAGE = 1 (default) runs the member-by-member breakdown after each row's "
    "evaluation (tf_divtrain.experiments.member_accuracy), 0 skips it (the default of the smoke "
    "presets). Weights, checkpoints and cached adversarial arrays go to results/<preset>/work/ "
    "(git-ignored).")


def usage() -> str:
    wrap = lambda text, indent: textwrap.fill(text, 100, initial_indent=indent,  # noqa: E731
                                              subsequent_indent=" " * 13)
    lines = ["Usage: bash run_all.sh [--only=STAGE] [--dry-run] PRESET",
             "   or: python -m tf_divtrain.pipeline [--only=STAGE] [--dry-run] PRESET", "",
             "Runs every stage of the reproduction with the package's own CLIs and the flagfiles in "
             "flags/:", "  train (surrogate, static model, T_Base, T_Div, T_Ens, T_Ens+Div) -> evaluate "
             "(transfer attacks,", "  Table 2) -> analyze (coherence histogram, GAAS, transferability, "
             "white-box) -> report", "  (results/<preset>/REPORT.md). Each stage logs to "
             "results/<preset>/logs/<stage>.log and is skipped", "  when its outputs exist, so re-running "
             "after an interruption continues where it stopped", "  (interrupted training resumes from "
             "its last checkpoint; an evaluation or analysis that lacks a", "  target the preset now "
             "trains, or is older than a model it measured, is re-run). --dry-run prints", "  the "
             f"commands without running them. --only = one of {', '.join(plan_lib.KINDS)}.", "",
             "Presets:"]
    for p in PRESETS.values():
        lines.append(wrap(p.help, f"  {p.name:<10} " if len(p.name) <= 10 else f"  {p.name}  "))
        for k in p.knobs:
            lines.append(wrap(f"{k.env} (default {k.default or 'see above'}): {k.help}.", " " * 13))
    lines += ["", wrap("Environment: " + ENVIRONMENT, "")]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None, env=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ if env is None else env)
    only, dry, preset = "", False, None
    try:
        for arg in argv:
            if arg in ("-h", "--help"):
                print(usage())
                return 0
            if arg.startswith("--only="):
                only = arg[len("--only="):]
            elif arg == "--dry-run":
                dry = True
            elif arg in PRESETS and preset is None:
                preset = arg
            else:
                raise PresetError(f"unknown argument {arg!r} (see --help)")
        if preset is None:
            print(usage(), file=sys.stderr)
            raise PresetError(f"name a preset ({', '.join(PRESETS)})")
        p, rows = resolve(preset, env)
        ctx = plan_lib.context(p, env, env.get("PYTHON") or sys.executable)
        stages = plan_lib.build(p, rows, ctx, only, knob_values(p, env))
        os.chdir(REPO)  # flagfiles and results/ are relative to the checkout
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        print(f"pipeline: preset={preset} results={ctx.results} training precision={ctx.precision}",
              flush=True)
        runner.run(stages, ctx, dry_run=dry, env=env)
    except (PresetError, io_utils.FileProblem) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except runner.StageFailed as e:
        return e.returncode
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return 130
    if dry:
        print(f"pipeline: dry run of preset '{preset}' (nothing was run)")
    else:
        print(f"pipeline: all stages of preset '{preset}' done; report: {ctx.results}/REPORT.md")
    return 0


def console() -> None:
    """Console script ``tf_divtrain-pipeline`` (= ``python -m tf_divtrain.pipeline``)."""
    sys.exit(main())

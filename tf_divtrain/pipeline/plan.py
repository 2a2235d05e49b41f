"""A resolved preset as an ordered list of stages, each with the rules that decide whether it runs.

A stage is skipped when its output (``done``) exists, unless one of its rules says the output is
out of date: it lacks a label the preset now evaluates, lacks per-example results, or is older than
an input (a model retrained after it, an evaluation newer than the comparison built on it). Rules
are read when the stage's turn comes, after the stages before it ran, as ``make`` would.
"""

from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

from tf_divtrain.pipeline.presets import Preset, PresetError, Row
from tf_divtrain.pipeline.stage import (  # noqa: F401  (the stage API, also importable from here)
    Context, Lacks, Newer, Stage, _copy_run, _module)

KINDS = ("train", "benchmark", "evaluate", "analyze", "field", "report")  # --only values


def context(preset: Preset, env: Mapping[str, str], python: str) -> Context:
    precision = env.get("PRESET_PRECISION") or preset.precision
    from tf_divtrain.pipeline.presets import PRECISIONS
    if precision not in PRECISIONS:
        raise PresetError(f"PRESET_PRECISION must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    members = env.get("MEMBERS_STAGE", "1" if preset.members else "0")
    if members not in ("0", "1"):
        raise PresetError(f"MEMBERS_STAGE must be 0 or 1 (got {members!r})")
    root = env.get("RESULTS_ROOT") or "results"
    where = os.path.join("studies", preset.name.replace("-", "_")) if preset.study else preset.name
    return Context(os.path.join(root, where), python, precision,
                   tuple(env.get("PRESET_TRAIN_FLAGS", "").split()), members == "1")


def train_stages(row: Row, ctx: Context) -> List[Stage]:
    w = os.path.join(ctx.work, row.name)
    stages = []
    for m in row.models:
        flags = row.train_flags + (f"--precision={ctx.precision}",) + m.flags + ctx.extra_train_flags
        if m.name == "static":  # the static model stays a single member whatever the preset does
            flags = tuple(f for f in flags if not f.startswith("--ensemble_size="))
        static = (f"--static_model={w}/static",) if m.static else ()
        out = os.path.join(w, m.name)
        argv = _module(ctx, "tf_divtrain.train", f"--flagfile=flags/{m.flagfile}.cfg",
                       f"--out_dir={out}", *static, "--progress=true", *flags)
        stages.append(Stage(f"train_{row.name}_{m.name}", "train", argv, os.path.join(out, "metrics.json"),
                            after=_copy_run(out, os.path.join(ctx.results, row.name, "train", m.name),
                                            row.stamp_load)))
    return stages


def _spec(row: Row, ctx: Context, names: Sequence[str], bare: bool = False) -> str:
    w = os.path.join(ctx.work, row.name)
    if bare:
        return ",".join(os.path.join(w, n) for n in names)
    return ",".join(f"{row.model(n).label}={os.path.join(w, n)}" for n in names)


def _metrics(row: Row, ctx: Context, names: Sequence[str]) -> Tuple[str, ...]:
    return tuple(os.path.join(ctx.work, row.name, n, "metrics.json") for n in names)


RETRAINED = "a model was retrained after {done}; re-running"
CACHED = " (cached attacks are reused)"


def evaluate_stage(row: Row, ctx: Context, name: str = "", surrogates: Optional[Sequence[str]] = None,
                   out: str = "eval", flags: Optional[Sequence[str]] = None, kind: str = "evaluate",
                   protocol: Tuple[str, ...] = ()) -> Stage:
    """The transfer evaluation of the row's targets from ``surrogates`` (default: the row's) into
    ``<row>/<out>/``; the field stage (:func:`field_stages`) is the same with its own surrogates,
    flags and ``--protocol=field``. The attack cache is the row's."""
    surrogates = tuple(row.surrogates if surrogates is None else surrogates)
    bare = row.surrogate_bare and surrogates == tuple(row.surrogates)
    out = os.path.join(ctx.results, row.name, out)
    labels = [row.model(n).label for n in row.targets]
    slabels = [] if bare else [row.model(n).label for n in surrogates]
    argv = _module(ctx, "tf_divtrain.evaluate", *protocol,
                   f"--surrogate_dir={_spec(row, ctx, surrogates, bare)}",
                   f"--targets={_spec(row, ctx, row.targets)}", f"--out_dir={out}",
                   f"--cache_dir={os.path.join(ctx.work, row.name, 'adv_cache')}",
                   *(row.eval_flags if flags is None else flags))
    lacks = " ".join(labels + slabels)
    return Stage(name or f"evaluate_{row.name}", kind, argv, os.path.join(out, "results.json"),
                 (Lacks(tuple(labels + slabels),
                        "{done} lacks some of: " + lacks + ", or per-example results; re-running" + CACHED),
                  Newer(_metrics(row, ctx, row.targets + surrogates), RETRAINED + CACHED)))


def analyze_stage(row: Row, ctx: Context) -> Stage:
    out = os.path.join(ctx.results, row.name, "analysis")
    labels = tuple(row.model(n).label for n in row.targets)
    # --coherence_margin: Fig. 4 also on the logit-margin gradients, which do not vanish (issue 27).
    argv = _module(ctx, "tf_divtrain.analyze", f"--ensembles={_spec(row, ctx, row.targets)}",
                   f"--out_dir={out}", "--coherence_margin=true", *row.analyze_flags)
    return Stage(f"analyze_{row.name}", "analyze", argv, os.path.join(out, "analysis.json"),
                 (Lacks(labels, "{done} lacks some of: " + " ".join(labels) + "; re-running"),
                  Newer(_metrics(row, ctx, row.targets), RETRAINED)))


def members_stage(row: Row, ctx: Context) -> Stage:
    """Every target's members, clean and under the evaluation's cached examples (issue 12)."""
    ev = os.path.join(ctx.results, row.name, "eval")
    argv = _module(ctx, "tf_divtrain.experiments.member_accuracy", f"--eval={ev}/results.json",
                   f"--out={ev}/member_accuracy")
    return Stage(f"members_{row.name}", "evaluate", argv, f"{ev}/member_accuracy.json",
                 (Newer((f"{ev}/results.json",)),))


def method_steps_stage(row: Row, ctx: Context) -> List[Stage]:
    """Every method's step cost timed interleaved on the same batches, so the report compares
    methods at one load (the training runs' own s / step depend on the load each had)."""
    res = os.path.join(ctx.results, row.name)
    argv = _module(ctx, "tf_divtrain.experiments.method_steps", f"--precision={ctx.precision}",
                   f"--out={res}/method_steps.json", f"--md={res}/METHOD_STEPS.md")
    return [Stage(f"benchmark_{row.name}_method_steps", "benchmark", argv, f"{res}/method_steps.json")]


def prediction_ce_stages(row: Row, ctx: Context) -> List[Stage]:
    """FGSM, R-FGSM, I-FGSM, MI-FGSM again from S5 and S_div maximising the CE of the ensemble's
    prediction, compared cell by cell with the paper's objective (McNemar on the same images)."""
    res = os.path.join(ctx.results, row.name)
    out = f"{res}/adaptive_loss"
    sur = ("s5", "sdiv")
    ev = _module(ctx, "tf_divtrain.evaluate", f"--surrogate_dir={_spec(row, ctx, sur)}",
                 f"--targets={_spec(row, ctx, row.targets)}", f"--out_dir={out}",
                 f"--cache_dir={os.path.join(ctx.work, row.name, 'adv_cache')}",
                 "--attacks=fgsm,rfgsm,ifgsm,mifgsm", "--attack_loss=prediction_ce", *row.eval_flags)
    cmp_ = _module(ctx, "tf_divtrain.experiments.compare_evals", f"--a={out}/results.json",
                   f"--b={res}/eval/results.json", "--label_a=prediction_ce", "--label_b=mean_member_ce",
                   f"--out={out}/comparison")
    return [Stage(f"evaluate_{row.name}_prediction_ce", "evaluate", ev, f"{out}/results.json",
                  (Newer(_metrics(row, ctx, row.targets + sur), RETRAINED),)),
            Stage(f"compare_{row.name}_prediction_ce", "evaluate", cmp_, f"{out}/comparison.md",
                  (Newer((f"{out}/results.json", f"{res}/eval/results.json")),))]


def field_stages(row: Row, ctx: Context) -> List[Stage]:
    """The field's transfer protocol from the row's field surrogates (``<row>/eval_field/``, which
    the report's "Field protocol" section reads) and ART's AutoAttack on every target
    (``<row>/autoattack/analysis.json``), issue 23; both of kind ``field``."""
    run = row.field
    labels = tuple(row.model(n).label for n in row.targets)
    res = os.path.join(ctx.results, row.name)
    aa = _module(ctx, "tf_divtrain.analyze", "--analyses=autoattack",
                 f"--ensembles={_spec(row, ctx, row.targets)}", f"--out_dir={res}/autoattack",
                 *run.autoattack)
    return [evaluate_stage(row, ctx, f"field_{row.name}", run.surrogates, "eval_field", run.evaluate,
                           "field", ("--protocol=field",)),
            Stage(f"autoattack_{row.name}", "field", aa, f"{res}/autoattack/analysis.json",
                  (Lacks(labels, "{done} lacks some of: " + " ".join(labels) + "; re-running"),
                   Newer(_metrics(row, ctx, row.targets), RETRAINED)))]


EXTRA_STAGES = {"method_steps": method_steps_stage, "prediction_ce": prediction_ce_stages}


def row_stages(row: Row, ctx: Context) -> List[Stage]:
    stages = train_stages(row, ctx)
    if "method_steps" in row.extras:
        stages += method_steps_stage(row, ctx)
    stages.append(evaluate_stage(row, ctx))
    if row.analyze_flags is not None:
        stages.append(analyze_stage(row, ctx))
    if row.members and ctx.members:
        stages.append(members_stage(row, ctx))
    for extra in row.extras:
        if extra != "method_steps":
            stages += EXTRA_STAGES[extra](row, ctx)
    if row.field is not None:
        stages += field_stages(row, ctx)
    return stages


def build(preset: Preset, rows: Sequence[Row], ctx: Context, only: str = "",
          knobs: Optional[Mapping[str, str]] = None) -> List[Stage]:
    """Every stage of the preset, in order; ``only`` keeps the stages of one kind."""
    if only and only not in KINDS:
        raise PresetError(f"--only must be one of {', '.join(KINDS)} (got {only!r})")
    if preset.study:
        from tf_divtrain.pipeline.studies import STUDIES

        from tf_divtrain.pipeline.presets import knob_values

        stages = STUDIES[preset.name](knob_values(preset, {}) if knobs is None else knobs, ctx)
        return [s for s in stages if not only or s.kind == only]
    stages = [s for row in rows for s in row_stages(row, ctx)]
    # The report is cheap and always rebuilt from whatever results exist.
    stages.append(Stage("report", "report", _module(ctx, "tf_divtrain.report", f"--preset={preset.name}",
                                                    f"--results_dir={ctx.results}")))
    return [s for s in stages if not only or s.kind == only]

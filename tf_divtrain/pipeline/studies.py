"""One-off studies of earlier issues as entries of the same runner: the stages that answered a
question, kept so the answer can be re-derived (``python -m tf_divtrain.pipeline STUDY``)."""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Mapping, Tuple

from tf_divtrain.pipeline.stage import Context, Newer, Stage, _copy_run, _module

Builder = Callable[[Mapping[str, str], Context], List[Stage]]


def _train(ctx: Context, name: str, flagfile: str, out: str, dest: str, *flags: str,
           requires: Tuple[str, ...] = ()) -> Stage:
    argv = _module(ctx, "tf_divtrain.train", f"--flagfile=flags/{flagfile}.cfg", f"--out_dir={out}",
                   "--progress=false", *flags, *ctx.extra_train_flags)
    return Stage(f"train_{name}", "train", argv, os.path.join(out, "metrics.json"),
                 after=_copy_run(out, dest, False), requires=requires)


def _evaluate(ctx: Context, name: str, surrogate: str, targets: Dict[str, str], out: str,
              cache: str) -> Stage:
    spec = ",".join(f"{k}={v}" for k, v in targets.items())
    argv = _module(ctx, "tf_divtrain.evaluate", f"--surrogate_dir={surrogate}", f"--targets={spec}",
                   f"--out_dir={out}", f"--cache_dir={cache}", "--dataset=mnist", "--num_examples=1000")
    inputs = tuple(os.path.join(d, "metrics.json") for d in (surrogate, *targets.values()))
    return Stage(name, "evaluate", argv, os.path.join(out, "results.json"),
                 (Newer(inputs, "a model was retrained after {done}; re-running"),))


def precision_study(k: Mapping[str, str], ctx: Context) -> List[Stage]:
    """Issue 10: surrogate, T_Base and T_Div of the cpu preset in mixed_bfloat16 and in float32 (and
    a second bf16 seed), evaluated against both surrogates: does any conclusion change?"""
    steps = (f"--max_steps={k['STUDY_STEPS']}", "--log_every=50")
    runs = [(f"{role}_{prec}", f"mnist_conv3_{role}", (f"--precision={prec}",))
            for prec in ("mixed_bfloat16", "float32") for role in ("surrogate", "base", "div")]
    runs += [(f"{role}_mixed_bfloat16_seed1", f"mnist_conv3_{role}", ("--precision=mixed_bfloat16", "--seed=1"))
             for role in ("base", "div")]
    stages = [_train(ctx, n, f, os.path.join(ctx.work, n), os.path.join(ctx.results, "train", n),
                     *steps, *flags) for n, f, flags in runs]
    targets = {t: os.path.join(ctx.work, t) for t in (
        "base_float32", "div_float32", "base_mixed_bfloat16", "div_mixed_bfloat16",
        "base_mixed_bfloat16_seed1", "div_mixed_bfloat16_seed1")}
    for s in ("float32", "mixed_bfloat16"):
        stages.append(_evaluate(ctx, f"evaluate_surrogate_{s}", os.path.join(ctx.work, f"surrogate_{s}"),
                                targets, os.path.join(ctx.results, f"eval_surrogate_{s}"),
                                os.path.join(ctx.work, "adv_cache")))
    stages.append(Stage("report", "report", _module(ctx, "tf_divtrain.experiments.precision_report",
                                                    f"--results={ctx.results}")))
    return stages


def ens_ablation(k: Mapping[str, str], ctx: Context) -> List[Stage]:
    """Issue 12: T_Ens / T_Ens+Div with true or predicted D_adv labels and a D_adv share of 1/2 or
    1/3, beside the cpu preset's models (same surrogate, static model and length)."""
    w = os.path.join(os.path.dirname(os.path.dirname(ctx.results)), "cpu", "work", "mnist_conv3")  # root/studies/x
    need = tuple(os.path.join(w, r, "metrics.json") for r in ("surrogate", "static", "ens", "ensdiv"))
    flags = (f"--static_model={w}/static", f"--max_steps={k['CPU_STEPS']}", "--log_every=50",
             f"--precision={ctx.precision}")
    stages = [_train(ctx, label, f"mnist_conv3_{role}", os.path.join(w, role),
                     os.path.join(ctx.results, "train", label), *flags, requires=need)
              for label, role in (("ens_pred_half", "ens"), ("ensdiv_pred_half", "ensdiv"))]
    variants = (("ens_true_half", "ens", "true", "0.5"), ("ensdiv_true_half", "ensdiv", "true", "0.5"),
                ("ensdiv_pred_third", "ensdiv", "predicted", "0.333"),
                ("ensdiv_true_third", "ensdiv", "true", "0.333"))
    for v, role, labels, share in variants:
        stages.append(_train(ctx, v, f"mnist_conv3_{role}", os.path.join(w, "ablation", v),
                             os.path.join(ctx.results, "train", v), *flags, f"--adv_labels={labels}",
                             f"--adv_share={share}", requires=need))
    targets = {"ens_pred_half": f"{w}/ens", "ens_true_half": f"{w}/ablation/ens_true_half",
               "ensdiv_pred_half": f"{w}/ensdiv", **{v: f"{w}/ablation/{v}" for v, *_ in variants[1:]}}
    stages.append(_evaluate(ctx, "evaluate", f"{w}/surrogate", targets, os.path.join(ctx.results, "eval"),
                            f"{w}/adv_cache"))
    stages.append(Stage("report", "report", _module(ctx, "tf_divtrain.experiments.ablation_report",
                                                    f"--results={ctx.results}")))
    return stages


def resnet20_length(k: Mapping[str, str], ctx: Context) -> List[Stage]:
    """Issue 11: does ResNet-20 T_Base's member alignment grow with training length? T_Base trained
    on to 260 and 390 steps (the same run, resumed), T_Div to 390; metrics kept at each length."""
    stages = []
    for role, steps in (("base", 260), ("base", 390), ("div", 390)):
        out = os.path.join(ctx.work, role)
        keep = os.path.join(ctx.results, f"{role}_metrics_{steps}.json")
        argv = _module(ctx, "tf_divtrain.train", f"--flagfile=flags/cifar10_resnet20_{role}.cfg",
                       f"--out_dir={out}", f"--max_steps={steps}", "--log_every=50",
                       f"--precision={ctx.precision}", "--progress=false", *ctx.extra_train_flags)

        def after(ran: bool, out=out, keep=keep) -> None:
            from tf_divtrain import results as results_lib

            if ran or not os.path.exists(keep):
                results_lib.copy_file(os.path.join(out, "metrics.json"), keep)
        stages.append(Stage(f"train_{role}_{steps}", "train", argv, keep, after=after))
    return stages


STUDIES: Dict[str, Builder] = {"precision-study": precision_study, "ens-ablation": ens_ablation,
                               "resnet20-length": resnet20_length}

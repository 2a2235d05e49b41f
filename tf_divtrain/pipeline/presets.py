"""The reproduction's presets as data: rows, rosters, stage flags and sizes (one table).

A preset is a list of rows. A row names the models it trains (flagfiles ``flags/<file>.cfg``),
which of them are targets and surrogates, and the extra flags of each stage. Sizes that a user may
change (``CPU_STEPS``, ``CIFAR_STEPS``, ...) are *knobs*: environment variables with a default,
read once by :func:`resolve`. Nothing here runs anything or touches the file system; the plan
(:mod:`tf_divtrain.pipeline.plan`) turns a resolved preset into stages.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Optional, Tuple

ROLES = ("surrogate", "static", "base", "div", "ens", "ensdiv")
TARGET_LABELS = {"base": "T_Base", "div": "T_Div", "ens": "T_Ens", "ensdiv": "T_Ens+Div"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


class PresetError(ValueError):
    """A preset, row or knob that cannot be planned; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Model:
    """One training run of a row: ``work/<row>/<name>``, trained from ``flags/<flagfile>.cfg``."""
    name: str
    flagfile: str
    label: str = ""             # its label as a target or surrogate ("" = not evaluated)
    flags: Tuple[str, ...] = ()  # this model's own flags (after the row's and the precision)
    static: bool = False         # ens_adv modes: gets --static_model=<row work>/static


@dataclasses.dataclass(frozen=True)
class Row:
    """A block of the reproduction: models trained alike, evaluated and analysed together."""
    name: str
    models: Tuple[Model, ...]
    targets: Tuple[str, ...]                 # model names scored as targets (their labels)
    surrogates: Tuple[str, ...]              # model names used as surrogates
    train_flags: Tuple[str, ...] = ()        # every training of the row: the same length
    eval_flags: Tuple[str, ...] = ()
    analyze_flags: Optional[Tuple[str, ...]] = ()  # None: no analysis stage
    members: bool = True                     # the member-by-member stage after the evaluation
    stamp_load: bool = False                 # keep the load average of each training run
    extras: Tuple[str, ...] = ()             # extra stages by name (plan.EXTRA_STAGES)
    surrogate_bare: bool = False             # one unlabelled surrogate ("S"), as the paper rows
    field: Optional["FieldRun"] = None       # the field protocol's stages (issue 23), if any

    def model(self, name: str) -> Model:
        for m in self.models:
            if m.name == name:
                return m
        raise PresetError(f"row {self.name} has no model {name!r}")


@dataclasses.dataclass(frozen=True)
class FieldRun:
    """A row's run under the field's transfer protocol (issue 23, ``evaluate --protocol=field``)
    and its white-box AutoAttack check (ART's APGD-CE + APGD-DLR, ``analyze --analyses=autoattack``),
    the stages of kind ``field``: ``<row>/eval_field/`` and ``<row>/autoattack/``."""
    surrogates: Tuple[str, ...]   # model names of the row crafted from ("" = the bare surrogate S)
    evaluate: Tuple[str, ...]     # evaluate's flags: dataset, size, eps
    autoattack: Tuple[str, ...]   # analyze's flags for the AutoAttack check


@dataclasses.dataclass(frozen=True)
class Knob:
    """A size a user may change through an environment variable: a whole number >= 1 (a step or
    image count), or 0 / 1 for a ``switch``."""
    env: str
    default: str
    help: str
    switch: bool = False


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    help: str
    rows: Optional[Callable[[Mapping[str, str]], Tuple[Row, ...]]]
    precision: str = "float32"      # training precision unless PRESET_PRECISION says otherwise
    members: bool = True            # MEMBERS_STAGE default
    knobs: Tuple[Knob, ...] = ()
    study: bool = False             # a one-off study: stages from pipeline.studies, results/studies/


def _flags(text: str) -> Tuple[str, ...]:
    return tuple(text.split())


def paper_row(name: str, train: str = "", evaluate: str = "", analyze: Optional[str] = "",
              roles: Tuple[str, ...] = ROLES) -> Row:
    """A Table 2 row: surrogate S, the static model and the targets among ``roles``."""
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise PresetError(f"unknown role {unknown[0]!r} for {name} (roles: {', '.join(ROLES)})")
    if "surrogate" not in roles:
        raise PresetError(f"row {name} needs the surrogate role")
    if ({"ens", "ensdiv"} & set(roles)) and "static" not in roles:
        raise PresetError(f"row {name} trains T_Ens/T_Ens+Div, which need the static role")
    targets = tuple(r for r in ("base", "div", "ens", "ensdiv") if r in roles)
    if not targets:
        raise PresetError(f"row {name} trains no target")
    models = tuple(Model(r, f"{name}_{r}", TARGET_LABELS.get(r, "S" if r == "surrogate" else ""),
                         static=r in ("ens", "ensdiv")) for r in roles)
    return Row(name, models, targets, ("surrogate",), _flags(train), _flags(evaluate),
               None if analyze is None else _flags(analyze), surrogate_bare=True)


# cpu-methods: targets share the flagfiles' seed 0; S5 is the cpu preset's surrogate (seed 10); the
# other surrogates have seeds of their own (members are seeded seed * 100 + i, so no surrogate
# shares a member's initial weights with another).
METHOD_TARGETS = (Model("base", "mnist_conv3_base", "T_Base"), Model("div", "mnist_conv3_div", "T_Div"),
                  Model("adp", "mnist_conv3_adp", "T_ADP"), Model("dverge", "mnist_conv3_dverge", "T_DVERGE"),
                  Model("trs", "mnist_conv3_trs", "T_TRS"))
METHOD_SURROGATES = (Model("s3", "mnist_conv3_surrogate", "S3", ("--ensemble_size=3", "--seed=13")),
                     Model("s5", "mnist_conv3_surrogate", "S5"),
                     Model("s8", "mnist_conv3_surrogate", "S8", ("--ensemble_size=8", "--seed=18")),
                     Model("sdiv", "mnist_conv3_div", "S_div", ("--seed=20",)))

MNIST_ANALYZE = ("--dataset=mnist --num_examples=500 --gaas_num_examples=100 "
                 "--transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20")
CIFAR_GAAS = "--gaas_k=4,16,36,64 --gaas_eps=0.03,0.06,0.09"


def _paper(k):
    rows = [paper_row("mnist_conv3", "", "--dataset=mnist --num_examples=10000",
                      "--dataset=mnist --num_examples=1000")]
    rows += [paper_row(r, "", "--dataset=cifar10 --num_examples=1000",
                       f"--dataset=cifar10 --num_examples=1000 {CIFAR_GAAS}")
             for r in ("cifar10_conv4", "cifar10_resnet20", "cifar10_mix")]
    return tuple(rows)


def _mnist_paper(k):
    return (paper_row("mnist_conv3", "--log_every=50", "--dataset=mnist --num_examples=10000",
                      MNIST_ANALYZE),)


def _cifar_paper(k):
    # White-box PGD on the first AUTOATTACK_EXAMPLES images: the same images as the AutoAttack
    # check, so the two white-box checks compare image by image (and ~1 h less than on 500).
    row = paper_row("cifar10_conv4", "--log_every=50", "--dataset=cifar10 --num_examples=1000",
                    f"--dataset=cifar10 --num_examples=1000 {CIFAR_GAAS} --gaas_num_examples=500 "
                    f"--transfer_num_examples=500 --whitebox_num_examples={k['AUTOATTACK_EXAMPLES']}")
    # Four of DVERGE's seven eps (0.01 ... 0.07) at full strength rather than all seven with fewer
    # restarts: about 2 h of crafting on 2 cores (issue 23); every reduction is in the report.
    field = FieldRun(("surrogate",), _flags(f"--dataset=cifar10 --num_examples={k['FIELD_EXAMPLES']} "
                                            "--eps=0.01,0.03,0.05,0.07"),
                     _flags(f"--dataset=cifar10 --num_examples={k['AUTOATTACK_EXAMPLES']}"))
    rows = (dataclasses.replace(row, field=field),)
    if k["RESNET20_ROW"] == "1":
        # Issue 22, item 4: the ResNet-20 row's surrogate, T_Base and T_Div at a tenth of the
        # paper's 40 epochs (1,560 steps of batch 128 = 4 epochs by default), the same length for
        # both targets; the report lists the reduction. Coherence only (Fig. 4 is also drawn for
        # ResNet-20); GAAS and the white-box checks stay with the Conv-4 row (Fig. 5).
        rows += (paper_row("cifar10_resnet20", f"--max_steps={k['RESNET20_STEPS']} --log_every=50",
                           "--dataset=cifar10 --num_examples=1000",
                           "--dataset=cifar10 --num_examples=1000 --analyses=coherence",
                           ("surrogate", "base", "div")),)
    return rows


def _cpu(k):
    return (paper_row("mnist_conv3", f"--max_steps={k['CPU_STEPS']} --log_every=50",
                      "--dataset=mnist --num_examples=1000", MNIST_ANALYZE),)


def _cpu_methods(k):
    models = METHOD_TARGETS + METHOD_SURROGATES
    return (Row("mnist_conv3", models, tuple(m.name for m in METHOD_TARGETS),
                tuple(m.name for m in METHOD_SURROGATES),
                _flags(f"--max_steps={k['CPU_STEPS']} --log_every=50"),
                _flags("--dataset=mnist --num_examples=1000"),
                _flags("--dataset=mnist --num_examples=500 --analyses=coherence,transfer,whitebox "
                       "--transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"),
                members=False, stamp_load=True, extras=("method_steps", "prediction_ce"),
                field=FieldRun(("s3", "s5", "s8"),
                               _flags(f"--dataset=mnist --num_examples={k['FIELD_EXAMPLES']}"),
                               _flags(f"--dataset=mnist --num_examples={k['AUTOATTACK_EXAMPLES']}"))),)


def _cpu_cifar(k):
    roles = ROLES if k["CIFAR_FULL_ROWS"] == "1" else ("surrogate", "base", "div")
    mix_steps = k["CIFAR_MIX_STEPS"] or k["CIFAR_RESNET_STEPS"]
    row_eval = f"--dataset=cifar10 --num_examples={k['CIFAR_ROW_EVAL_EXAMPLES']}"
    return (paper_row("cifar10_conv4", f"--max_steps={k['CIFAR_STEPS']} --log_every=50",
                      "--dataset=cifar10 --num_examples=1000",
                      f"--dataset=cifar10 --num_examples=500 {CIFAR_GAAS} --gaas_num_examples=100 "
                      "--transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"),
            paper_row("cifar10_resnet20", f"--max_steps={k['CIFAR_RESNET_STEPS']} --log_every=50",
                      row_eval, "--dataset=cifar10 --num_examples=500 --analyses=coherence", roles),
            paper_row("cifar10_mix", f"--max_steps={mix_steps} --log_every=50",
                      row_eval, "--dataset=cifar10 --num_examples=500 --analyses=coherence", roles))


def _smoke(k):
    return (paper_row(
        "mnist_conv3", "--max_steps=4 --batch_size=32 --ensemble_size=2 --train_examples=2000 "
        "--eval_examples=100 --log_every=2",
        "--dataset=mnist --num_examples=50 --batch_size=50 --attacks=fgsm,rfgsm,ifgsm,mifgsm,pgd_cw "
        '--attack_options={"ifgsm":{"nb_iter":2},"mifgsm":{"nb_iter":2},"pgd_cw":{"nb_iter":3}}',
        "--dataset=mnist --num_examples=50 --analyses=coherence,gaas --gaas_k=4,16 --gaas_eps=0.3 "
        "--batch_size=50"),)


def _smoke_cifar(k):
    return (paper_row(
        "cifar10_conv4", "--max_steps=2 --batch_size=16 --ensemble_size=3 --train_examples=256 "
        "--eval_examples=32 --log_every=2",
        "--dataset=cifar10 --num_examples=32 --batch_size=32 --attacks=fgsm,pgd_cw",
        "--dataset=cifar10 --num_examples=32 --analyses=coherence,gaas --gaas_k=4,16 "
        "--gaas_eps=0.03 --gaas_num_examples=16 --batch_size=32", ("surrogate", "base", "div")),)


def _knobs(*pairs) -> Tuple[Knob, ...]:
    return tuple(Knob(*p) for p in pairs)


CPU_STEPS = ("CPU_STEPS", "500", "training steps of every model (cpu, cpu-methods)")
AUTOATTACK_EXAMPLES = ("AUTOATTACK_EXAMPLES", "200", "test images of the AutoAttack check (field stage)")
PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("paper", "The paper's exact settings for every Table 2 row (MNIST Conv-3 10 epochs; CIFAR-10 "
           "Conv-4 20 epochs, ResNet-20 and MIX 40 epochs), all six models per row, full test sets "
           "(CIFAR-10: the 1,000 test images available). Meant for a GPU machine: days of CPU time.",
           _paper),
    Preset("mnist-paper", "The MNIST Conv-3 row at the paper's length (issue 12): every model 10 epochs of "
           "batch 128 (flags/mnist_conv3_*.cfg), D_adv with the static model's predicted labels and half "
           "of each batch (the defaults), all five attacks on the full 10,000 MNIST test images; analyses "
           "on the cpu preset's subsets. 6 x 4,680 = 28,080 training steps. Measured on a 2-core Xeon "
           "(mixed_bfloat16, host speed varying): 4.1 h of training stage time (including ~40 min of "
           "pauses), 49 min evaluation, 12 min analyses, 7 min member breakdown: about 5 hours over "
           "several sessions (it resumes); training ~1.7x slower in float32.", _mnist_paper, "auto"),
    Preset("cifar-paper", "The CIFAR-10 Conv-4 row at the paper's length (issue 22): surrogate, static "
           "model, T_Base, T_Div, T_Ens, T_Ens+Div, each 20 epochs of batch 128 (7,800 steps; "
           "flags/cifar10_conv4_*.cfg: lambda 0.5, D_noise/D_adv eps 0.09, D_adv with the static model's "
           "predicted labels and half of each batch), --precision=auto; the five attacks at eps "
           "0.03/0.09 on all 1,000 CIFAR-10 test images held (float32); coherence on all 1,000 (Fig. 4); "
           "GAAS at eps 0.03/0.06/0.09, k = 4, 16, 36, 64 on 500 (Fig. 5); member transferability on "
           "500; white-box PGD on the AUTOATTACK_EXAMPLES (default 200) images of the AutoAttack "
           "check; member breakdown. Measured on a 2-core Xeon with AMX (mixed_bfloat16, "
           "unpaused, over several resumed sessions): a 5-member baseline (surrogate, T_Base) 1.2-1.5 "
           "steps/s, i.e. ~1.5-1.8 h per model; the static model 5.4 steps/s (24 min); T_Div's GAL step "
           "1.4-2.3 s/step, i.e. ~3.5 h; so ~12 h of training where bfloat16 is native (more in "
           "float32). Analyses (float32) extrapolated from quiet probes on T_Base (20-100 images): "
           "~1.5-2 h for the four targets, of which white-box PGD-40 (2 eps x 2 losses on 200 images, "
           "6.9 s per iteration per 100 images) is ~40 min; the evaluation's crafting an estimated "
           "~0.5 h (52 gradient steps per image and eps). It "
           "resumes, so run it over several sessions. Then (stages of kind field, issue 23) the field's "
           "transfer protocol from S on FIELD_EXAMPLES (default 200) test images at eps "
           "0.01/0.03/0.05/0.07 (estimated ~2 h) and ART's AutoAttack (APGD-CE + APGD-DLR) on every "
           "target on AUTOATTACK_EXAMPLES (default 200). RESNET20_ROW=1 adds the ResNet-20 row's "
           "surrogate, T_Base and T_Div at RESNET20_STEPS (default 1,560 = 4 epochs, a tenth of the "
           "paper's 40), evaluated on the 1,000 images with coherence on 1,000 (issue 22, item 4).", _cifar_paper, "auto",
           knobs=_knobs(("FIELD_EXAMPLES", "200", "test images of the field-protocol stage"),
                        AUTOATTACK_EXAMPLES,
                        ("RESNET20_ROW", "0", "1 = add the ResNet-20 row (surrogate, T_Base, T_Div)", True),
                        ("RESNET20_STEPS", "1560", "ResNet-20 row steps (1,560 = 4 of the paper's "
                                                   "40 epochs)"))),
    Preset("cpu", "The MNIST Conv-3 row with the paper's architecture, attacks, eps (0.1/0.3), lambda, "
           "noise and ensemble size, scaled to finish within ~90 minutes on a 2-core CPU: every model "
           "trains CPU_STEPS (default 500) steps of batch 128 instead of 10 epochs; transfer attacks use "
           "the first 1,000 test images; coherence 500, GAAS, member transferability and white-box PGD "
           "100 (PGD with 10 / 20 iterations). The report lists every reduction.", _cpu, "auto",
           knobs=_knobs(CPU_STEPS)),
    Preset("cpu-cifar", "The three CIFAR-10 rows of Table 2 scaled to an estimated two hours on a quiet "
           "2-core CPU, with the paper's architectures, 5 members, lambda 0.5, D_noise/D_adv eps 0.09, "
           "and the five attacks with their paper settings at eps 0.03/0.09. Conv-4 row complete: "
           "surrogate, static model, T_Base, T_Div, T_Ens, T_Ens+Div, each CIFAR_STEPS (default 160) "
           "steps of batch 128 = 0.41 epochs instead of 20 epochs; attacks on the 1,000 test images; "
           "coherence on 500 (Fig. 4); GAAS on the first 100 (Fig. 5: k = 4, 16, 36, 64 at the paper's "
           "eps 0.03/0.06/0.09 -- 16 in place of the paper's k = 25, which has no regular Hadamard "
           "matrix); member transferability and white-box PGD on 100 (10 / 20 iterations). ResNet-20 "
           "and MIX rows: surrogate, T_Base and T_Div only (CIFAR_FULL_ROWS=1 adds the static model, "
           "T_Ens and T_Ens+Div: roughly +30 min), each CIFAR_RESNET_STEPS (default 130) / "
           "CIFAR_MIX_STEPS (default: CIFAR_RESNET_STEPS) steps of batch 128 = 0.33 epochs instead of "
           "40 epochs; attacks on the first CIFAR_ROW_EVAL_EXAMPLES (default 500) test images; "
           "coherence on 500. Budget (float32, quiet 2-core Xeon with AMX): per step of a whole row "
           "Conv-4 ~10.3 s, ResNet-20 ~6.2 s, MIX ~5.2 s; ~68 min of fixed stages.", _cpu_cifar, "auto",
           knobs=_knobs(("CIFAR_STEPS", "160", "Conv-4 row steps"),
                        ("CIFAR_RESNET_STEPS", "130", "ResNet-20 row steps"),
                        ("CIFAR_MIX_STEPS", "", "MIX row steps (default: CIFAR_RESNET_STEPS)"),
                        ("CIFAR_FULL_ROWS", "0", "1 = all six models in the ResNet-20 and MIX rows", True),
                        ("CIFAR_ROW_EVAL_EXAMPLES", "500", "test images of the ResNet-20/MIX evaluations"))),
    Preset("cpu-methods", "GAL next to the peer methods of issue 14 at the cpu preset's scale: MNIST "
           "Conv-3, every model CPU_STEPS (default 500) steps of batch 128. Targets T_Base, T_Div, T_ADP, "
           "T_DVERGE, T_TRS (5 members, seed 0: the same initial weights); surrogates: baseline ensembles "
           "of 3, 5 and 8 members (S3, S5, S8; seeds 13, 10, 18) and an adaptive attacker S_div, a "
           "GAL-trained 5-member ensemble (seed 20). All five attacks at eps 0.1/0.3 from every "
           "surrogate on the first 1,000 test images; coherence (500 images), member transferability "
           "and white-box PGD (100 images, 10 / 20 iterations); every method's step cost timed "
           "interleaved (--only=benchmark, about 2 minutes); FGSM, R-FGSM, I-FGSM, MI-FGSM again from S5 "
           "and S_div with --attack_loss=prediction_ce, compared cell by cell with the paper's "
           "objective (adaptive_loss/comparison.md). About 1.3 h on a quiet 2-core machine. Then (stages of "
           "kind field, issue 23; --only=field runs just them) the field's transfer protocol from S3, "
           "S5 and S8 on FIELD_EXAMPLES (default 300) test images at eps 0.1/0.2/0.3 (estimated ~2 h) "
           "and ART's AutoAttack (APGD-CE + APGD-DLR) on every target on AUTOATTACK_EXAMPLES (default "
           "200).",
           _cpu_methods, "auto",
           knobs=_knobs(CPU_STEPS, ("FIELD_EXAMPLES", "300", "test images of the field-protocol stage"),
                        AUTOATTACK_EXAMPLES)),
    Preset("smoke", "Every stage on tiny settings (2 members, 4 steps; the five attacks on 50 test "
           "images, I-FGSM/MI-FGSM 2 and PGD-CW 3 iterations; coherence and GAAS on 50, no "
           "transferability or white-box check): a few minutes; used by the test suite to prove the "
           "pipeline works end to end.", _smoke,
           members=False),
    Preset("smoke-cifar", "The CIFAR-10 Conv-4 row on tiny settings (surrogate, T_Base, T_Div; 3 members, "
           "2 steps of batch 16 on 256 training images; FGSM and PGD-CW at eps 0.03/0.09 on 32 test "
           "images; coherence and GAAS k = 4, 16 at eps 0.03): about two minutes.", _smoke_cifar,
           members=False),
    Preset("precision-study", "Study (issue 10): surrogate, T_Base and T_Div of the cpu preset trained in "
           "mixed_bfloat16 and in float32 (and a second bfloat16 seed), STUDY_STEPS steps each, evaluated "
           "against both surrogates on 1,000 images; results/studies/precision_study/REPORT.md.",
           None, "auto", members=False, study=True,
           knobs=_knobs(("STUDY_STEPS", "500", "training steps of every model"))),
    Preset("ens-ablation", "Study (issue 12): T_Ens / T_Ens+Div with true or predicted D_adv labels and a "
           "D_adv share of 1/2 or 1/3, CPU_STEPS steps, beside the cpu preset's models (run `cpu` "
           "first); results/studies/ens_ablation/REPORT.md.", None, "auto", members=False, study=True,
           knobs=_knobs(CPU_STEPS)),
    Preset("resnet20-length", "Study (issue 11): ResNet-20 T_Base trained on to 260 and 390 steps (one "
           "run, resumed) and T_Div to 390, metrics kept at each length: does member alignment grow "
           "with training? results/studies/resnet20_length/.", None, "auto", members=False, study=True),
)}


def knob_values(p: Preset, env: Mapping[str, str]) -> Dict[str, str]:
    return {kn.env: env.get(kn.env) or kn.default for kn in p.knobs}


def resolve(name: str, env: Mapping[str, str]) -> Tuple[Preset, Tuple[Row, ...]]:
    """The preset called ``name`` and its rows (none for a study), with its knobs read from ``env``."""
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    p = PRESETS[name]
    values = knob_values(p, env)
    for kn in p.knobs:
        v = values[kn.env]
        if v and kn.switch and v not in ("0", "1"):
            raise PresetError(f"{kn.env}={v!r} must be 0 or 1 ({kn.help})")
        if v and not v.isdigit():
            raise PresetError(f"{kn.env}={v!r} must be a whole number ({kn.help})")
        if v and not kn.switch and int(v) < 1:  # 0 steps would mean the flagfile's full length
            raise PresetError(f"{kn.env}={v!r} must be at least 1 ({kn.help})")
    return p, () if p.study else p.rows(values)

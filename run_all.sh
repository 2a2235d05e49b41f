#!/usr/bin/env bash
# One-script reproduction of Diversity Training (Kariyappa & Qureshi 2019): Table 2, Fig. 4, Fig. 5.
# Usage: bash run_all.sh [--only=train|benchmark|evaluate|analyze|report] [--dry-run] <preset>   (see --help)
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: bash run_all.sh [--only=STAGE] [--dry-run] PRESET

Runs every stage of the reproduction with the package's own CLIs and the flagfiles in flags/:
  train (surrogate, static model, T_Base, T_Div, T_Ens, T_Ens+Div) -> evaluate (transfer attacks,
  Table 2) -> analyze (coherence histogram, GAAS, transferability, white-box) -> report
  (results/<preset>/REPORT.md). Each stage logs to results/<preset>/logs/<stage>.log and is skipped
  when its outputs exist, so re-running after an interruption continues where it stopped
  (interrupted training resumes from its last checkpoint; an evaluation or analysis that lacks a
  target the preset now trains is re-run). --dry-run prints the commands without running them.

Presets:
  paper      The paper's exact settings for every Table 2 row (MNIST Conv-3 10 epochs; CIFAR-10
             Conv-4 20 epochs, ResNet-20 and MIX 40 epochs), all six models per row, full test sets
             (CIFAR-10: the 1,000 test images available). Meant for a GPU machine: days of CPU time.
  mnist-paper  The MNIST Conv-3 row at the paper's length (issue 12): every model 10 epochs of
             batch 128 (flags/mnist_conv3_*.cfg), D_adv with the static model's predicted labels
             and half of each batch (the defaults), all five attacks on the full 10,000 MNIST test
             images; analyses on the cpu preset's subsets. 6 x 4,680 = 28,080 training steps.
             Measured on a 2-core Xeon (mixed_bfloat16, host speed varying): 4.1 h of training
             stage time (including ~40 min of pauses), 49 min evaluation, 12 min analyses, 7 min
             member breakdown: about 5 hours over several sessions (it resumes); training ~1.7x
             slower in float32.
  cifar-paper  The CIFAR-10 Conv-4 row at the paper's length (issue 22): surrogate, static model,
             T_Base, T_Div, T_Ens, T_Ens+Div, each 20 epochs of batch 128 (7,800 steps;
             flags/cifar10_conv4_*.cfg: lambda 0.5, D_noise/D_adv eps 0.09, D_adv with the static
             model's predicted labels and half of each batch), --precision=auto; the five attacks
             at eps 0.03/0.09 on all 1,000 CIFAR-10 test images held (float32); coherence on all
             1,000 (Fig. 4); GAAS at eps 0.03/0.06/0.09, k = 4, 16, 36, 64 on 500 (Fig. 5);
             member transferability and white-box PGD on 500; member breakdown. Estimate from
             measured step times: ~10 h of training where bfloat16 is native, ~17 h in float32,
             plus ~1.5 h of evaluation and analysis; it resumes, so run it over several sessions.
  cpu        The MNIST Conv-3 row with the paper's architecture, attacks, eps (0.1/0.3), lambda,
             noise and ensemble size, scaled to finish within ~90 minutes on a 2-core CPU:
             every model trains CPU_STEPS (default 500) steps of batch 128 instead of 10 epochs;
             transfer attacks use the first 1,000 test images; coherence 500, GAAS, member
             transferability and white-box PGD 100 (PGD with 10 / 20 iterations). The report
             lists every reduction.
  cpu-cifar  The three CIFAR-10 rows of Table 2 scaled to an estimated two hours on a quiet
             2-core CPU (float32; estimate from measured step and stage costs, see the comment in
             this script), with the paper's architectures, 5 members, lambda 0.5, D_noise/D_adv
             eps 0.09, and the five attacks with their paper settings at eps 0.03/0.09:
             - Conv-4 row complete: surrogate, static model, T_Base, T_Div, T_Ens, T_Ens+Div, each
               CIFAR_STEPS (default 160) steps of batch 128 = 0.41 epochs instead of 20 epochs;
               attacks on the 1,000 test images; coherence on 500 (Fig. 4); GAAS on the first 100
               (Fig. 5: k = 4, 16, 36, 64 at the paper's eps 0.03/0.06/0.09 -- 16 in place of the
               paper's k = 25, which has no regular Hadamard matrix); member transferability and
               white-box PGD on 100 (10 / 20 iterations).
             - ResNet-20 and MIX rows: surrogate, T_Base and T_Div only (CIFAR_FULL_ROWS=1 adds
               the static model, T_Ens and T_Ens+Div: roughly +30 min), each CIFAR_RESNET_STEPS
               (default 130) / CIFAR_MIX_STEPS (default: CIFAR_RESNET_STEPS) steps of batch 128 =
               0.33 epochs instead of 40 epochs; attacks on the first CIFAR_ROW_EVAL_EXAMPLES
               (default 500) test images; coherence on 500 (no GAAS, transferability or white-box).
             The provided cifar10.npz holds only the first 1,000 test images (the paper: 10,000).
             The report, results/cpu-cifar/REPORT.md, lists every reduction and shows targets or
             rows that did not run as "not run".
  cpu-methods  GAL next to the peer methods of issue 14 at the cpu preset's scale: MNIST Conv-3,
             every model CPU_STEPS (default 500) steps of batch 128. Targets T_Base, T_Div, T_ADP,
             T_DVERGE, T_TRS (flags/mnist_conv3_{base,div,adp,dverge,trs}.cfg: 5 members, seed 0,
             so the same initial weights); surrogates: baseline ensembles of 3, 5 and 8 members (S3,
             S5, S8; seeds 13, 10, 18) and an adaptive attacker S_div, a GAL-trained 5-member
             ensemble (seed 20). All five attacks at eps 0.1/0.3 from every surrogate on the first
             1,000 test images; coherence (500 images), member transferability and white-box PGD
             (100 images, 10 / 20 iterations); every method's step cost timed interleaved
             (benchmarks/method_steps.py, --only=benchmark, about 2 minutes); FGSM, R-FGSM,
             I-FGSM, MI-FGSM again from S5 and S_div with --attack_loss=prediction_ce, compared
             cell by cell with the paper's objective (adaptive_loss/comparison.md); report:
             results/cpu-methods/REPORT.md (one comparison table). Everything is trained in the
             preset's own work dir (the cpu preset's weights are not reused). About 1.3 h on a
             quiet 2-core machine (estimate: ~50 min of training at the benchmark's quiet step
             times -- baseline 0.21 s, GAL 0.49 s, ADP 0.20 s, TRS 1.8 s, DVERGE 2.0 s -- plus the
             committed run's 15 min evaluation and 8 min analysis), not timed end to end.
  smoke      Every stage on tiny settings (3 members, a few steps, 100 test images): a few
             minutes; used by the test suite to prove the script works end to end.
  smoke-cifar  The CIFAR-10 Conv-4 row on tiny settings (surrogate, T_Base, T_Div; 3 members,
             2 steps of batch 16 on 256 training images; FGSM and PGD-CW at eps 0.03/0.09 on 32
             test images; coherence and GAAS k = 4, 16 at eps 0.03): about two minutes; the test
             suite runs it (tests/test_cifar_smoke.py, with a MIX-like GAL step in-process).

Environment: TF_DIVTRAIN_DATA = folder with mnist.npz / cifar10.npz (default: the package's
lookup rules); PYTHON (default python); RESULTS_ROOT (default results); CPU_STEPS (cpu and
cpu-methods presets); CIFAR_STEPS, CIFAR_RESNET_STEPS, CIFAR_MIX_STEPS, CIFAR_FULL_ROWS,
CIFAR_ROW_EVAL_EXAMPLES (cpu-cifar preset); PRESET_TRAIN_FLAGS = extra flags appended to every
training command of any preset (default empty), e.g. PRESET_TRAIN_FLAGS="--intra_op_threads=-1";
PRESET_PRECISION = the training precision (default: auto for cpu, cpu-cifar, cpu-methods and
mnist-paper -- mixed_bfloat16 where the CPU/GPU runs bfloat16 natively, else float32 -- and
float32 for paper and the smoke presets; the study behind it: results/precision_study/REPORT.md).
Evaluation and analysis stay float32. MEMBERS_STAGE = 1 (default) runs the member-by-member
breakdown after each row's evaluation (experiments/member_accuracy.py), 0 skips it (the default of
the smoke presets).
Weights, checkpoints and cached adversarial arrays go to results/<preset>/work/ (git-ignored).
TXT
}

ONLY=""
PRESET=""
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --only=*) ONLY="${arg#--only=}" ;;
    --dry-run) DRY_RUN=1 ;;
    paper|mnist-paper|cifar-paper|cpu|cpu-methods|cpu-cifar|smoke|smoke-cifar) PRESET="$arg" ;;
    *) echo "run_all.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$PRESET" ] || { usage >&2; exit 2; }
case "$ONLY" in ""|train|benchmark|evaluate|analyze|report) ;; *) echo "run_all.sh: --only must be train, benchmark, evaluate, analyze or report" >&2; exit 2 ;; esac

cd "$(dirname "$0")"
PY="${PYTHON:-python}"
RES="${RESULTS_ROOT:-results}/$PRESET"
WORK="$RES/work"
LOGS="$RES/logs"
# Training precision (issue 10): the CPU presets use --precision=auto (mixed_bfloat16 where the
# hardware runs bfloat16 natively, else float32 with a message), because the equivalence study
# (results/precision_study/REPORT.md) found that no conclusion of the cpu preset changes with it;
# paper and the smoke presets train in float32. PRESET_PRECISION overrides either.
case "$PRESET" in
  cpu|cpu-cifar|cpu-methods|mnist-paper|cifar-paper) PRECISION="${PRESET_PRECISION:-auto}" ;;
  *) PRECISION="${PRESET_PRECISION:-float32}" ;;
esac
case "$PRECISION" in float32|mixed_bfloat16|mixed_float16|auto) ;;
  *) echo "run_all.sh: PRESET_PRECISION must be float32, mixed_bfloat16, mixed_float16 or auto (got '$PRECISION')" >&2; exit 2 ;;
esac
TRAIN_FLAGS_ALL="--precision=$PRECISION ${PRESET_TRAIN_FLAGS:-}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
TIMINGS="$RES/stage_times.tsv"
if [ "$DRY_RUN" = 0 ]; then
  mkdir -p "$WORK" "$LOGS"
  [ -f "$TIMINGS" ] || printf 'stage\tseconds\tstatus\tcommand\n' > "$TIMINGS"
fi

# stage NAME DONE_FILE CMD...: runs CMD unless DONE_FILE exists; logs and times it. Sets STAGE_RAN=1
# when CMD ran (and succeeded), 0 when it was skipped or dry-run.
stage() {
  local name="$1" done_file="$2"; shift 2
  STAGE_RAN=0
  if [ -n "$done_file" ] && [ -e "$done_file" ]; then
    echo "== $name: done already ($done_file exists), skipped"
    return 0
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "== $name: would run: $*"
    return 0
  fi
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$LOGS/$name.log" 2>&1; then
    STAGE_RAN=1
    local dt=$((SECONDS - t0))
    printf '%s\t%s\tok\t%s\n' "$name" "$dt" "$*" >> "$TIMINGS"
    echo "   finished in ${dt}s (log: $LOGS/$name.log)"
  else
    local rc=$? dt=$((SECONDS - t0))
    printf '%s\t%s\tfailed\t%s\n' "$name" "$dt" "$*" >> "$TIMINGS"
    echo "   FAILED after ${dt}s (exit $rc); last lines of $LOGS/$name.log:" >&2
    tail -n 20 "$LOGS/$name.log" >&2
    exit "$rc"
  fi
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# covers FILE LABEL...: FILE (an evaluate results.json or analyze analysis.json) exists and already
# holds every LABEL, so a stage whose target list grew (e.g. CIFAR_FULL_ROWS=1 after a short run)
# is re-run instead of skipped.
covers() {
  local f="$1"; shift
  [ -e "$f" ] || return 1
  "$PY" - "$f" "$@" <<'PY'
import json, sys
with open(sys.argv[1]) as fh:
    d = json.load(fh)
have = ({r.get("label") for r in d.get("rows", [])} | set(d.get("ensembles", {}))
        | {b.get("label") for b in d.get("by_surrogate", [])})
# An evaluation also needs per-example correctness in every row (the reports' paired tests).
rows = d.get("rows", []) + [r for b in d.get("by_surrogate", []) for r in b.get("rows", [])]
sys.exit(0 if set(sys.argv[2:]) <= have and all(r.get("per_example") for r in rows) else 1)
PY
}

# spec_part SPEC 1|2: the labels (1) or directories (2) of a "LABEL=DIR,..." spec, space-separated;
# a bare DIR entry has no label and is its own directory.
spec_part() {
  local entry out=""
  local IFS=,
  for entry in $1; do
    case "$entry" in
      *=*) [ "$2" = 1 ] && out="${out:+$out }${entry%%=*}" || out="${out:+$out }${entry#*=}" ;;
      *) [ "$2" = 2 ] && out="${out:+$out }$entry" ;;
    esac
  done
  echo "$out"
}

# evaluate_and_analyze ROW SURROGATES TARGETS EVAL_FLAGS ANALYZE_FLAGS
# SURROGATES / TARGETS: "LABEL=DIR,..." specs (a bare surrogate DIR is labelled S). Evaluates every
# target against every surrogate (attacks cached in work/ROW/adv_cache) and analyses the targets.
# A stage whose output exists is skipped unless the output lacks a label (the target list grew),
# lacks per-example results (written by an older version), or a model it measured was retrained
# after it; then it re-runs, reusing the cached attacks.
evaluate_and_analyze() {
  local row="$1" surrogates="$2" targets="$3" eval_extra="$4" analyze_extra="$5"
  local w="$WORK/$row" labels slabels dirs sdirs
  labels="$(spec_part "$targets" 1)"; dirs="$(spec_part "$targets" 2)"
  slabels="$(spec_part "$surrogates" 1)"; sdirs="$(spec_part "$surrogates" 2)"
  if want evaluate; then
    local done_eval="$RES/$row/eval/results.json"
    # shellcheck disable=SC2086
    if [ -e "$done_eval" ] && ! covers "$done_eval" $labels $slabels; then
      echo "== evaluate_${row}: $done_eval lacks some of: $labels${slabels:+ $slabels}, or per-example results; re-running (cached attacks are reused)"
      done_eval=""
    elif [ -e "$done_eval" ] && stale "$done_eval" $dirs $sdirs; then
      echo "== evaluate_${row}: a model was retrained after $done_eval; re-running (cached attacks are reused)"
      done_eval=""
    fi
    # shellcheck disable=SC2086
    stage "evaluate_${row}" "$done_eval" \
      "$PY" -m tf_divtrain.evaluate --surrogate_dir="$surrogates" --targets="$targets" \
      --out_dir="$RES/$row/eval" --cache_dir="$w/adv_cache" $eval_extra
  fi
  if want analyze; then
    local done_an="$RES/$row/analysis/analysis.json"
    # shellcheck disable=SC2086
    if [ -e "$done_an" ] && ! covers "$done_an" $labels; then
      echo "== analyze_${row}: $done_an lacks some of: $labels; re-running"
      done_an=""
    elif [ -e "$done_an" ] && stale "$done_an" $dirs; then
      echo "== analyze_${row}: a model was retrained after $done_an; re-running"
      done_an=""
    fi
    # shellcheck disable=SC2086
    stage "analyze_${row}" "$done_an" \
      "$PY" -m tf_divtrain.analyze --ensembles="$targets" \
      --out_dir="$RES/$row/analysis" --coherence_margin=true $analyze_extra
  fi
}

# stale FILE DIR...: FILE (an evaluation or analysis) is older than some DIR/metrics.json, i.e. a
# model it measured was retrained since, so the stage runs again instead of keeping old numbers.
stale() {
  local f="$1" d; shift
  for d in "$@"; do [ "$d/metrics.json" -nt "$f" ] && return 0; done
  return 1
}

target_label() {
  case "$1" in base) echo T_Base ;; div) echo T_Div ;; ens) echo T_Ens ;; ensdiv) echo T_Ens+Div ;; esac
}

ALL_ROLES="surrogate static base div ens ensdiv"

# run_row ROW EXTRA_TRAIN_FLAGS EVAL_FLAGS ANALYZE_FLAGS [ROLES]
# ROLES: space-separated subset of "$ALL_ROLES" (default: all six). Every trained role uses the
# same EXTRA_TRAIN_FLAGS (plus $PRESET_TRAIN_FLAGS), so a row's targets train the same number of
# steps. The targets evaluated and analysed are the trained ones among base, div, ens, ensdiv.
run_row() {
  local row="$1" train_extra="$2" eval_extra="$3" analyze_extra="$4" roles="${5:-$ALL_ROLES}"
  local w="$WORK/$row" role
  for role in $roles; do
    case " $ALL_ROLES " in *" $role "*) ;; *) echo "run_all.sh: unknown role '$role' for $row" >&2; exit 2 ;; esac
  done
  case " $roles " in *" surrogate "*) ;; *) echo "run_all.sh: row $row needs the surrogate role" >&2; exit 2 ;; esac
  case " $roles " in
    *" ens "*|*" ensdiv "*) case " $roles " in *" static "*) ;; *)
      echo "run_all.sh: row $row trains T_Ens/T_Ens+Div, which need the static role" >&2; exit 2 ;; esac ;;
  esac
  local targets=""
  for role in base div ens ensdiv; do
    case " $roles " in *" $role "*) targets="${targets:+$targets,}$(target_label "$role")=$w/$role" ;; esac
  done
  [ -n "$targets" ] || { echo "run_all.sh: row $row trains no target" >&2; exit 2; }
  if want train; then
    for role in $roles; do
      local static_flag="" extra="$train_extra $TRAIN_FLAGS_ALL"
      case "$role" in ens|ensdiv) static_flag="--static_model=$w/static" ;; esac
      # The static model stays a single member whatever the preset does to ensemble sizes.
      [ "$role" = static ] && extra="$(echo "$extra" | sed -E 's/--ensemble_size=[0-9]+//')"
      # shellcheck disable=SC2086
      stage "train_${row}_${role}" "$w/$role/metrics.json" \
        "$PY" -m tf_divtrain.train --flagfile="flags/${row}_${role}.cfg" \
        --out_dir="$w/$role" $static_flag --progress=true $extra
      # Keep the small per-run JSON with the results (work/ holds weights and is git-ignored).
      if [ "$DRY_RUN" = 0 ]; then
        mkdir -p "$RES/$row/train/$role"
        cp "$w/$role/metrics.json" "$w/$role/config.json" "$RES/$row/train/$role/"
      fi
    done
  fi
  evaluate_and_analyze "$row" "$w/surrogate" "$targets" "$eval_extra" "$analyze_extra"
  # Member by member (experiments/member_accuracy.py): every target's members, clean and under the
  # evaluation's cached examples, with the fooled / corrected split -- what explains a cell where an
  # ordering fails (issue 12). Re-runs when the evaluation is newer. MEMBERS_STAGE=0 skips it (the
  # smoke presets do, to keep the test suite short; tests/test_member_accuracy.py covers the script).
  if want evaluate && [ "${MEMBERS_STAGE:-1}" = 1 ]; then
    local done_mem="$RES/$row/eval/member_accuracy.json"
    if [ -e "$done_mem" ] && [ "$RES/$row/eval/results.json" -nt "$done_mem" ]; then done_mem=""; fi
    stage "members_${row}" "$done_mem" \
      "$PY" experiments/member_accuracy.py --eval="$RES/$row/eval/results.json" \
      --out="$RES/$row/eval/member_accuracy"
  fi
}

# One record per line, NAME:FLAGFILE_ROLE:EXTRA_FLAGS:LABEL. Targets share the flagfiles' seed 0;
# S5 is the cpu preset's surrogate (flagfile seed 10); the others have seeds of their own (members
# are seeded seed * 100 + i, so no surrogate shares a member's initial weights with another).
METHOD_TARGETS="base:base::T_Base
div:div::T_Div
adp:adp::T_ADP
dverge:dverge::T_DVERGE
trs:trs::T_TRS"
METHOD_SURROGATES="s3:surrogate:--ensemble_size=3 --seed=13:S3
s5:surrogate::S5
s8:surrogate:--ensemble_size=8 --seed=18:S8
sdiv:div:--seed=20:S_div"

# specs RECORDS DIR: "LABEL=DIR/NAME,..." of the records' exports.
specs() {
  local line name cfg extra label out=""
  while IFS=: read -r name cfg extra label; do
    [ -n "$name" ] && out="${out:+$out,}$label=$2/$name"
  done <<< "$1"
  echo "$out"
}

# run_methods ROW EXTRA_TRAIN_FLAGS EVAL_FLAGS ANALYZE_FLAGS (preset cpu-methods)
# Trains the targets (T_Base, T_Div and the peer methods, flags/<row>_<role>.cfg) and four surrogates
# (baselines of 3, 5, 8 members; a GAL-trained adaptive attacker), evaluates every target against
# every surrogate (one Table 2 block each) and analyses the targets. Every training gets the same
# EXTRA_TRAIN_FLAGS (plus $PRESET_TRAIN_FLAGS), so all models train the same number of steps.
run_methods() {
  local row="$1" train_extra="$2" eval_extra="$3" analyze_extra="$4"
  local w="$WORK/$row" line name cfg extra label jobs targets surrogates
  targets="$(specs "$METHOD_TARGETS" "$w")"
  surrogates="$(specs "$METHOD_SURROGATES" "$w")"
  if want train; then
    # An array, not a `while read` loop: the training commands must not see the list on stdin.
    mapfile -t jobs <<< "$METHOD_TARGETS"$'\n'"$METHOD_SURROGATES"
    for line in "${jobs[@]}"; do
      IFS=: read -r name cfg extra label <<< "$line"
      # shellcheck disable=SC2086
      stage "train_${row}_${name}" "$w/$name/metrics.json" \
        "$PY" -m tf_divtrain.train --flagfile="flags/${row}_${cfg}.cfg" \
        --out_dir="$w/$name" $extra --progress=true $train_extra $TRAIN_FLAGS_ALL
      if [ "$DRY_RUN" = 0 ]; then
        mkdir -p "$RES/$row/train/$name"
        cp "$w/$name/metrics.json" "$w/$name/config.json" "$RES/$row/train/$name/"
        # The load average when the training finished (written only by a stage that trained here, so
        # a run copied into work/ or finished earlier is not stamped with today's load): was the
        # machine shared?
        if [ "$STAGE_RAN" = 1 ]; then
          cat /proc/loadavg > "$RES/$row/train/$name/loadavg.txt" 2>/dev/null || true
        fi
      fi
    done
  fi
  # The step cost of every method timed interleaved on the same batches (benchmarks/method_steps.py),
  # so the report compares methods at one load; the training runs' own s / step depend on the load
  # each run had (and on runs reused from other sessions).
  if want benchmark; then
    stage "benchmark_${row}_method_steps" "$RES/$row/method_steps.json" \
      "$PY" benchmarks/method_steps.py --precision="$PRECISION" \
      --out="$RES/$row/method_steps.json" --md="$RES/$row/METHOD_STEPS.md"
  fi
  evaluate_and_analyze "$row" "$surrogates" "$targets" "$eval_extra" "$analyze_extra"
  # The attacker's objective (README "Attack objective"): FGSM, R-FGSM, I-FGSM and MI-FGSM again from
  # S5 and S_div, maximising the CE of the ensemble's prediction instead of the paper's mean member
  # CE, then compared with the evaluation above cell by cell (McNemar on the same images).
  if want evaluate; then
    local adaptive="$RES/$row/adaptive_loss" done_pce="$RES/$row/adaptive_loss/results.json"
    local done_cmp="$RES/$row/adaptive_loss/comparison.md"
    # shellcheck disable=SC2046
    if [ -e "$done_pce" ] && stale "$done_pce" $(spec_part "$targets" 2) "$w/s5" "$w/sdiv"; then
      echo "== evaluate_${row}_prediction_ce: a model was retrained after $done_pce; re-running"
      done_pce=""
    fi
    if [ -e "$done_cmp" ] && { [ -z "$done_pce" ] || [ "$RES/$row/eval/results.json" -nt "$done_cmp" ]; }; then
      done_cmp=""  # an evaluation it compares is newer (or about to be): compare again
    fi
    stage "evaluate_${row}_prediction_ce" "$done_pce" \
      "$PY" -m tf_divtrain.evaluate --surrogate_dir="S5=$w/s5,S_div=$w/sdiv" --targets="$targets" \
      --out_dir="$adaptive" --cache_dir="$w/adv_cache" --attacks=fgsm,rfgsm,ifgsm,mifgsm \
      --attack_loss=prediction_ce $eval_extra
    stage "compare_${row}_prediction_ce" "$done_cmp" \
      "$PY" experiments/compare_evals.py --a="$adaptive/results.json" --b="$RES/$row/eval/results.json" \
      --label_a=prediction_ce --label_b=mean_member_ce --out="$adaptive/comparison"
  fi
}

echo "run_all.sh: preset=$PRESET results=$RES training precision=$PRECISION"
case "$PRESET" in
  paper)
    run_row mnist_conv3 "" "--dataset=mnist --num_examples=10000" \
      "--dataset=mnist --num_examples=1000"
    for row in cifar10_conv4 cifar10_resnet20 cifar10_mix; do
      run_row "$row" "" "--dataset=cifar10 --num_examples=1000" \
        "--dataset=cifar10 --num_examples=1000 --gaas_k=4,16,36,64 --gaas_eps=0.03,0.06,0.09"
    done
    ;;
  mnist-paper)
    run_row mnist_conv3 "--log_every=50" "--dataset=mnist --num_examples=10000" \
      "--dataset=mnist --num_examples=500 --gaas_num_examples=100 --transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"
    ;;
  cifar-paper)
    run_row cifar10_conv4 "--log_every=50" "--dataset=cifar10 --num_examples=1000" \
      "--dataset=cifar10 --num_examples=1000 --gaas_k=4,16,36,64 --gaas_eps=0.03,0.06,0.09 --gaas_num_examples=500 --transfer_num_examples=500"
    ;;
  cpu)
    STEPS="${CPU_STEPS:-500}"
    run_row mnist_conv3 "--max_steps=$STEPS --log_every=50" \
      "--dataset=mnist --num_examples=1000" \
      "--dataset=mnist --num_examples=500 --gaas_num_examples=100 --transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"
    ;;
  cpu-methods)
    STEPS="${CPU_STEPS:-500}"
    run_methods mnist_conv3 "--max_steps=$STEPS --log_every=50" \
      "--dataset=mnist --num_examples=1000" \
      "--dataset=mnist --num_examples=500 --analyses=coherence,transfer,whitebox --transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"
    ;;
  cpu-cifar)
    # Budget (float32; quiet 2-core Intel Xeon with AMX, TF 2.21, batch 128, 5 members unless stated).
    # Step times of the production Trainer: wall-clock on a quiet machine for Conv-4 baseline 1.44 s,
    # div 2.85 s, static (1 member) 0.30 s; the others were measured while other jobs loaded the
    # machine (load 4-10), as process CPU time converted with the Conv-4 ratio of quiet wall time to
    # CPU time (0.50 plain, 0.43 GAL): Conv-4 ens_adv ~1.4 s, ens_adv_div ~2.8 s; ResNet-20 baseline
    # ~1.5 s, div ~3.2 s; MIX baseline ~1.3 s, div ~2.6 s. Per step of a whole row: Conv-4 (six
    # models) ~10.3 s, ResNet-20 (S, T_Base, T_Div) ~6.2 s, MIX ~5.2 s.
    # Other stages (quiet-machine estimates): evaluate from FLOPs at the measured Conv-4 training
    # rate (230 GFLOP/s; an evaluate run on 250 images used 571 CPU s, i.e. ~4.5 min quiet, as the
    # FLOP model predicts) and ~100-145 GFLOP/s for ResNet-20/MIX: Conv-4 evaluate (1,000 images,
    # 4 targets) ~17 min, ResNet-20 / MIX evaluate (500 images, 2 targets) ~9 / ~7 min. Conv-4
    # analyze ~23 min: ~11 min of FLOPs (GAAS on the ~50% correctly classified of 100 images,
    # transfer and white-box PGD on 100) plus ~3 min per target of tracing and small-batch overhead
    # (a 2-target analyze run used 4x the CPU time its FLOPs need). Coherence-only analyze ~1 min
    # per ResNet/MIX row. Start-up, final metrics and export: ~0.5 min per Conv-4 training, ~1-1.5
    # min per ResNet/MIX training (~10 min in all).
    # Fixed part ~68 min; the default steps add ~52 min (Conv-4 160 x 10.3 s, ResNet-20 130 x 6.2 s,
    # MIX 130 x 5.2 s): ~2 hours in all, +-20 % (not timed end to end). PRESET_TRAIN_FLAGS (e.g. a
    # faster precision) changes the step times, not these defaults.
    C4_STEPS="${CIFAR_STEPS:-160}"
    RN_STEPS="${CIFAR_RESNET_STEPS:-130}"
    MX_STEPS="${CIFAR_MIX_STEPS:-$RN_STEPS}"
    ROW_EVAL_N="${CIFAR_ROW_EVAL_EXAMPLES:-500}"
    ROW_ROLES="surrogate base div"
    [ "${CIFAR_FULL_ROWS:-0}" = 1 ] && ROW_ROLES="$ALL_ROLES"
    run_row cifar10_conv4 "--max_steps=$C4_STEPS --log_every=50" \
      "--dataset=cifar10 --num_examples=1000" \
      "--dataset=cifar10 --num_examples=500 --gaas_k=4,16,36,64 --gaas_eps=0.03,0.06,0.09 --gaas_num_examples=100 --transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"
    run_row cifar10_resnet20 "--max_steps=$RN_STEPS --log_every=50" \
      "--dataset=cifar10 --num_examples=$ROW_EVAL_N" \
      "--dataset=cifar10 --num_examples=500 --analyses=coherence" "$ROW_ROLES"
    run_row cifar10_mix "--max_steps=$MX_STEPS --log_every=50" \
      "--dataset=cifar10 --num_examples=$ROW_EVAL_N" \
      "--dataset=cifar10 --num_examples=500 --analyses=coherence" "$ROW_ROLES"
    ;;
  smoke)
    MEMBERS_STAGE="${MEMBERS_STAGE:-0}"
    run_row mnist_conv3 "--max_steps=4 --batch_size=32 --ensemble_size=3 --train_examples=2000 --eval_examples=100 --log_every=2" \
      "--dataset=mnist --num_examples=100 --batch_size=50 --attacks=fgsm,rfgsm,ifgsm,mifgsm,pgd_cw" \
      "--dataset=mnist --num_examples=50 --gaas_k=4,16 --gaas_eps=0.3 --batch_size=50 --transfer_iters=3 --whitebox_iters=3"
    ;;
  smoke-cifar)
    MEMBERS_STAGE="${MEMBERS_STAGE:-0}"
    run_row cifar10_conv4 "--max_steps=2 --batch_size=16 --ensemble_size=3 --train_examples=256 --eval_examples=32 --log_every=2" \
      "--dataset=cifar10 --num_examples=32 --batch_size=32 --attacks=fgsm,pgd_cw" \
      "--dataset=cifar10 --num_examples=32 --analyses=coherence,gaas --gaas_k=4,16 --gaas_eps=0.03 --gaas_num_examples=16 --batch_size=32" \
      "surrogate base div"
    ;;
esac

if want report; then
  # The report is cheap and always rebuilt from whatever results exist.
  stage "report" "" "$PY" -m tf_divtrain.report --preset="$PRESET" --results_dir="$RES"
fi
if [ "$DRY_RUN" = 1 ]; then
  echo "run_all.sh: dry run of preset '$PRESET' (nothing was run)"
else
  echo "run_all.sh: all stages of preset '$PRESET' done; report: $RES/REPORT.md"
fi

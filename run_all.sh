#!/usr/bin/env bash
# One-script reproduction of Diversity Training (Kariyappa & Qureshi 2019): Table 2, Fig. 4, Fig. 5.
# Usage: bash run_all.sh [--only=train|evaluate|analyze|report] <preset>   (see --help)
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: bash run_all.sh [--only=STAGE] PRESET

Runs every stage of the reproduction with the package's own CLIs and the flagfiles in flags/:
  train (surrogate, static model, T_Base, T_Div, T_Ens, T_Ens+Div) -> evaluate (transfer attacks,
  Table 2) -> analyze (coherence histogram, GAAS, transferability, white-box) -> report
  (results/<preset>/REPORT.md). Each stage logs to results/<preset>/logs/<stage>.log and is skipped
  when its outputs exist, so re-running after an interruption continues where it stopped
  (interrupted training resumes from its last checkpoint).

Presets:
  paper      The paper's exact settings for every Table 2 row (MNIST Conv-3; CIFAR-10 Conv-4,
             ResNet-20, MIX), full test sets (CIFAR-10: the 1,000 test images available).
             Meant for a GPU machine: days of CPU time.
  cpu        The MNIST Conv-3 row with the paper's architecture, attacks, eps (0.1/0.3), lambda,
             noise and ensemble size, scaled to finish within ~90 minutes on a 2-core CPU:
             every model trains CPU_STEPS (default 500) steps of batch 128 instead of 10 epochs;
             transfer attacks use the first 1,000 test images; coherence 500, GAAS, member
             transferability and white-box PGD 100 (PGD with 10 / 20 iterations). The report
             lists every reduction.
  smoke      Every stage on tiny settings (3 members, a few steps, 100 test images): a few
             minutes; used by the test suite to prove the script works end to end.

Environment: TF_DIVTRAIN_DATA = folder with mnist.npz / cifar10.npz (default: the package's
lookup rules); PYTHON (default python); RESULTS_ROOT (default results); CPU_STEPS (cpu preset).
Weights, checkpoints and cached adversarial arrays go to results/<preset>/work/ (git-ignored).
TXT
}

ONLY=""
PRESET=""
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --only=*) ONLY="${arg#--only=}" ;;
    paper|cpu|smoke) PRESET="$arg" ;;
    *) echo "run_all.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$PRESET" ] || { usage >&2; exit 2; }
case "$ONLY" in ""|train|evaluate|analyze|report) ;; *) echo "run_all.sh: --only must be train, evaluate, analyze or report" >&2; exit 2 ;; esac

cd "$(dirname "$0")"
PY="${PYTHON:-python}"
RES="${RESULTS_ROOT:-results}/$PRESET"
WORK="$RES/work"
LOGS="$RES/logs"
mkdir -p "$WORK" "$LOGS"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
TIMINGS="$RES/stage_times.tsv"
[ -f "$TIMINGS" ] || printf 'stage\tseconds\tstatus\tcommand\n' > "$TIMINGS"

# stage NAME DONE_FILE CMD...: runs CMD unless DONE_FILE exists; logs and times it.
stage() {
  local name="$1" done_file="$2"; shift 2
  if [ -n "$done_file" ] && [ -e "$done_file" ]; then
    echo "== $name: done already ($done_file exists), skipped"
    return 0
  fi
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$LOGS/$name.log" 2>&1; then
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

# run_row ROW EXTRA_TRAIN_FLAGS EVAL_FLAGS ANALYZE_FLAGS
run_row() {
  local row="$1" train_extra="$2" eval_extra="$3" analyze_extra="$4"
  local w="$WORK/$row"
  if want train; then
    for role in surrogate static base div ens ensdiv; do
      local static_flag="" extra="$train_extra"
      case "$role" in ens|ensdiv) static_flag="--static_model=$w/static" ;; esac
      # The static model stays a single member whatever the preset does to ensemble sizes.
      [ "$role" = static ] && extra="$(echo "$train_extra" | sed -E 's/--ensemble_size=[0-9]+//')"
      # shellcheck disable=SC2086
      stage "train_${row}_${role}" "$w/$role/metrics.json" \
        "$PY" -m tf_divtrain.train --flagfile="flags/${row}_${role}.cfg" \
        --out_dir="$w/$role" $static_flag --progress=true $extra
      # Keep the small per-run JSON with the results (work/ holds weights and is git-ignored).
      mkdir -p "$RES/$row/train/$role"
      cp "$w/$role/metrics.json" "$w/$role/config.json" "$RES/$row/train/$role/"
    done
  fi
  if want evaluate; then
    # shellcheck disable=SC2086
    stage "evaluate_${row}" "$RES/$row/eval/results.json" \
      "$PY" -m tf_divtrain.evaluate --surrogate_dir="$w/surrogate" \
      --targets="T_Base=$w/base,T_Div=$w/div,T_Ens=$w/ens,T_Ens+Div=$w/ensdiv" \
      --out_dir="$RES/$row/eval" --cache_dir="$w/adv_cache" $eval_extra
  fi
  if want analyze; then
    # shellcheck disable=SC2086
    stage "analyze_${row}" "$RES/$row/analysis/analysis.json" \
      "$PY" -m tf_divtrain.analyze \
      --ensembles="T_Base=$w/base,T_Div=$w/div,T_Ens=$w/ens,T_Ens+Div=$w/ensdiv" \
      --out_dir="$RES/$row/analysis" $analyze_extra
  fi
}

echo "run_all.sh: preset=$PRESET results=$RES"
case "$PRESET" in
  paper)
    run_row mnist_conv3 "" "--dataset=mnist --num_examples=10000" \
      "--dataset=mnist --num_examples=1000"
    for row in cifar10_conv4 cifar10_resnet20 cifar10_mix; do
      run_row "$row" "" "--dataset=cifar10 --num_examples=1000" \
        "--dataset=cifar10 --num_examples=1000 --gaas_eps=0.03,0.06,0.09"
    done
    ;;
  cpu)
    STEPS="${CPU_STEPS:-500}"
    run_row mnist_conv3 "--max_steps=$STEPS --log_every=50" \
      "--dataset=mnist --num_examples=1000" \
      "--dataset=mnist --num_examples=500 --gaas_num_examples=100 --transfer_num_examples=100 --transfer_iters=10 --whitebox_iters=20"
    ;;
  smoke)
    run_row mnist_conv3 "--max_steps=4 --batch_size=32 --ensemble_size=3 --train_examples=2000 --eval_examples=100 --log_every=2" \
      "--dataset=mnist --num_examples=100 --batch_size=50 --attacks=fgsm,rfgsm,ifgsm,mifgsm,pgd_cw" \
      "--dataset=mnist --num_examples=50 --gaas_k=4,16 --gaas_eps=0.3 --batch_size=50 --transfer_iters=3 --whitebox_iters=3"
    ;;
esac

if want report; then
  # The report is cheap and always rebuilt from whatever results exist.
  stage "report" "" "$PY" -m tf_divtrain.report --preset="$PRESET" --results_dir="$RES"
fi
echo "run_all.sh: all stages of preset '$PRESET' done; report: $RES/REPORT.md"

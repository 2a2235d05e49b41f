#!/usr/bin/env bash
# Equivalence study of issue 10: float32 vs mixed_bfloat16 on the `cpu` preset's MNIST Conv-3 setup
# (500 steps of batch 128 per model, flags/mnist_conv3_*.cfg), plus a second seed of the targets in
# mixed_bfloat16 to measure run-to-run noise. Resumable: finished runs are skipped, interrupted
# ones resume from their checkpoints. Weights go to $WORK (git-ignored); the committed results are
# results/precision_study/ (per-run metrics, evaluation tables, REPORT.md).
#   bash benchmarks/precision_study.sh            (TF_DIVTRAIN_DATA must point at mnist.npz)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
STEPS="${STUDY_STEPS:-500}"
RES="${RESULTS_ROOT:-results}/precision_study"
WORK="$RES/work"
mkdir -p "$WORK" "$RES/logs" "$RES/train"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

train() {  # train NAME ROLE PRECISION [extra flags]
  local name="$1" role="$2" prec="$3"; shift 3
  if [ -f "$WORK/$name/metrics.json" ]; then echo "== $name: done already"; else
    echo "== $name ($role, $prec) ..."
    local t0=$SECONDS
    "$PY" -m tf_divtrain.train --flagfile="flags/mnist_conv3_${role}.cfg" --out_dir="$WORK/$name" \
      --max_steps="$STEPS" --log_every=50 --precision="$prec" --progress=false "$@" \
      > "$RES/logs/train_$name.log" 2>&1
    echo "   $((SECONDS - t0)) s"
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$RES/train_seconds.tsv"
  fi
  mkdir -p "$RES/train/$name"
  cp "$WORK/$name/metrics.json" "$WORK/$name/config.json" "$RES/train/$name/"
}

for prec in mixed_bfloat16 float32; do
  train "surrogate_$prec" surrogate "$prec"
  train "base_$prec" base "$prec"
  train "div_$prec" div "$prec"
done
train "base_mixed_bfloat16_seed1" base mixed_bfloat16 --seed=1
train "div_mixed_bfloat16_seed1" div mixed_bfloat16 --seed=1

TARGETS=""
for t in base_float32 div_float32 base_mixed_bfloat16 div_mixed_bfloat16 base_mixed_bfloat16_seed1 div_mixed_bfloat16_seed1; do
  TARGETS="$TARGETS${TARGETS:+,}$t=$WORK/$t"
done
for s in float32 mixed_bfloat16; do
  if [ -f "$RES/eval_surrogate_$s/results.json" ]; then echo "== eval vs surrogate_$s: done already"; else
    echo "== eval vs surrogate_$s ..."
    "$PY" -m tf_divtrain.evaluate --surrogate_dir="$WORK/surrogate_$s" --targets="$TARGETS" \
      --out_dir="$RES/eval_surrogate_$s" --cache_dir="$WORK/adv_cache" --dataset=mnist \
      --num_examples=1000 > "$RES/logs/eval_surrogate_$s.log" 2>&1
  fi
done
echo "precision study: all runs done; report: $PY benchmarks/precision_report.py"

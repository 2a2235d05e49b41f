#!/usr/bin/env bash
# Issue 12 ablation: how D_adv is built for T_Ens / T_Ens+Div (label source x batch composition),
# on the `cpu` preset's surrogate, static model and cached attacks (run `bash run_all.sh cpu` first;
# this script reuses results/cpu/work/mnist_conv3/{surrogate,static} and its adv_cache).
#
#   variant            mode         --adv_labels  --adv_share   D_adv / clean / noise per batch of 128
#   ens_pred_half      ens_adv      predicted     0.5           64 / 64 / -     (= the cpu preset's T_Ens)
#   ens_true_half      ens_adv      true          0.5           64 / 64 / -     (the old default)
#   ensdiv_pred_half   ens_adv_div  predicted     0.5           64 / 32 / 32    (= the cpu preset's T_Ens+Div)
#   ensdiv_true_half   ens_adv_div  true          0.5           64 / 32 / 32
#   ensdiv_pred_third  ens_adv_div  predicted     0.333         43 / 43 / 42
#   ensdiv_true_third  ens_adv_div  true          0.333         43 / 43 / 42    (the old default)
#
# Every variant trains CPU_STEPS (500) steps from seed 0 with the preset's precision, then all are
# evaluated against the same surrogate with the preset's cached adversarial examples. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
STEPS="${CPU_STEPS:-500}"
PRECISION="${PRECISION:-auto}"
CPU="${RESULTS_ROOT:-results}/cpu"
W="$CPU/work/mnist_conv3"
RES="${RESULTS_ROOT:-results}/cpu/ens_ablation"
mkdir -p "$RES/logs" "$W/ablation"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
for need in "$W/surrogate/metrics.json" "$W/static/metrics.json" "$W/ens/metrics.json" "$W/ensdiv/metrics.json"; do
  [ -f "$need" ] || { echo "ens_adv_ablation.sh: $need is missing: run 'bash run_all.sh cpu' first." >&2; exit 2; }
done

train() {  # train VARIANT ROLE LABELS SHARE
  local v="$1" role="$2" labels="$3" share="$4" out="$W/ablation/$1"
  if [ ! -f "$out/metrics.json" ]; then
    echo "== $v ..."
    "$PY" -m tf_divtrain.train --flagfile="flags/mnist_conv3_${role}.cfg" --out_dir="$out" \
      --static_model="$W/static" --max_steps="$STEPS" --log_every=50 --precision="$PRECISION" \
      --adv_labels="$labels" --adv_share="$share" --progress=false > "$RES/logs/train_$v.log" 2>&1
  fi
  mkdir -p "$RES/train/$v"
  cp "$out/metrics.json" "$out/config.json" "$RES/train/$v/"
}
# The new-default variants are the cpu preset's own T_Ens / T_Ens+Div: keep their run records too.
for pair in "ens_pred_half:ens" "ensdiv_pred_half:ensdiv"; do
  mkdir -p "$RES/train/${pair%%:*}"
  cp "$W/${pair#*:}/metrics.json" "$W/${pair#*:}/config.json" "$RES/train/${pair%%:*}/"
done
train ens_true_half ens true 0.5
train ensdiv_true_half ensdiv true 0.5
train ensdiv_pred_third ensdiv predicted 0.333
train ensdiv_true_third ensdiv true 0.333

T="ens_pred_half=$W/ens,ens_true_half=$W/ablation/ens_true_half,ensdiv_pred_half=$W/ensdiv"
T="$T,ensdiv_true_half=$W/ablation/ensdiv_true_half,ensdiv_pred_third=$W/ablation/ensdiv_pred_third"
T="$T,ensdiv_true_third=$W/ablation/ensdiv_true_third"
if [ ! -f "$RES/eval/results.json" ]; then
  "$PY" -m tf_divtrain.evaluate --surrogate_dir="$W/surrogate" --targets="$T" --out_dir="$RES/eval" \
    --cache_dir="$W/adv_cache" --dataset=mnist --num_examples=1000 > "$RES/logs/evaluate.log" 2>&1
fi
"$PY" experiments/ablation_report.py --results="$RES"

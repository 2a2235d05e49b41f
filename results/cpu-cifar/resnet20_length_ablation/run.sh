#!/bin/bash
# Issue 11 ablation: does ResNet-20 T_Base's member alignment grow with training length?
cd /work/runclone
. /work/main/.venv/bin/activate
export TF_DIVTRAIN_DATA=/work/shared/data TF_CPP_MIN_LOG_LEVEL=2
for s in 260 390; do
  python -m tf_divtrain.train --flagfile=flags/cifar10_resnet20_base.cfg --out_dir=/work/rn_long/base --max_steps=$s --log_every=50 --precision=auto --progress=false > /work/rn_long/base_$s.log 2>&1
  cp /work/rn_long/base/metrics.json /work/rn_long/base_metrics_$s.json
done
python -m tf_divtrain.train --flagfile=flags/cifar10_resnet20_div.cfg --out_dir=/work/rn_long/div --max_steps=390 --log_every=50 --precision=auto --progress=false > /work/rn_long/div_390.log 2>&1
cp /work/rn_long/div/metrics.json /work/rn_long/div_metrics_390.json
echo done > /work/rn_long/DONE

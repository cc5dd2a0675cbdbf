#!/usr/bin/env bash
# The GPU checks of issue 7, as one command for a lent GPU machine (see README, Performance):
#   bash benchmarks/device_check.sh DATA OUT
# DATA: a copy of chest_xray/{train,test}; OUT: where the logs and the GPU-trained default model go.
# Each step runs even if an earlier one failed; a failed step prints FAILED and its log's tail.
set -u
DATA=${1:?data folder}; OUT=${2:?output folder}
export PYTHONUNBUFFERED=1 PNEUMOLENS_CACHE_DIR=/tmp/pneumolens-cache
mkdir -p "$OUT"
step() {  # step NAME COMMAND...: runs it, log in $OUT/NAME.log
  local name=$1; shift
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then echo "== $name: ok ($((SECONDS - t0)) s)"
  else echo "== $name: FAILED ($((SECONDS - t0)) s)"; tail -n 25 "$OUT/$name.log"; return 1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
train=(python3 -m pneumolens train --data "$DATA" --preset default --limit 256 --epochs 1)
step smoke_gpu_bf16 "${train[@]}" --accelerator gpu --out /tmp/smoke1 && smoke=1 || smoke=0
step smoke_ddp_nccl_fp16 "${train[@]}" --accelerator gpu --devices 1 --strategy ddp --precision 16-mixed --out /tmp/smoke2
step gpu_check python3 benchmarks/gpu_check.py --data "$DATA"
tail -n 12 "$OUT/gpu_check.log"
if [ "$smoke" = 1 ]; then
  step bench python3 benchmarks/run.py --data "$DATA" --presets seed default --out /tmp/bench --explain 3 --single 50
  tail -n 24 "$OUT/bench.log"
  cp /tmp/bench/bench.json /tmp/bench/default/model.safetensors "$OUT"/ 2>/dev/null
fi

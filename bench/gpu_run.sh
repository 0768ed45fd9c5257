#!/usr/bin/env bash
# The GPU figures of issues 11 and 9, as one script for a lent GPU box (no network, no Java,
# no Spark), one call each: `bash bench/gpu_run.sh throughput` (~6 min), `compiled` (~7 min: the
# compiled training step), `learning` (~6 min), `learning3` (~9.5 min: three reports side by side), `profile` (~2 min: where base inference spends its time).
# Results go to $OUT (or bench/results/gpu).  Carry the transformers wheel the lock pins in .whl/
# where the box's own transformers differs (see the closing note of issue 11).
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
case "${1:-throughput}" in
throughput)
  timeout 150 python3 bench/predictor_throughput.py --device cuda --sizes base --images 256 --batch-size 128 \
    --old-images 64 --old-batch-size 32 --loop-images 24 --out "$OUT/predictor_cuda_base_bf16.json" \
    --profile "$OUT/profile_predictor_base_bf16.txt" 2>&1 | tail -4
  timeout 70 python3 bench/predictor_throughput.py --device cuda --sizes base --dtype fp32 --images 16 --batch-size 16 \
    --loop-images 16 --out "$OUT/predictor_cuda_base_fp32.json" 2>&1 | tail -4
  timeout 150 python3 bench/train_throughput.py --size base --batch 32 --warmup 4 --steps 8 --variants 0,1,2 \
    --out "$OUT/train_throughput_base_cuda.json" 2>&1 | grep -v Warning | tail -8
  ;;
compiled)
  # its own call: compiling base took over 3 min on the H100 (2026-11-27)
  timeout 420 python3 bench/train_throughput.py --size base --batch 32 --warmup 3 --steps 8 --variants 4 \
    --out "$OUT/train_throughput_base_cuda_compiled.json" 2>&1 | grep -v Warning | tail -6
  ;;
profile)
  timeout 200 python3 bench/predictor_throughput.py --device cuda --sizes base --images 128 --batch-size 128 \
    --old-images 32 --old-batch-size 32 --loop-images 4 --out "$OUT/predictor_cuda_base_bf16.json" \
    --profile "$OUT/profile_predictor_base_bf16.txt" 2>&1 | tail -4
  ;;
learning)
  timeout 420 python3 bench/learning_report.py --direct --size small --images 4000 --minutes 4.5 --batch 64 \
    --out "$OUT/learning_report_direct_small_cuda" 2>&1 | grep -v -i "warn\|shards\|Loading weights" | tail -30
  ;;
learning3)
  # three learning reports side by side on the one GPU (each process is launch-bound: the GPU has room), then the
  # shared-image relabelling bench and base <OD> throughput if time is left; ~9.5 min in all
  export OMP_NUM_THREADS=4
  t0=$(date +%s)
  lr() {  # name, then learning_report arguments
    local name=$1; shift
    timeout 500 python3 bench/learning_report.py --direct --images ${LR_IMAGES:-8000} --minutes ${LR_MINUTES:-5.5} --batch 64 --lr 0.002 "$@" \
      --out "$OUT/$name" 2>&1 | grep -v -i "warn\|shards\|Loading weights" | sed "s/^/[$name] /" >> "$OUT/run.log"
  }
  lr learning_small_mix --size small --set warmup_steps=150 &
  # the CPU report's best recipe (README, 2026-12-07): OVD examples for REC, pointers for copying the prompt,
  # the region terms on the words' quads (on 2 CPU cores reading starts after ~16 min of this recipe)
  best=(--set warmup_steps=150 augment=dihedral copy_attention=1.0 region_quads=true --first '<OD>=3' --one-schedule
        --weight '<OPEN_VOCABULARY_DETECTION>=0.6')
  lr learning_small_od_first --size small "${best[@]}" &
  lr learning_tiny_od_first --size tiny "${best[@]}" &
  wait
  grep "done:\|cannot score\|Error\|error" "$OUT/run.log" | tail -20
  left=$(( 575 - ($(date +%s) - t0) ))
  if [ $left -gt 40 ]; then
    timeout $(( left > 100 ? 100 : left - 5 )) python3 bench/predictor_throughput.py --device cuda --sizes base \
      --regions 5 --images 64 --batch-size 32 --new-tokens 4 --out "$OUT/predictor_cuda_base_regions.json" 2>&1 \
      | grep -v -i warn | tail -4 | tee -a "$OUT/predict.log"
  fi
  left=$(( 575 - ($(date +%s) - t0) ))
  if [ $left -gt 70 ]; then
    timeout $(( left - 5 )) python3 bench/predictor_throughput.py --device cuda --sizes base --images 256 --batch-size 128 \
      --old-images 32 --old-batch-size 32 --loop-images 8 --out "$OUT/predictor_cuda_base_bf16.json" 2>&1 \
      | grep -v -i warn | tail -4 | tee -a "$OUT/predict.log"
  fi
  ;;
esac
ls -la "$OUT"

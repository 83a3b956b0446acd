#!/bin/bash
# The consumer-GPU benchmark on a GPU machine without network, in a fixed time budget, from
# the bundle benchmarks/offline_gpu_bundle.sh made. Run it from the repository root:
#
#   benchmarks/offline_gpu_run.sh [BUNDLE_DIR] [OUT_DIR] [BUDGET_S]   # default: .whl gpu_out 570
#
# 1. installs the bundle's wheels (into /tmp, with PYTHONPATH: the machine's torch stays);
# 2. builds llama-cpp-python with CUDA in the background (sm_90 by default: CUDA_ARCH=...);
# 3. meanwhile: gpu_runtimes.py --formats onnx (trains the model on the GPU; torch-cuda in
#    three modes, the ONNX files on the CPU), its rows marked as measured during the build;
# 4. once built: --formats gguf --runtimes llama.cpp-cuda(,torch-cuda) --merge, then
#    llama_cuda_probe.py on the F16 GGUF, then the real-GPU tests, each only if time is left.
# OUT_DIR gets gpu_runtimes.json, llama_cuda_probe.json and the logs. Measured on an H200:
# the build took 257 s alone on 16 cores, 350 s beside step 3.
set -u -o pipefail
B=${1:-.whl}; OUT=${2:-gpu_out}; BUDGET=${3:-570}; ARCH=${CUDA_ARCH:-90-real}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); rm -f /tmp/edgedistill-llama-build.rc
T0=$(date +%s); left() { echo $(( T0 + $1 - $(date +%s) )); }
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  lscpu | grep -iE "model name|flags"
  python3 -c "import torch, sys; print(sys.version, torch.__version__, torch.version.cuda)"
  command -v nvcc gcc cmake ninja; } > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/edgedistill-site "$B"/*.whl >> "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 3; }
export PYTHONPATH=/tmp/edgedistill-site:$PWD
python3 -c "import optimum.exporters.onnx, gguf, edgedistill.export
from edgedistill.bench.cuda import runtime_status; print(runtime_status())" \
  2>&1 | tee -a "$OUT/env.txt" || exit 4
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
( export PATH=$(dirname "$NVCC"):$PATH CUDACXX="$NVCC" CMAKE_BUILD_PARALLEL_LEVEL=$(( $(nproc) * 3 / 4 ))
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  python3 -m pip install -v --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target /tmp/edgedistill-llama "$B"/llama_cpp_python-*.tar.gz > /tmp/edgedistill-llama-build.log 2>&1
  echo $? > /tmp/edgedistill-llama-build.rc ) &
G="python3 benchmarks/gpu_runtimes.py --no-encoder --steps 400 --out $OUT/gpu_runtimes.json"
timeout "$(left $(( BUDGET * 58 / 100 )))" $G --formats onnx \
  --conditions "llama-cpp-python was compiling in the background" 2>&1 | tee "$OUT/phase1.log"
echo "phase 1 rc=$? at $(( $(date +%s) - T0 )) s"
while [ ! -f /tmp/edgedistill-llama-build.rc ] && [ "$(left $(( BUDGET * 75 / 100 )))" -gt 0 ]; do sleep 5; done
echo "llama-cpp-python build: rc=$(cat /tmp/edgedistill-llama-build.rc 2>/dev/null || echo unfinished) at $(( $(date +%s) - T0 )) s"
grep -v "^WARNING: Location" /tmp/edgedistill-llama-build.log | tail -c 12000 > "$OUT/llama_build_tail.log"
if [ "$(cat /tmp/edgedistill-llama-build.rc 2>/dev/null)" = 0 ]; then
  export PYTHONPATH=/tmp/edgedistill-llama:$PYTHONPATH
  RT=llama.cpp-cuda; [ "$(left "$BUDGET")" -gt 250 ] && RT=llama.cpp-cuda,torch-cuda
  timeout "$(left $(( BUDGET - 60 )))" $G --formats gguf --runtimes $RT --merge 2>&1 | tee "$OUT/phase2.log"
  echo "phase 2 ($RT) rc=$? at $(( $(date +%s) - T0 )) s"
  F16=$(ls /tmp/edgedistill-bench/gpu_runtimes/export-gguf/gguf/*.f16.gguf 2>/dev/null | head -1)
  [ -n "$F16" ] && [ "$(left "$BUDGET")" -gt 30 ] && timeout "$(left "$BUDGET")" \
    python3 benchmarks/llama_cuda_probe.py "$F16" --lengths 8,128 --timeout 20 \
      --out "$OUT/llama_cuda_probe.json" 2>&1 | tee "$OUT/probe.log"
fi
R=$(left "$BUDGET"); if [ "$R" -gt 100 ]; then
  timeout $(( R - 10 )) python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k real_gpu 2>&1 | tee "$OUT/pytest_gpu.log"
fi
echo "done at $(( $(date +%s) - T0 )) s; results in $OUT"

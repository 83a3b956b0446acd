#!/bin/bash
# Prepare what benchmarks/offline_gpu_run.sh needs on a GPU machine that has Python, a CUDA
# build of torch, onnx, onnxruntime, scikit-build-core, cmake, ninja and nvcc, but no network:
# wheels of the rest of our stack (18 MB, TRL and datasets included for the comparison in
# benchmarks/offline_gpu_train.sh) and llama-cpp-python's source with everything a CUDA build
# does not use removed (3.6 MB instead of 77 MB).
#
#   benchmarks/offline_gpu_bundle.sh [DIR] [PYTHON_VERSION]     # default: .whl 3.12
#
# Then copy DIR and this repository to the machine and run benchmarks/offline_gpu_run.sh DIR
# there (offline_gpu_train.sh DIR GGUF for the distillation benchmarks). Versions are those
# this checkout's pyproject.toml pins or was tested with.
set -euo pipefail
DIR=${1:-.whl}; PYV=${2:-3.12}
mkdir -p "$DIR"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for p in transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.0 optimum==2.1.0 \
         optimum-onnx==0.1.0 gguf==0.19.0 diskcache==5.6.3 \
         trl==1.16.0 datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp "${PLAT[@]}" -d "$DIR" "$p"
done
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: -d "$TMP" llama-cpp-python==0.3.36
tar xzf "$TMP"/llama_cpp_python-0.3.36.tar.gz -C "$TMP"
SRC="$TMP/llama_cpp_python-0.3.36"
( cd "$SRC/vendor/llama.cpp" && rm -rf models docs benches tests tools examples pocs app \
    scripts conversion media gguf-py .github .devops
  cd ggml/src && for b in ggml-*/; do
    case "$b" in ggml-cpu/|ggml-cuda/) ;; *) rm -rf "$b" ;; esac; done )
rm -rf "$SRC/.git" "$SRC/examples" "$SRC/.github" "$SRC/docker"
tar czf "$DIR/llama_cpp_python-0.3.36.tar.gz" -C "$TMP" llama_cpp_python-0.3.36
du -sh "$DIR"; ls "$DIR"

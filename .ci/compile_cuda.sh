#!/usr/bin/env bash
# Compiles every CUDA source for sm_90a with nvcc against the installed torch's headers (no GPU needed, and a
# CPU build of torch is enough: it ships the ATen/c10 CUDA headers), and the stand-alone kernel harnesses of
# benchmarks/micro (torch-free). Catches compile errors in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
TORCH_DIR=$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
PY_INC=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# A CPU build of torch lacks the one header that torch's CUDA build generates at configure time; provide it.
SHIM=()
if [ ! -f "$TORCH_DIR/include/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$OUT/shim/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$OUT/shim/c10/cuda/impl/cuda_cmake_macros.h"
  SHIM=(-isystem "$OUT/shim")
fi
# One nvcc per source, as many at a time as there are cores (the kernel instantiation units dominate).
compile_one() {
  local src=$1; shift
  if "$NVCC" -c "$src" -o "$OUT/$(basename "$src").o" -std=c++20 -O3 --expt-relaxed-constexpr \
      -gencode=arch=compute_90a,code=sm_90a -Xptxas=-warn-spills \
      -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" -isystem "$PY_INC" "${SHIM[@]}" \
      -I csrc/kernels \
      -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 -DFLASHINFER_WITH_CUDA \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ "$@" > "$OUT/$(basename "$src").log" 2>&1; then
    echo "compiled $src for sm_90a"
    grep -i "spill" "$OUT/$(basename "$src").log" | grep -v " 0 bytes spill" || true
  else
    echo "FAILED: $src"
    cat "$OUT/$(basename "$src").log"
    return 1
  fi
}
status=0
pids=()
jobs_max=$(nproc 2>/dev/null || echo 2)
for src in csrc/cuda/*.cu benchmarks/micro/*.cu; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 1; done
  compile_one "$src" "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status

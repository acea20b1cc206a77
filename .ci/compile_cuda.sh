#!/usr/bin/env bash
# Compiles every CUDA source for sm_90a with nvcc against the installed torch's headers (no GPU needed, and a
# CPU build of torch is enough: it ships the ATen/c10 CUDA headers), and the stand-alone kernel harnesses of
# benchmarks/micro (torch-free). The prefill harness is also built for sm_80: an sm_90a build runs prefill on its
# wgmma mainloop, so only another target compiles the mma.sync one (what sm_80 / sm_89 builds run). Catches compile
# errors in CI.
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
  local arch=$1 src=$2; shift 2
  local obj="$OUT/$(basename "$src").$arch"
  if "$NVCC" -c "$src" -o "$obj.o" -std=c++20 -O3 --expt-relaxed-constexpr \
      -gencode=arch=compute_${arch},code=sm_${arch} -Xptxas=-warn-spills \
      -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include" -isystem "$PY_INC" "${SHIM[@]}" \
      -I csrc/kernels \
      -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 -DFLASHINFER_WITH_CUDA \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ "$@" > "$obj.log" 2>&1; then
    echo "compiled $src for sm_$arch"
    grep -i "spill" "$obj.log" | grep -v " 0 bytes spill" || true
  else
    echo "FAILED: $src for sm_$arch"
    cat "$obj.log"
    return 1
  fi
}
status=0
pids=()
jobs_max=$(nproc 2>/dev/null || echo 2)
for unit in $(printf '90a:%s\n' csrc/cuda/*.cu benchmarks/micro/*.cu) 80:benchmarks/micro/prefill_micro.cu; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do sleep 1; done
  compile_one "${unit%%:*}" "${unit#*:}" "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status

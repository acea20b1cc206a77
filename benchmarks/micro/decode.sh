#!/usr/bin/env bash
# Builds benchmarks/micro/decode_micro.cu once per variant of the tensor-core decode kernel (in parallel), then runs
# every binary over every shape: a kernel change checked and timed in one GPU call, without an extension rebuild.
#   VARIANTS="csrc/kernels/decode_tc.cuh scratch/decode_tc_try.cuh" \
#   SHAPES="1 8192;64 4096;64 4096 32 8 128 16 e4m3" bash benchmarks/micro/decode.sh
# A variant is a copy of csrc/kernels/decode_tc.cuh (its own includes resolve against csrc/kernels). A shape is
# decode_micro's arguments: BATCH KV_LEN [HQ HKV HEAD_DIM PAGE bf16|e4m3]. Exits non-zero if a variant is wrong.
set -euo pipefail
cd "$(dirname "$0")/../.."
variants=${VARIANTS:-csrc/kernels/decode_tc.cuh}
IFS=';' read -r -a shapes <<< "${SHAPES:-1 8192;16 4096;64 4096;1 8192 32 8 128 16 e4m3;64 4096 32 8 128 16 e4m3}"
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
i=0
for v in $variants; do
  nvcc -O3 -std=c++20 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -I csrc/kernels \
    -DDECODE_TC_HEADER="\"$(realpath "$v")\"" benchmarks/micro/decode_micro.cu -o "$bin/v$i" &
  i=$((i + 1))
done
wait
status=0
for shape in "${shapes[@]}"; do
  i=0
  for v in $variants; do
    # shellcheck disable=SC2086
    "$bin/v$i" $shape || status=1
    i=$((i + 1))
  done
done
exit $status

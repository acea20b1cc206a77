#!/usr/bin/env bash
# Runs every benchmark on the GPU machine, ours and the peers in one invocation each, and prints the tables; the
# JSON rows and logs go to ${OUT:-benchmarks/out}. The steps are benchmarks/gpu_check.sh's bench steps (the upstream
# wheels from .whl/, their JIT modules built first, many at once, into FLASHINFER_WORKSPACE_BASE). The extension is
# expected to be built; `bash benchmarks/gpu_check.sh` builds, tests and benchmarks in one go.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
benches=${BENCHES:-norm activation rope cascade sampling decode decode_variants prefill model}
STEPS="$(printf "bench:%s " $benches)" bash benchmarks/gpu_check.sh "$out"
for b in $benches; do
  echo "== bench_$b"
  grep '^|' "$out/bench_$b.log"
done

#!/usr/bin/env bash
# Runs every benchmark on the GPU machine, ours and the peers in one invocation each, and writes the tables and
# JSON rows to ${OUT:-benchmarks/out}. The upstream FlashInfer wheels (../shared/tools/peer-wheels) are
# expected in .whl/ and are installed outside the import path, into /tmp/peer; their JIT modules are built first, many
# at once (benchmarks/peer_warm.py), into FLASHINFER_WORKSPACE_BASE (default /tmp/peer_jit).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
if ls .whl/flashinfer_python-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/peer .whl/flashinfer_python-*.whl .whl/apache_tvm_ffi-*.whl
fi
benches=${BENCHES:-norm activation rope cascade sampling decode decode_variants prefill}
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/peer_jit}
if [ -d /tmp/peer ]; then
  python3 benchmarks/peer_warm.py $(printf "bench_%s " $benches) > "$out/peer_warm.log" 2>&1
  tail -1 "$out/peer_warm.log"
fi
for b in $benches; do
  echo "== bench_$b"
  python3 benchmarks/bench_$b.py --json "$out/bench_$b.json" 2> "$out/bench_$b.log"
  grep '^|' "$out/bench_$b.log"
done

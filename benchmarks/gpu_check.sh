#!/usr/bin/env bash
# The whole GPU check in one run, for a fresh GPU machine: the sm_90a build, the CUDA tests and the benchmarks (ours
# and the peers in one invocation each), every step logged to OUTDIR with its start and end in OUTDIR/stages.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]                 (default /tmp/gpu_check)
#   STEPS="build bench:decode tests:attention" bash benchmarks/gpu_check.sh
#
# Steps run in the order given: build; bench:NAME (benchmarks/bench_NAME.py); tests:attention, tests:model,
# tests:families (the CUDA tests in three groups, `-k "not cpu"`), tests:prefill (test_prefill.py alone).
# build:ARCH rebuilds in place for TORCH_CUDA_ARCH_LIST=ARCH, and the steps after it write their logs and JSON with
# _ARCH in the name: build:9.0 is the plain sm_90 build, which runs prefill on the mma.sync mainloop (sm_80's
# instruction set) instead of wgmma, so one run measures both:
#   STEPS="build tests:model bench:prefill build:9.0 tests:prefill bench:prefill" bash benchmarks/gpu_check.sh
# Upstream FlashInfer's JIT modules for the benches in STEPS are built in the background from the start
# (benchmarks/peer_warm.py), while ours compiles and the tests run; the first bench waits until they are all built,
# so no compile or peer kernel runs beside a measurement.
# Test requirements and the peer wheels are installed from .whl/ when present (../shared/tools/peer-wheels, plus
# pytest, pytest-xdist and expecttest for the machine's Python).
#
# A command that must return before the run ends can start it in a session of its own and poll OUTDIR/stages:
#   setsid nohup bash benchmarks/gpu_check.sh /tmp/gpu_check > /dev/null 2>&1 < /dev/null &
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
default="build tests:attention tests:model bench:decode bench:decode_variants bench:model bench:prefill tests:families"
steps=${STEPS:-$default}
jobs=${JOBS:-14}
stage() { echo "$(date +%s) $(date +%T) $*" >> "$out/stages"; }

stage start
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -c "import pytest, xdist, expecttest" 2> /dev/null ||
    python3 -m pip install -q --no-index --no-deps $(ls .whl/*.whl | grep -v -e flashinfer_python -e apache_tvm) \
      > "$out/pip.log" 2>&1
  ls .whl/flashinfer_python-*.whl > /dev/null 2>&1 &&
    python3 -m pip install -q --no-index --no-deps --target /tmp/peer .whl/flashinfer_python-*.whl \
      .whl/apache_tvm_ffi-*.whl >> "$out/pip.log" 2>&1
fi
nvidia-smi > "$out/device.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$out/device.txt" 2>&1

export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/peer_jit}
benches=$(for s in $steps; do [ "${s%%:*}" = bench ] && printf "bench_%s " "${s#bench:}"; done)
if [ -d /tmp/peer ] && [ -n "$benches" ]; then
  (nice -n 5 python3 benchmarks/peer_warm.py $benches > "$out/peer_warm.log" 2>&1; stage "peer modules built") &
  warm=$!
fi

tests_of() {
  case $1 in
    attention) echo tests/test_decode.py tests/test_decode_graph.py tests/test_page.py tests/test_memory_safety.py \
                    tests/test_errors.py tests/test_opcheck.py tests/test_registry.py tests/test_core.py ;;
    model) echo tests/test_prefill.py tests/test_llama.py tests/test_compose.py ;;
    families) echo tests/test_norm.py tests/test_rope.py tests/test_activation.py tests/test_cascade.py \
                   tests/test_sampling.py ;;
    prefill) echo tests/test_prefill.py ;;
  esac
}

tag=""  # _ARCH after a build:ARCH step

for s in $steps; do
  case $s in
    build | build:*)
      arch=${TORCH_CUDA_ARCH_LIST:-9.0a} tag=""
      [ "$s" = build ] || arch=${s#build:} tag=_${s#build:}
      TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16} \
        python3 -m pip install --no-build-isolation --no-deps -e . > "$out/build$tag.log" 2>&1
      stage "$s rc $?" ;;
    bench:*)
      b=${s#bench:}
      [ -n "${warm:-}" ] && wait "$warm" 2> /dev/null
      extra=()
      [ "$b" = model ] && extra=(--peer-jit-cache "$FLASHINFER_WORKSPACE_BASE")
      python3 "benchmarks/bench_$b.py" --json "$out/bench_$b$tag.json" "${extra[@]}" 2> "$out/bench_$b$tag.log"
      stage "$s$tag rc $?" ;;
    tests:*)
      g=${s#tests:}
      python3 -m pytest $(tests_of "$g") -q -p no:cacheprovider -rs -k "not cpu" -n "$jobs" --dist loadfile \
        > "$out/tests_$g$tag.log" 2>&1
      stage "$s$tag rc $? $(tail -1 "$out/tests_$g$tag.log")" ;;
    *) stage "unknown step $s" ;;
  esac
done
stage DONE

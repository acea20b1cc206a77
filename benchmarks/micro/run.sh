#!/usr/bin/env bash
# Builds a stand-alone kernel harness (benchmarks/micro/<kernel>_micro.cu) once per variant of the kernel header,
# in parallel, then runs every binary over every shape: a kernel change checked against a float64 reference and
# timed in one GPU call, without rebuilding the extension. Exits non-zero if a build fails or a variant is wrong.
#   bash benchmarks/micro/run.sh decode                  the kernel as it is, over the default shapes
#   VARIANTS="csrc/kernels/decode_tc.cuh scratch/decode_tc_try.cuh" SHAPES="1 8192;64 4096 32 8 128 16 e4m3" \
#   bash benchmarks/micro/run.sh decode
#   VARIANTS="csrc/kernels/prefill.cuh scratch/prefill_try.cuh" SHAPES="1 8192 8192" bash benchmarks/micro/run.sh prefill
#   TRACE=1 bash benchmarks/micro/run.sh decode          and the phases of one launch, per block
#   CHAIN=20 bash benchmarks/micro/run.sh decode         each launch timed as one of 20 back to back (PDL overlap;
#                                                        prefill too)
#   PRED=2 CHAIN=20 bash benchmarks/micro/run.sh decode  each decode behind a 2 us kernel, as behind the model's
#                                                        append_paged_kv_cache (the time printed includes it)
#   CAP=50 bash benchmarks/micro/run.sh prefill          with a logits soft cap of 50, as Gemma 2 (either harness)
#   MODES="CHAIN=20;CHAIN=20 PRED=2" bash benchmarks/micro/run.sh decode
#                                                        the same binaries under each environment in turn (one build)
#   NVCC_FLAGS=-DFLASHINFER_PREFILL_MMA_SYNC bash benchmarks/micro/run.sh prefill
#                                                        prefill's mma.sync mainloop (sm_90a builds run wgmma)
#   MAINLOOPS="mma.sync wgmma" VARIANTS="a.cuh b.cuh" bash benchmarks/micro/run.sh prefill
#                                                        every variant on both mainloops, built at once, each line
#                                                        tagged with its mainloop
#   NVCC_FLAGS=-DMICRO_ROPE bash benchmarks/micro/run.sh prefill|decode
#                                                        with ROPE_LLAMA (theta 1e4)
#   SPILLS=1 VARIANTS="a.cuh b.cuh" bash benchmarks/micro/run.sh prefill
#                                                        builds only, and prints each kernel instantiation's spill
#                                                        bytes per variant (ptxas -v; no GPU needed): a register
#                                                        held across a tile loop shows here before it costs time
# A variant is a copy of the kernel header (its includes resolve against csrc/kernels). A shape is the harness's
# arguments: decode BATCH KV_LEN [HQ HKV HEAD_DIM PAGE bf16|e4m3]; prefill BATCH QO_LEN KV_LEN [HQ HKV HEAD_DIM
# PAGE causal|full|mask paged|ragged bf16|e4m3] (mask: a random packed custom mask).
set -uo pipefail
cd "$(dirname "$0")/../.."
kernel=${1:-decode}
case "$kernel" in
  decode)
    macro=DECODE_TC_HEADER default_variant=csrc/kernels/decode_tc.cuh
    default_shapes="1 8192;16 4096;64 4096;1 8192 32 8 128 16 e4m3;64 4096 32 8 128 16 e4m3" ;;
  prefill)
    macro=PREFILL_HEADER default_variant=csrc/kernels/prefill.cuh
    default_shapes="1 8192 8192;4 4096 4096;16 1024 1024;4 4096 4096 32 8 128 16 full;1 8192 8192 32 8 128 16 causal ragged" ;;
  *) echo "usage: bash benchmarks/micro/run.sh decode|prefill" >&2; exit 2 ;;
esac
variants=${VARIANTS:-$default_variant}
IFS=';' read -r -a shapes <<< "${SHAPES:-$default_shapes}"
# One build per variant, or (MAINLOOPS, prefill) one per variant and mainloop, all compiled at once. loops[i] is
# build i's mainloop ("" without MAINLOOPS); it tags that build's output.
if [ -n "${MAINLOOPS:-}" ] && [ "$kernel" != prefill ]; then echo "MAINLOOPS applies to prefill only" >&2; exit 2; fi
srcs=() loops=()
for v in $variants; do
  for m in ${MAINLOOPS:--}; do
    case "$m" in
      -) srcs+=("$v") loops+=("") ;;
      mma.sync | wgmma) srcs+=("$v") loops+=("$m") ;;
      *) echo "MAINLOOPS: mma.sync and/or wgmma, not $m" >&2; exit 2 ;;
    esac
  done
done
label() { echo "${srcs[$1]}${loops[$1]:+ [${loops[$1]}]}"; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
pids=()
for i in "${!srcs[@]}"; do
  # shellcheck disable=SC2086
  nvcc -O3 -std=c++20 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a -I csrc/kernels \
    ${TRACE:+-DFLASHINFER_BLOCK_TRACE} ${SPILLS:+-Xptxas -v} ${NVCC_FLAGS:-} \
    $([ "${loops[$i]}" = mma.sync ] && echo -DFLASHINFER_PREFILL_MMA_SYNC) \
    -D$macro="\"$(realpath "${srcs[$i]}")\"" "benchmarks/micro/${kernel}_micro.cu" -o "$bin/v$i" 2> "$bin/v$i.log" &
  pids+=($!)
done
for i in "${!srcs[@]}"; do
  wait "${pids[$i]}" || { echo "build of $(label "$i") failed:"; cat "$bin/v$i.log"; exit 1; }
done
if [ -n "${SPILLS:-}" ]; then
  for i in "${!srcs[@]}"; do
    echo "== $(label "$i")"
    # ptxas names each function, then gives its stack frame and spills on the next line.
    awk '/Function properties for .*_kernel/ { match($0, /for [^ ]+/); name = substr($0, RSTART + 4, RLENGTH - 4) }
         name != "" && /spill stores/ { printf "%s:%s\n", name, $0; name = "" }' "$bin/v$i.log" |
      sed -E 's/ +[0-9]+ bytes stack frame, ([0-9]+) bytes spill stores, ([0-9]+) .*/  stores \1 loads \2/' |
      if command -v c++filt > /dev/null; then c++filt | sed 's/(flashinfer::[a-z_]*::Params)//'; else cat; fi
  done
  exit 0
fi
IFS=';' read -r -a modes <<< "${MODES:-}"
[ ${#modes[@]} -gt 0 ] || modes=("")
status=0
for mode in "${modes[@]}"; do
  [ -z "$mode" ] || echo "== $mode"
  for shape in "${shapes[@]}"; do
    for i in "${!srcs[@]}"; do
      # shellcheck disable=SC2086
      env $mode "$bin/v$i" $shape | sed "s|^|${loops[$i]:+[${loops[$i]}] }|" || status=1  # pipefail: its status
    done
  done
done
exit $status

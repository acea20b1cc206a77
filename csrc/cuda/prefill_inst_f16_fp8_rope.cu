// Prefill kernels for __half queries over __nv_fp8_e4m3 and __nv_fp8_e5m2 KV, with ROPE_LLAMA (see
// prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

FLASHINFER_PREFILL_RUN(__half, __nv_fp8_e4m3, true)
FLASHINFER_PREFILL_RUN(__half, __nv_fp8_e5m2, true)

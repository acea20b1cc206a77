// Prefill kernels for __nv_bfloat16 queries over __nv_fp8_e4m3 and __nv_fp8_e5m2 KV (see prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

FLASHINFER_PREFILL_RUN(__nv_bfloat16, __nv_fp8_e4m3, false)
FLASHINFER_PREFILL_RUN(__nv_bfloat16, __nv_fp8_e5m2, false)

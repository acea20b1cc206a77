// Prefill kernels for __nv_bfloat16 queries over __nv_bfloat16 KV, with ROPE_LLAMA (see prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

FLASHINFER_PREFILL_RUN(__nv_bfloat16, __nv_bfloat16, true)

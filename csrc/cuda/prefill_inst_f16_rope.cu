// Prefill kernels for __half queries over __half KV, with ROPE_LLAMA (see prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

FLASHINFER_PREFILL_RUN(__half, __half, true)

// Decode kernels for __nv_bfloat16 queries over __nv_bfloat16 KV (see decode_launch.cuh).
#define FLASHINFER_DECODE_INSTANTIATE
#include "decode_launch.cuh"

FLASHINFER_DECODE_RUN(__nv_bfloat16, __nv_bfloat16)

// Decode kernels for __half queries over __nv_fp8_e4m3 and __nv_fp8_e5m2 KV (see decode_launch.cuh).
#define FLASHINFER_DECODE_INSTANTIATE
#include "decode_launch.cuh"

FLASHINFER_DECODE_RUN(__half, __nv_fp8_e4m3)
FLASHINFER_DECODE_RUN(__half, __nv_fp8_e5m2)

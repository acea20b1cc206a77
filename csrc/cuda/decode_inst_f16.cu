// Decode kernels for __half queries over __half KV (see decode_launch.cuh).
#define FLASHINFER_DECODE_INSTANTIATE
#include "decode_launch.cuh"

FLASHINFER_DECODE_RUN(__half, __half)

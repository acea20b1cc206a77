// Warp reductions in fp32. Torch-free.
#pragma once
#include <cuda_runtime.h>

namespace flashinfer {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

}  // namespace flashinfer

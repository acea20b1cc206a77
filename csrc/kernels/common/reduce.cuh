// Warp and block reductions in fp32. Torch-free.
#pragma once
#include <cuda_runtime.h>

namespace flashinfer {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum over the block, returned to every thread. `scratch` holds 32 floats; the trailing barrier lets a
// caller reuse `scratch` for the next reduction.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
  x = warp_sum(x);
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < nwarps ? scratch[lane] : 0.f;
  x = warp_sum(x);
  __syncthreads();
  return x;
}

}  // namespace flashinfer

// Rotary-embedding frequencies shared by the attention kernels that apply ROPE_LLAMA on the fly. Torch-free.
#pragma once
#include <cuda_runtime.h>

namespace flashinfer {

// Inverse frequency of rotary pair i of a head_dim-wide rotation: rcp_scale * theta^(-2 i / head_dim), with theta
// given as log2(theta) so the device evaluates one exp2.
__device__ __forceinline__ float rope_inv_freq(float rcp_scale, float log2_theta, int i, int head_dim) {
  return rcp_scale * exp2f(-2.f * i / head_dim * log2_theta);
}

}  // namespace flashinfer

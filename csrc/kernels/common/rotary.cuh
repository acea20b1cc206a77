// Rotary embedding for the attention kernels that apply ROPE_LLAMA on the fly. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include "vec.cuh"
#include "wgmma.cuh"

namespace flashinfer {

// Inverse frequency of rotary pair i of a head_dim-wide rotation: rcp_scale * theta^(-2 i / head_dim), with theta
// given as log2(theta) so the device evaluates one exp2.
__device__ __forceinline__ float rope_inv_freq(float rcp_scale, float log2_theta, int i, int head_dim) {
  return rcp_scale * exp2f(-2.f * i / head_dim * log2_theta);
}

// ROPE_LLAMA on a swizzled (tile_swizzle(), common/wgmma.cuh) [kRows][D] tile in shared memory, in place,
// by a block of kThreads threads: row r is rotated to position pos(r), element e < D / 2 paired with e + D / 2 (the
// NeoX halves); the rotated rows are rounded to T, the operand type of the mma that reads them. A thread takes an
// 8-element chunk of the first half and its partner. The fast __sincosf: the fp32 angle pos * freq already carries
// an absolute error of about |angle| * 2^-24, the order of what the hardware sine adds, and the accurate sincosf
// made the RoPE passes cost as much as the attention (measured 1.85x).
template <typename T, int D, int kRows, int kThreads, bool kWgLayout = false, typename Pos>
__device__ __forceinline__ void rope_tile(float rcp_scale, float log2_theta, T* tile, Pos&& pos) {
  constexpr int kHalf = D / 16;  // chunks per half row
  for (int c = threadIdx.x; c < kRows * kHalf; c += kThreads) {
    const int r = c / kHalf, ch = c % kHalf;
    T* lo = tile + tile_swizzle<kWgLayout, D, kRows>(r, ch);
    T* hi = tile + tile_swizzle<kWgLayout, D, kRows>(r, ch + kHalf);
    Vec<T, 8> a = Vec<T, 8>::load(lo), b = Vec<T, 8>::load(hi);
    const float x = (float)pos(r);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float sn, cs;
      __sincosf(x * rope_inv_freq(rcp_scale, log2_theta, ch * 8 + j, D), &sn, &cs);
      const float u = to_float(a.v[j]), w = to_float(b.v[j]);
      a.v[j] = from_float<T>(u * cs - w * sn);
      b.v[j] = from_float<T>(w * cs + u * sn);
    }
    a.store(lo);
    b.store(hi);
  }
}

}  // namespace flashinfer

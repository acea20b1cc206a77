// Gated activations: out[r, i] = act(in[r, i]) * in[r, d + i] for rows of a [..., 2d] tensor. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/vec.cuh"

namespace flashinfer {
namespace activation {

enum class Act { kSilu, kGelu, kGeluTanh };

struct Params {
  void* out;             // [rows, d] through out_layout
  const void* in;        // [rows, 2d] through in_layout: gate half first, then the up half
  RowLayout in_layout, out_layout;
  int64_t rows;
  int d;                 // output width
};

template <Act A>
__device__ __forceinline__ float act(float x) {
  if constexpr (A == Act::kSilu) {
    return x / (1.f + expf(-x));
  } else if constexpr (A == Act::kGelu) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
  } else {
    constexpr float kAlpha = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanhf(kAlpha * (x + 0.044715f * x * x * x)));
  }
}

constexpr int kThreads = 128;

// grid.x: rows; grid.y: column chunks of kThreads vectors.
template <typename T, int VEC, Act A>
__global__ void __launch_bounds__(kThreads) act_and_mul_kernel(Params p) {
  using TV = Vec<T, VEC>;
  const int64_t row = blockIdx.x;
  const int i = (blockIdx.y * kThreads + threadIdx.x) * VEC;
  if (i >= p.d) return;
  const T* x = static_cast<const T*>(p.in) + p.in_layout.offset(row);
  TV g = TV::load(x + i), u = TV::load(x + p.d + i), o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) o.v[j] = from_float<T>(act<A>(to_float(g.v[j])) * to_float(u.v[j]));
  o.store(static_cast<T*>(p.out) + p.out_layout.offset(row) + i);
}

template <typename T, Act A>
cudaError_t launch(const Params& p, int vec, cudaStream_t stream) {
  if (p.rows == 0 || p.d == 0) return cudaSuccess;
  FI_DISPATCH_VEC(vec, VEC, {
    const unsigned chunks = (unsigned)((p.d / VEC + kThreads - 1) / kThreads);
    act_and_mul_kernel<T, VEC, A><<<dim3((unsigned)p.rows, chunks), kThreads, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace activation
}  // namespace flashinfer

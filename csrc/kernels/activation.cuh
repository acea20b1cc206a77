// Gated activations: out[r, i] = act(in[r, i]) * in[r, d + i] for rows of a [..., 2d] tensor. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/dispatch.h"
#include "common/pdl.cuh"
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

// tanh for 16-bit outputs: the hardware approximation (one MUFU op, error about 2^-11 of the result, sm_75+)
// moves gelu_tanh(x) by at most ~2.5e-4 |x|, a quarter of an fp16 ulp of x, and spares the ~20 ALU instructions of
// tanhf per element that a 4096 x 4096 call otherwise issues alongside its memory traffic. fp32 keeps tanhf.
template <typename T>
__device__ __forceinline__ float tanh_for(float x) {
  if constexpr (sizeof(T) == 2) {
    float y;
    asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else {
    return tanhf(x);
  }
}

template <Act A, typename T>
__device__ __forceinline__ float act(float x) {
  if constexpr (A == Act::kSilu) {
    return x / (1.f + expf(-x));
  } else if constexpr (A == Act::kGelu) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
  } else {
    constexpr float kAlpha = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanh_for<T>(kAlpha * (x + 0.044715f * x * x * x)));
  }
}

constexpr int kThreads = 128;

// Calls with at least this many output elements give each thread two vectors, all four loads issued before any
// math: more bytes in flight per thread and half the blocks to schedule (H200, silu 16384 x 14336: 363 -> 333 us).
// Below it one vector per thread: the halved block count leaves SMs idle (128 x 14336: 5.1 -> 6.0 us), and up to
// tens of millions of elements the single vector still streams faster (H100, stand-alone: 4096 x 4096 42.4 ->
// 41.8 us, 4096 x 14336 119.9 -> 118.6).
constexpr int64_t kWideElems = int64_t{1} << 26;
constexpr unsigned kMaxGridY = 65535;

// grid.x: chunks of kPer * kThreads vectors along a row; grid.y: rows, striding by gridDim.y past 65535. x varies
// fastest, so the blocks resident at any moment read a few long runs of memory instead of the same chunk of many
// rows (H100, 16384 x 14336: 485 -> 461 us).
template <typename T, int VEC, int kPer, Act A>
__global__ void __launch_bounds__(kThreads) act_and_mul_kernel(Params p) {
  using TV = Vec<T, VEC>;
  constexpr int kStep = kThreads * VEC;  // elements between a thread's vectors
  const int i0 = blockIdx.x * kPer * kStep + threadIdx.x * VEC;
  if (i0 >= p.d) return;
  pdl_enter();
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const T* x = static_cast<const T*>(p.in) + p.in_layout.offset(row);
    T* y = static_cast<T*>(p.out) + p.out_layout.offset(row);
    TV g[kPer], u[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (i0 + k * kStep < p.d) {
        g[k] = TV::load(x + i0 + k * kStep);
        u[k] = TV::load(x + p.d + i0 + k * kStep);
      }
    }
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (i0 + k * kStep < p.d) {
        TV o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = from_float<T>(act<A, T>(to_float(g[k].v[j])) * to_float(u[k].v[j]));
        o.store(y + i0 + k * kStep);
      }
    }
  }
}

template <typename T, Act A>
cudaError_t launch(const Params& p, int vec, cudaStream_t stream) {
  if (p.rows == 0 || p.d == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  const bool wide = p.rows * p.d >= kWideElems;
  const dim3 block(kThreads);
  FI_DISPATCH_BOOL(wide, kWide, FI_DISPATCH_VEC(vec, VEC, {
    constexpr int kPer = kWide ? 2 : 1;
    const dim3 grid((unsigned)((p.d / VEC + kPer * kThreads - 1) / (kPer * kThreads)),
                    (unsigned)std::min<int64_t>(p.rows, kMaxGridY));
    err = launch_pdl(act_and_mul_kernel<T, VEC, kPer, A>, grid, block, 0, stream, p);
  }))
  return err;
}

}  // namespace activation
}  // namespace flashinfer

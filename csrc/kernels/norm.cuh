// RMSNorm (plain, Gemma-style, fused with the residual add) and LayerNorm over rows of a [..., D] tensor.
// Torch-free: raw pointers, element strides, a stream; launchers return cudaError_t.
//
// One block per row. Each thread keeps up to kCacheElems of its row (and the matching weights) in registers
// between the statistics pass and the output pass, so a row is read from memory once (hidden <= 8192 with
// 512 threads); longer rows re-read the remainder. Statistics are accumulated in fp32, and one block
// reduction serves both RMSNorm and LayerNorm.
#pragma once
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/reduce.cuh"  // warp_sum
#include "common/vec.cuh"

namespace flashinfer {
namespace norm {

struct Params {
  void* out;              // [rows, hidden] through out_layout; for fused add: the input, rewritten in place
  const void* in;         // [rows, hidden] through in_layout
  void* residual;         // [rows, hidden] through res_layout (fused add only; updated in place)
  const void* weight;     // [hidden] (gamma for LayerNorm), dtype W
  const void* bias;       // [hidden] (beta for LayerNorm), dtype W; unused by RMSNorm
  RowLayout in_layout, out_layout, res_layout;
  int64_t rows;           // number of rows (grid size)
  int hidden;             // D
  float eps;
  float weight_offset;    // 0 for RMSNorm, 1 for Gemma (scale by weight + 1)
};

enum class Kind { kRms, kFusedAddRms, kLayer };

constexpr int kCacheElems = 16;  // per thread, fp32 registers
constexpr int kMaxThreads = 512; // leaves 128 registers a thread: the cache never spills

template <typename T, typename W, int VEC, Kind K>
__global__ void __launch_bounds__(kMaxThreads) norm_kernel(Params p) {
  constexpr int kCache = kCacheElems / VEC;
  constexpr bool kLayer = K == Kind::kLayer, kFused = K == Kind::kFusedAddRms;
  using TV = Vec<T, VEC>;
  using WV = Vec<W, VEC>;
  __shared__ float scratch[2][32];

  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.in) + p.in_layout.offset(row);
  T* y = static_cast<T*>(p.out) + p.out_layout.offset(row);
  T* res = kFused ? static_cast<T*>(p.residual) + p.res_layout.offset(row) : nullptr;
  const W* w = static_cast<const W*>(p.weight);
  const W* b = static_cast<const W*>(p.bias);
  const int nvec = p.hidden / VEC;
  // LayerNorm accumulates around a pivot (the row's first element, read by every thread) so that one
  // reduction of (sum, sum of squares) gives an accurate variance even when |mean| >> spread.
  const float pivot = kLayer ? to_float(x[0]) : 0.f;

  // Row vector v as fp32, with the residual folded in (and written back) for the fused variant.
  auto load = [&](int v, float (&f)[VEC], bool write_residual) {
    TV a = TV::load(x + v * VEC);
    if constexpr (kFused) {
      TV r = TV::load(res + v * VEC);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        f[j] = to_float(a.v[j]) + to_float(r.v[j]);
        r.v[j] = from_float<T>(f[j]);
      }
      if (write_residual) r.store(res + v * VEC);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) f[j] = to_float(a.v[j]);
    }
  };
  float s1 = 0.f, s2 = 0.f;
  auto accumulate = [&](const float (&f)[VEC]) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float d = f[j] - pivot;
      s1 += d;
      s2 += d * d;
    }
  };

  // Pass 1: the row (and, for small rows, the affine parameters) into registers, all loads in flight at
  // once so a short row costs one memory round trip.
  float cache[kCache][VEC];
  WV wcache[kCache], bcache[kLayer ? kCache : 1];
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int v = c * blockDim.x + threadIdx.x;
    if (v < nvec) {
      wcache[c] = WV::load(w + v * VEC);
      if constexpr (kLayer) bcache[c] = WV::load(b + v * VEC);
      load(v, cache[c], true);
      accumulate(cache[c]);
    }
  }
  for (int v = kCache * blockDim.x + threadIdx.x; v < nvec; v += blockDim.x) {
    float f[VEC];
    load(v, f, true);
    accumulate(f);
  }

  // One block reduction of both sums.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) scratch[0][warp] = s1, scratch[1][warp] = s2;
  __syncthreads();
  s1 = warp_sum(lane < nwarps ? scratch[0][lane] : 0.f);
  s2 = warp_sum(lane < nwarps ? scratch[1][lane] : 0.f);
  const float m1 = s1 / p.hidden, m2 = s2 / p.hidden;
  const float mean = kLayer ? pivot + m1 : 0.f;
  const float rstd = rsqrtf((kLayer ? fmaxf(m2 - m1 * m1, 0.f) : m2) + p.eps);

  auto store = [&](int v, const float (&f)[VEC], const WV& g, const WV& bb) {
    TV o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      o.v[j] = kLayer ? from_float<T>((f[j] - mean) * rstd * to_float(g.v[j]) + to_float(bb.v[j]))
                      : from_float<T>(f[j] * rstd * (to_float(g.v[j]) + p.weight_offset));
    }
    o.store(y + v * VEC);
  };

  // Pass 2: normalise and write.
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int v = c * blockDim.x + threadIdx.x;
    if (v < nvec) store(v, cache[c], wcache[c], bcache[kLayer ? c : 0]);
  }
  for (int v = kCache * blockDim.x + threadIdx.x; v < nvec; v += blockDim.x) {
    // Past the register cache: re-read. The fused variant re-reads the residual it already updated.
    float f[VEC];
    if constexpr (kFused) {
      TV r = TV::load(res + v * VEC);
#pragma unroll
      for (int j = 0; j < VEC; ++j) f[j] = to_float(r.v[j]);
    } else {
      load(v, f, false);
    }
    store(v, f, WV::load(w + v * VEC), kLayer ? WV::load(b + v * VEC) : WV{});
  }
}

// `vec` is the element vector width chosen by the caller (see widest_vec): it must divide `hidden` and
// keep every row start and both parameter vectors aligned.
template <typename T, typename W, Kind K>
cudaError_t launch(const Params& p, int vec, cudaStream_t stream) {
  if (p.rows == 0 || p.hidden == 0) return cudaSuccess;
  FI_DISPATCH_VEC(vec, VEC, {
    const int nvec = p.hidden / VEC;
    const int per_thread = kCacheElems / VEC;
    int threads = (nvec + per_thread - 1) / per_thread;
    threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : (threads + 31) / 32 * 32);
    norm_kernel<T, W, VEC, K><<<dim3((unsigned)p.rows), threads, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace norm
}  // namespace flashinfer

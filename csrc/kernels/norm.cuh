// RMSNorm (plain, Gemma-style, fused with the residual add) and LayerNorm over rows of a [..., D] tensor.
// Torch-free: raw pointers, element strides, a stream; launchers return cudaError_t.
//
// One block per row. Each thread keeps up to kCacheElems of its row in registers between the statistics
// pass and the output pass, so a row is read from memory once (hidden <= 8192 with 512 threads); longer
// rows re-read the remainder. Statistics are accumulated in fp32.
//
// kPrefetch loads the thread's weights (and LayerNorm biases) together with its row, before the reduction, instead
// of after it: one memory round trip less on the critical path of a block, which is what a short batch waits on
// (rmsnorm 16 x 4096: 1.78 -> 1.46 us on H100), but the live parameters raise the bf16 kernel from 32 to 51
// registers, halving the resident 512-thread blocks, and cost a long batch of plain RMSNorm 15-29% of its
// bandwidth. The fused variant gains at every size (it holds the residual's loads in flight anyway).
#pragma once
#include <cuda_runtime.h>

#include "common/dispatch.h"
#include "common/pdl.cuh"
#include "common/reduce.cuh"
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

// Row counts up to this use kPrefetch (see above); measured on H100: prefetching wins at 128 rows, loses at 1024.
constexpr int64_t kPrefetchRows = 256;

template <typename T, typename W, int VEC, Kind K, bool kPrefetch>
__global__ void __launch_bounds__(kMaxThreads) norm_kernel(Params p) {
  constexpr int kCache = kCacheElems / VEC;
  using TV = Vec<T, VEC>;
  using WV = Vec<W, VEC>;
  __shared__ float scratch[32];

  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.in) + p.in_layout.offset(row);
  T* y = static_cast<T*>(p.out) + p.out_layout.offset(row);
  T* res = K == Kind::kFusedAddRms ? static_cast<T*>(p.residual) + p.res_layout.offset(row) : nullptr;
  const W* w = static_cast<const W*>(p.weight);
  const int nvec = p.hidden / VEC;
  pdl_enter();

  // Row element i as fp32, with the residual folded in (and written back) for the fused variant.
  auto load = [&](int v, float (&f)[VEC], bool write_residual) {
    TV a = TV::load(x + v * VEC);
    if constexpr (K == Kind::kFusedAddRms) {
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

  // Parameters of vector v: weight (gamma) and, for LayerNorm, bias (beta).
  auto params = [&](int v, WV& g, WV& b) {
    g = WV::load(w + v * VEC);
    if constexpr (K == Kind::kLayer) b = WV::load(static_cast<const W*>(p.bias) + v * VEC);
  };

  float cache[kCache][VEC];
  WV w_pre[kPrefetch ? kCache : 1], b_pre[kPrefetch && K == Kind::kLayer ? kCache : 1];
  if constexpr (kPrefetch) {
#pragma unroll
    for (int c = 0; c < kCache; ++c) {
      const int v = c * blockDim.x + threadIdx.x;
      if (v < nvec) params(v, w_pre[c], b_pre[K == Kind::kLayer ? c : 0]);
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int v = c * blockDim.x + threadIdx.x;
    if (v < nvec) {
      load(v, cache[c], true);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum += K == Kind::kLayer ? cache[c][j] : cache[c][j] * cache[c][j];
    }
  }
  for (int v = kCache * blockDim.x + threadIdx.x; v < nvec; v += blockDim.x) {
    float f[VEC];
    load(v, f, true);
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum += K == Kind::kLayer ? f[j] : f[j] * f[j];
  }
  sum = block_sum(sum, scratch);

  float mean = 0.f, rstd;
  if constexpr (K == Kind::kLayer) {
    // Two-pass variance over the cached values: exact for rows whose mean is large against their spread.
    mean = sum / p.hidden;
    float sq = 0.f;
#pragma unroll
    for (int c = 0; c < kCache; ++c) {
      if (c * blockDim.x + threadIdx.x < nvec) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) sq += (cache[c][j] - mean) * (cache[c][j] - mean);
      }
    }
    for (int v = kCache * blockDim.x + threadIdx.x; v < nvec; v += blockDim.x) {
      float f[VEC];
      load(v, f, false);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sq += (f[j] - mean) * (f[j] - mean);
    }
    rstd = rsqrtf(block_sum(sq, scratch) / p.hidden + p.eps);
  } else {
    rstd = rsqrtf(sum / p.hidden + p.eps);
  }

  auto store = [&](int v, const float (&f)[VEC], const WV& g, const WV& b) {
    TV o;
    if constexpr (K == Kind::kLayer) {
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        o.v[j] = from_float<T>((f[j] - mean) * rstd * to_float(g.v[j]) + to_float(b.v[j]));
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_float<T>(f[j] * rstd * (to_float(g.v[j]) + p.weight_offset));
    }
    o.store(y + v * VEC);
  };

#pragma unroll
  for (int c = 0; c < kCache; ++c) {
    const int v = c * blockDim.x + threadIdx.x;
    if (v < nvec) {
      if constexpr (kPrefetch) {
        store(v, cache[c], w_pre[c], b_pre[K == Kind::kLayer ? c : 0]);
      } else {
        WV g, b;
        params(v, g, b);
        store(v, cache[c], g, b);
      }
    }
  }
  for (int v = kCache * blockDim.x + threadIdx.x; v < nvec; v += blockDim.x) {
    // Past the register cache: re-read. The fused variant re-reads the residual it already updated.
    float f[VEC];
    if constexpr (K == Kind::kFusedAddRms) {
      TV r = TV::load(res + v * VEC);
#pragma unroll
      for (int j = 0; j < VEC; ++j) f[j] = to_float(r.v[j]);
    } else {
      load(v, f, false);
    }
    WV g, b;
    params(v, g, b);
    store(v, f, g, b);
  }
}

// `vec` is the element vector width chosen by the caller (see widest_vec): it must divide `hidden` and
// keep every row start and both parameter vectors aligned.
template <typename T, typename W, Kind K>
cudaError_t launch(const Params& p, int vec, cudaStream_t stream) {
  if (p.rows == 0 || p.hidden == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_VEC(vec, VEC, {
    const int nvec = p.hidden / VEC;
    const int per_thread = kCacheElems / VEC;
    int threads = (nvec + per_thread - 1) / per_thread;
    threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : (threads + 31) / 32 * 32);
    const dim3 grid((unsigned)p.rows), block(threads);
    constexpr bool kAlways = K == Kind::kFusedAddRms;
    if (kAlways || p.rows <= kPrefetchRows) {
      err = launch_pdl(norm_kernel<T, W, VEC, K, true>, grid, block, 0, stream, p);
    } else if constexpr (!kAlways) {
      err = launch_pdl(norm_kernel<T, W, VEC, K, false>, grid, block, 0, stream, p);
    }
  });
  return err;
}

}  // namespace norm
}  // namespace flashinfer

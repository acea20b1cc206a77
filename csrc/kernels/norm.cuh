// RMSNorm (plain, Gemma-style, fused with the residual add) and LayerNorm over rows of a [..., D] tensor.
// Torch-free: raw pointers, element strides, a stream; launchers return cudaError_t.
//
// One block per row. Each thread keeps up to kCacheElems of its row in registers between the statistics
// pass and the output pass, so a row is read from memory once (hidden <= 8192 with 512 threads); longer
// rows re-read the remainder. Statistics are accumulated in fp32.
#pragma once
#include <cuda_runtime.h>

#include "common/dispatch.h"
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

template <typename T, typename W, int VEC, Kind K>
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

  float cache[kCache][VEC];
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

  auto store = [&](int v, const float (&f)[VEC]) {
    WV g = WV::load(w + v * VEC);
    TV o;
    if constexpr (K == Kind::kLayer) {
      WV b = WV::load(static_cast<const W*>(p.bias) + v * VEC);
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
    if (v < nvec) store(v, cache[c]);
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
    store(v, f);
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

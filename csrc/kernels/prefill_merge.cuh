// The merge of prefill's KV splits (prefill.cuh): each output row's num_splits normalised partials and log2-sum-exps,
// written by the split blocks to the workspace, combined into out and lse. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/pdl.cuh"
#include "common/vec.cuh"
#include "prefill_params.cuh"

namespace flashinfer {
namespace prefill {

// Combines the num_splits partials of each output row (a warp per row; lane s < num_splits first reads split s's
// lse) into out and lse. Rows of tokens past qo_indptr[batch], which no split block wrote, are left alone, as the
// unsplit kernel leaves them.
constexpr int kMergeWarps = 4, kMergeThreads = 32 * kMergeWarps;  // a warp per output row
template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads) merge_kernel(Params p) {
  static_assert(D % 32 == 0, "a lane owns D / 32 consecutive elements");
  constexpr int kPer = D / 32;
  const int lane = threadIdx.x % 32, ns = p.num_splits;
  const int64_t row = (int64_t)blockIdx.x * kMergeWarps + threadIdx.x / 32;
  pdl_enter();
  const int64_t rows = min(max((int64_t)p.qo_indptr[p.batch], (int64_t)0), p.total_q) * p.hq;
  if (row >= rows || row < max((int64_t)p.qo_indptr[0], (int64_t)0) * p.hq) return;
  const int64_t split_rows = p.total_q * p.hq;
  float mx = -INFINITY;
  for (int s = lane; s < ns; s += 32) mx = fmaxf(mx, __ldg(p.tmp_lse + s * split_rows + row));
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float acc[kPer] = {}, den = 0.f;
  const float* src = p.tmp_o + row * D + lane * kPer;
#pragma unroll 4
  for (int s = 0; s < ns; ++s) {
    const float l = __ldg(p.tmp_lse + s * split_rows + row);
    const float w = mx == -INFINITY ? 0.f : exp2f(l - mx);
    den += w;
    const Vec<float, kPer> x = Vec<float, kPer>::load(src + s * split_rows * D);
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[j] = fmaf(w, x.v[j], acc[j]);
  }
  const float inv = den > 0.f ? 1.f / den : 0.f;
  Vec<T, kPer> ov;
#pragma unroll
  for (int j = 0; j < kPer; ++j) ov.v[j] = from_float<T>(acc[j] * inv);
  ov.store(static_cast<T*>(p.out) + row * D + lane * kPer);
  if (lane == 0) p.lse[row] = den > 0.f ? mx + log2f(den) : -INFINITY;
}

}  // namespace prefill
}  // namespace flashinfer

// Batch decode over a paged KV cache on CUDA cores: one query token per request. Torch-free.
//
// Grid (batch, num_kv_heads, num_splits). num_splits is fixed by the launcher from shapes and the SM count; each
// block finds on the device which slice of its request's KV it owns ([lo, len) cut in num_splits chunks), so a
// captured launch stays correct when lengths change between replays. Blocks whose chunk is empty write an empty
// partial (lse = -inf). With more than one split, partials go to a workspace and merge_kernel combines them.
//
// Inside a block, groups of kTPT = head_dim / 8 threads each own one KV token at a time (8 elements a thread,
// one 16-byte load for 16-bit KV); kTok = 128 / kTPT tokens are in flight per step. The query heads of the GQA
// group are processed kGT at a time with per-thread online softmax (log2 domain), then the token groups are
// merged through shared memory. Page-table entries are checked: a token on a page outside the cache is masked.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

#include "common/vec.cuh"

namespace flashinfer {
namespace decode {

struct Params {
  const void* q;              // [batch, hq, head_dim]
  int64_t q_stride_n, q_stride_h;
  const void* k_cache;        // logical [num_pages, page_size, hkv, head_dim] through the strides below
  const void* v_cache;
  int64_t k_stride_page, k_stride_entry, k_stride_head;
  int64_t v_stride_page, v_stride_entry, v_stride_head;
  const int32_t* indptr;      // [batch + 1]
  const int32_t* indices;     // [num_indices]
  const int32_t* last_page_len;  // [batch]
  int64_t num_indices, num_pages;
  int batch, hq, hkv, page_size, num_splits;
  void* out;                  // [batch, hq, head_dim], q's dtype (num_splits == 1)
  float* lse;                 // [batch, hq], log2 (num_splits == 1)
  float* tmp_o;               // [batch, num_splits, hq, head_dim] (num_splits > 1)
  float* tmp_lse;             // [batch, num_splits, hq]
  float sm_scale, logits_soft_cap, k_scale, v_scale;
  int window_left;            // -1: no window
  float rope_rcp_scale, rope_log2_theta;
};

constexpr int kThreads = 128;
constexpr int kVec = 8;
constexpr int kGT = 4;  // query heads per pass
constexpr float kLog2e = 1.4426950408889634f;

// Inverse frequency of rotary pair i of a head_dim-wide NeoX rotation.
__device__ __forceinline__ float rope_freq(const Params& p, int i, int head_dim) {
  return p.rope_rcp_scale * exp2f(-2.f * i / head_dim * p.rope_log2_theta);
}

template <typename Q, typename KV, int D, bool ROPE>
__global__ void __launch_bounds__(kThreads) decode_kernel(Params p) {
  constexpr int kTPT = D / kVec;          // threads per token
  constexpr int kTok = kThreads / kTPT;   // tokens in flight per step
  __shared__ float q_s[kGT][D];
  __shared__ float red_m[kTok][kGT], red_l[kTok][kGT];
  __shared__ float red_o[kTok][kGT][D];

  const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x % kTPT, tg = threadIdx.x / kTPT, e0 = lane * kVec;
  const int group = p.hq / p.hkv;

  // This request's extent, with every page-table read guarded.
  const int64_t start = max((int64_t)p.indptr[b], (int64_t)0);
  const int64_t end = min((int64_t)p.indptr[b + 1], p.num_indices);
  const int64_t npages = end - start;
  const int64_t len = npages > 0 ? min(max((npages - 1) * p.page_size + p.last_page_len[b], (int64_t)0),
                                       npages * p.page_size)
                                 : 0;
  const int64_t lo = p.window_left >= 0 ? max((int64_t)0, len - 1 - p.window_left) : 0;
  const int64_t chunk = (len - lo + p.num_splits - 1) / p.num_splits;
  const int64_t t0 = lo + split * chunk, t1 = min(len, t0 + chunk);

  // RoPE frequencies of this thread's 8 elements (a thread's elements all lie in one half of the head).
  float freq[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) freq[j] = ROPE ? rope_freq(p, (e0 + j) % (D / 2), D) : 0.f;

  for (int g0 = 0; g0 < group; g0 += kGT) {
    // Query heads g0.. of this KV head into shared memory as fp32, rotated to position len - 1.
    for (int idx = threadIdx.x; idx < kGT * D; idx += kThreads) {
      const int gi = idx / D, e = idx % D;
      float x = 0.f;
      if (g0 + gi < group) {
        const Q* qh = static_cast<const Q*>(p.q) + b * p.q_stride_n + (int64_t)(kvh * group + g0 + gi) * p.q_stride_h;
        x = to_float(qh[e]);
        if constexpr (ROPE) {
          const int i = e % (D / 2);
          const float partner = to_float(qh[e < D / 2 ? e + D / 2 : e - D / 2]);
          float sn, cs;
          sincosf((float)(len - 1) * rope_freq(p, i, D), &sn, &cs);
          x = e < D / 2 ? x * cs - partner * sn : x * cs + partner * sn;
        }
      }
      q_s[gi][e] = x;
    }
    __syncthreads();
    float qr[kGT][kVec];
#pragma unroll
    for (int gi = 0; gi < kGT; ++gi)
#pragma unroll
      for (int j = 0; j < kVec; ++j) qr[gi][j] = q_s[gi][e0 + j];

    float m[kGT], l[kGT], o[kGT][kVec];
#pragma unroll
    for (int gi = 0; gi < kGT; ++gi) {
      m[gi] = -INFINITY;
      l[gi] = 0.f;
#pragma unroll
      for (int j = 0; j < kVec; ++j) o[gi][j] = 0.f;
    }

    // Every thread runs the same number of steps, so the shuffles below always have the whole warp.
    for (int64_t base = t0; base < t1; base += kTok) {
      const int64_t t = base + tg;
      int64_t page = -1;
      if (t < t1) {
        page = p.indices[start + t / p.page_size];
        if (page >= p.num_pages) page = -1;
      }
      const bool valid = page >= 0;
      float kf[kVec], vf[kVec];
      if (valid) {
        const int64_t entry = t % p.page_size;
        const auto kv = Vec<KV, kVec>::load(static_cast<const KV*>(p.k_cache) + page * p.k_stride_page +
                                            entry * p.k_stride_entry + kvh * p.k_stride_head + e0);
        const auto vv = Vec<KV, kVec>::load(static_cast<const KV*>(p.v_cache) + page * p.v_stride_page +
                                            entry * p.v_stride_entry + kvh * p.v_stride_head + e0);
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          kf[j] = to_float(kv.v[j]) * p.k_scale;
          vf[j] = to_float(vv.v[j]) * p.v_scale;
        }
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j) kf[j] = vf[j] = 0.f;
      }
      if constexpr (ROPE) {
        // The partner of element e is e +- D/2, held by the lane kTPT/2 away in the same token group.
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const float partner = __shfl_xor_sync(0xffffffffu, kf[j], kTPT / 2);
          float sn, cs;
          sincosf((float)t * freq[j], &sn, &cs);
          kf[j] = e0 < D / 2 ? kf[j] * cs - partner * sn : kf[j] * cs + partner * sn;
        }
      }
#pragma unroll
      for (int gi = 0; gi < kGT; ++gi) {
        float s = 0.f;
#pragma unroll
        for (int j = 0; j < kVec; ++j) s += qr[gi][j] * kf[j];
#pragma unroll
        for (int off = kTPT / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
        s *= p.sm_scale;
        if (p.logits_soft_cap > 0.f) s = p.logits_soft_cap * tanhf(s / p.logits_soft_cap);
        if (valid) {
          s *= kLog2e;
          const float m_new = fmaxf(m[gi], s);
          const float scale = exp2f(m[gi] - m_new), pr = exp2f(s - m_new);
          l[gi] = l[gi] * scale + pr;
#pragma unroll
          for (int j = 0; j < kVec; ++j) o[gi][j] = o[gi][j] * scale + pr * vf[j];
          m[gi] = m_new;
        }
      }
    }

    // Merge the token groups.
#pragma unroll
    for (int gi = 0; gi < kGT; ++gi) {
      if (lane == 0) red_m[tg][gi] = m[gi], red_l[tg][gi] = l[gi];
#pragma unroll
      for (int j = 0; j < kVec; ++j) red_o[tg][gi][e0 + j] = o[gi][j];
    }
    __syncthreads();
    if (tg == 0) {
      for (int gi = 0; gi < kGT && g0 + gi < group; ++gi) {
        float mx = -INFINITY;
        for (int k = 0; k < kTok; ++k) mx = fmaxf(mx, red_m[k][gi]);
        float den = 0.f, acc[kVec] = {};
        if (mx > -INFINITY) {
          for (int k = 0; k < kTok; ++k) {
            const float w = exp2f(red_m[k][gi] - mx);
            den += red_l[k][gi] * w;
#pragma unroll
            for (int j = 0; j < kVec; ++j) acc[j] += red_o[k][gi][e0 + j] * w;
          }
        }
        const float inv = den > 0.f ? 1.f / den : 0.f;
        const float lse = den > 0.f ? mx + log2f(den) : -INFINITY;
        const int h = kvh * group + g0 + gi;
        if (p.num_splits == 1) {
          Vec<Q, kVec> ov;
#pragma unroll
          for (int j = 0; j < kVec; ++j) ov.v[j] = from_float<Q>(acc[j] * inv);
          ov.store(static_cast<Q*>(p.out) + ((int64_t)b * p.hq + h) * D + e0);
          if (lane == 0) p.lse[(int64_t)b * p.hq + h] = lse;
        } else {
          const int64_t row = ((int64_t)b * p.num_splits + split) * p.hq + h;
#pragma unroll
          for (int j = 0; j < kVec; ++j) p.tmp_o[row * D + e0 + j] = acc[j] * inv;
          if (lane == 0) p.tmp_lse[row] = lse;
        }
      }
    }
    __syncthreads();  // q_s and the merge buffers are reused by the next pass
  }
}

// Combines the num_splits partials of each (request, head): grid (batch, hq), one thread per element.
template <typename Q, int D>
__global__ void merge_kernel(Params p) {
  const int b = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
  const int64_t base = (int64_t)b * p.num_splits * p.hq + h;
  float mx = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) mx = fmaxf(mx, p.tmp_lse[base + (int64_t)s * p.hq]);
  float den = 0.f, acc = 0.f;
  if (mx > -INFINITY) {
    for (int s = 0; s < p.num_splits; ++s) {
      const int64_t row = base + (int64_t)s * p.hq;
      const float w = exp2f(p.tmp_lse[row] - mx);
      den += w;
      acc += w * p.tmp_o[row * D + e];
    }
  }
  static_cast<Q*>(p.out)[((int64_t)b * p.hq + h) * D + e] = from_float<Q>(den > 0.f ? acc / den : 0.f);
  if (e == 0) p.lse[(int64_t)b * p.hq + h] = den > 0.f ? mx + log2f(den) : -INFINITY;
}

template <typename Q, typename KV, int D, bool ROPE>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  if (p.batch == 0 || p.hq == 0) return cudaSuccess;
  decode_kernel<Q, KV, D, ROPE><<<dim3(p.batch, p.hkv, p.num_splits), kThreads, 0, stream>>>(p);
  if (p.num_splits > 1) merge_kernel<Q, D><<<dim3(p.batch, p.hq), D, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace decode
}  // namespace flashinfer

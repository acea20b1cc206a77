// Batch prefill attention on tensor cores (mma.sync m16n8k16, sm_80+), over a paged or a ragged KV cache.
// Torch-free.
//
// Query rows are (token, head) pairs packed head-fastest: row r of request b is query token r / group, query head
// kvh * group + r % group, so a GQA group shares every K/V tile it loads. A block takes 64 packed rows (4 warps x
// 16, one mma M tile each) of one request and one kv head, and walks the KV tokens its rows can see (causal and
// window limits cut the range) in tiles of kTile tokens through a cp.async pipeline, with an online softmax per row in
// registers (log2 domain). Each warp owns its rows over the whole KV range, so there is no cross-warp merge.
//
// Scheduling is on the device: grid x is an upper bound of the number of row tiles over the batch (it depends
// only on shapes: total query tokens, batch, group); each block finds its (request, tile) by a warp scan of
// qo_indptr, and blocks past the last tile exit. Heavy tiles (late in a causal request) are handed out first.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "common/fastdiv.cuh"
#include "common/kv_tile.cuh"
#include "common/vec.cuh"

namespace flashinfer {
namespace prefill {

struct Params {
  const void* q;                 // [total_q, hq, head_dim] through q_stride_n / q_stride_h
  int64_t q_stride_n, q_stride_h;
  const void* k_cache;           // paged: [num_pages, page_size, hkv, D] logical; ragged: [total_kv, hkv, D]
  const void* v_cache;
  int64_t k_stride_page, k_stride_entry, k_stride_head;
  int64_t v_stride_page, v_stride_entry, v_stride_head;
  const int32_t* qo_indptr;      // [batch + 1]
  const int32_t* kv_indptr;      // [batch + 1]: page entries (paged) or rows (ragged)
  const int32_t* indices;        // paged only
  const int32_t* last_page_len;  // paged only
  const uint8_t* mask;           // packed custom mask (bit order little), or null
  const int32_t* mask_indptr;    // [batch + 1]: first byte of each request's [qo_len, kv_len] bit matrix
  int64_t mask_bytes;            // bits past the end of the mask count as masked
  int64_t total_q, num_indices, num_pages;  // ragged: num_indices is the number of KV rows
  int batch, hq, hkv, page_size;
  FastDiv page_div;
  void* out;                     // [total_q, hq, D], q's dtype
  float* lse;                    // [total_q, hq], log2
  float sm_scale, logits_soft_cap, k_scale, v_scale;
  int window_left;               // -1: none
  bool causal;
};

constexpr int kThreads = 128;
constexpr int kRows = 64;  // packed query rows per block
constexpr int kTile = 32;  // KV tokens per stage (32 measured 9% faster than 64 on the H100)
constexpr float kLog2e = 1.4426950408889634f;

__host__ __device__ constexpr int stages(int head_dim) { return head_dim == 256 ? 2 : head_dim == 128 ? 2 : 3; }
__host__ __device__ constexpr size_t smem_bytes(int head_dim) {
  return (size_t)stages(head_dim) * 2 * kTile * head_dim * 2 + (size_t)kRows * head_dim * 2 +
         (size_t)stages(head_dim) * kTile * 4;
}
// Upper bound of sum_b ceil(qo_len_b * group / kRows) from shapes alone.
inline int64_t max_row_tiles(int64_t total_q, int64_t batch, int64_t group) {
  return (total_q * group + kRows - 1) / kRows + batch;
}

// Request b's KV length and first page entry (paged) or row (ragged), with every table read guarded.
template <bool kRagged>
__device__ __forceinline__ void kv_extent(const Params& p, int b, int64_t& start, int64_t& len) {
  start = max((int64_t)p.kv_indptr[b], (int64_t)0);
  const int64_t end = min((int64_t)p.kv_indptr[b + 1], p.num_indices);
  const int64_t n = end - start;
  if constexpr (kRagged) {
    len = max(n, (int64_t)0);
  } else {
    len = n > 0 ? min(max((n - 1) * p.page_size + p.last_page_len[b], (int64_t)0), n * p.page_size) : 0;
  }
}

__device__ __forceinline__ int64_t qo_start(const Params& p, int b) {
  return min(max((int64_t)p.qo_indptr[b], (int64_t)0), p.total_q);
}

template <typename T, int D, bool kRagged, bool kMask>
__global__ void __launch_bounds__(kThreads) prefill_kernel(Params p) {
  constexpr int kStages = stages(D);
  constexpr int kNT = D / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  T* k_s = reinterpret_cast<T*>(smem);                         // [kStages][kTile][D], swizzled
  T* v_s = k_s + kStages * kTile * D;
  T* q_s = v_s + kStages * kTile * D;                           // [kRows][D], swizzled
  int* valid_s = reinterpret_cast<int*>(q_s + kRows * D);       // [kStages][kTile]
  __shared__ int sched[2];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int kvh = blockIdx.y, group = p.hq / p.hkv;

  // Which (request, row tile) this block serves: a running sum of tiles per request, 32 requests a step.
  if (warp == 0) {
    int64_t remaining = blockIdx.x;
    int found_b = -1, found_t = 0;
    for (int base = 0; base < p.batch && found_b < 0; base += 32) {
      const int b = base + lane;
      int64_t tiles = 0;
      if (b < p.batch) {
        const int64_t qlen = max(qo_start(p, b + 1) - qo_start(p, b), (int64_t)0);
        tiles = (qlen * group + kRows - 1) / kRows;
      }
      int64_t incl = tiles;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const int64_t x = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += x;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, incl > remaining && tiles > 0);
      if (hit) {
        const int l = __ffs(hit) - 1;
        const int64_t before = __shfl_sync(0xffffffffu, incl - tiles, l);
        const int64_t count = __shfl_sync(0xffffffffu, tiles, l);
        found_b = base + l;
        found_t = (int)(count - 1 - (remaining - before));  // last tiles (most KV under causal) first
      } else {
        remaining -= __shfl_sync(0xffffffffu, incl, 31);
      }
    }
    if (lane == 0) sched[0] = found_b, sched[1] = found_t;
  }
  __syncthreads();
  const int b = sched[0], tile_q = sched[1];
  if (b < 0) return;

  const int64_t q0 = qo_start(p, b), qo_len = qo_start(p, b + 1) - q0;
  int64_t kv_start, kv_len;
  kv_extent<kRagged>(p, b, kv_start, kv_len);
  const int64_t j_off = kv_len - qo_len;  // bottom-right alignment: query i sees keys j <= j_off + i
  const int64_t row0 = (int64_t)tile_q * kRows;
  const int64_t i_first = row0 / group, i_last = min(qo_len - 1, (row0 + kRows - 1) / group);
  int64_t lo = 0, hi = kv_len;
  if (p.causal) hi = min(hi, max(j_off + i_last + 1, (int64_t)0));
  if (p.window_left >= 0) lo = min(hi, max((int64_t)0, j_off + i_first - p.window_left));
  Slice sl;
  sl.start = kv_start, sl.len = kv_len, sl.t0 = lo, sl.t1 = hi;
  sl.ntiles = hi > lo ? (int)((hi - lo + kTile - 1) / kTile) : 0;

  TileLoader<Params, T, D, kTile, kThreads, true, kRagged> loader(p, sl, kvh);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    loader.find(s);
    if (s < sl.ntiles) loader.issue(k_s, v_s, valid_s, s);
    cp_async_commit();
  }
  loader.find(kStages - 1);

  // The query tile: packed row r -> token i = (row0 + r) / group, head kvh * group + (row0 + r) % group.
  for (int c = tid; c < kRows * (D / 8); c += kThreads) {
    const int r = c / (D / 8), ch = c % (D / 8);
    const int64_t pr = row0 + r, i = pr / group;
    Vec<T, 8> v;
    if (i < qo_len) {
      const T* src = static_cast<const T*>(p.q) + (q0 + i) * p.q_stride_n +
                     (int64_t)(kvh * group + (int)(pr % group)) * p.q_stride_h + ch * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) v.v[j] = src[j];
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v.v[j] = from_float<T>(0.f);
    }
    v.store(q_s + swizzle<D>(r, ch));
  }

  const bool cap = p.logits_soft_cap > 0.f;
  const float qk_scale = p.sm_scale * p.k_scale * (cap ? 1.f : kLog2e);
  const float cap_scale = p.logits_soft_cap * kLog2e, inv_cap = cap ? 1.f / p.logits_soft_cap : 0.f;
  // This thread's two rows (lane / 4 and lane / 4 + 8 of its warp) and their query tokens.
  int64_t qi[2];
  bool row_ok[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    qi[r] = (row0 + warp * 16 + lane / 4 + 8 * r) / group;
    row_ok[r] = qi[r] < qo_len;
  }
  int64_t mask_bit0 = 0;
  if constexpr (kMask) mask_bit0 = (int64_t)max(p.mask_indptr[b], 0) * 8;
  float o[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  // Query fragments stay in registers when they fit (head_dim <= 128); head_dim 256 reads them per tile.
  constexpr bool kQInRegs = D <= 128;
  uint32_t qa[kQInRegs ? D / 16 : 1][4];
  __syncthreads();
  if constexpr (kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[kk], q_s + swizzle<D>(warp * 16 + lane % 16, kk * 2 + lane / 16));
  }
  // The first and last query token of this warp's rows: a tile every row sees whole needs no per-element mask.
  const int64_t warp_i0 = (row0 + warp * 16) / group, warp_i1 = (row0 + warp * 16 + 15) / group;

  for (int tile = 0; tile < sl.ntiles; ++tile) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    // Every token of the tile on a readable page and inside the slice (the common case)?
    const bool all_valid = __syncthreads_and(valid_s[(tile % kStages) * kTile + tid % kTile]);
    if (tile + kStages - 1 < sl.ntiles) loader.issue(k_s, v_s, valid_s, (tile + kStages - 1) % kStages);
    cp_async_commit();
    loader.find(tile + kStages);
    const int stage = tile % kStages;
    const T* kt = k_s + stage * kTile * D;
    const T* vt = v_s + stage * kTile * D;
    const int64_t j0 = lo + (int64_t)tile * kTile;

    constexpr int kSN = kTile / 8;  // n-tiles of S
    float s[kSN][4];
#pragma unroll
    for (int nt = 0; nt < kSN; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a_smem[4];
      if constexpr (!kQInRegs) ldmatrix_x4(a_smem, q_s + swizzle<D>(warp * 16 + lane % 16, kk * 2 + lane / 16));
      const uint32_t(&a)[4] = kQInRegs ? qa[kQInRegs ? kk : 0] : a_smem;
#pragma unroll
      for (int nb = 0; nb < kTile / 16; ++nb) {
        uint32_t bk[4];
        ldmatrix_x4(bk, kt + swizzle<D>(nb * 16 + (lane / 16) * 8 + lane % 8, kk * 2 + (lane / 8) % 2));
        mma_16816<T>(s[2 * nb], a, bk[0], bk[1]);
        mma_16816<T>(s[2 * nb + 1], a, bk[2], bk[3]);
      }
    }
    // Per-element masks only where some element of the warp's 16 x 64 block can be masked out; rows past the
    // request are never written, so they need no mask.
    const bool whole = all_valid && !kMask && (!p.causal || j0 + kTile - 1 <= j_off + warp_i0) &&
                       (p.window_left < 0 || j0 >= j_off + warp_i1 - p.window_left);
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kSN; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i / 2;
        float x = s[nt][i] * qk_scale;
        if (cap) x = cap_scale * tanhf(x * inv_cap);
        if (!whole) {
          const int tok = nt * 8 + 2 * (lane % 4) + (i % 2);
          const int64_t j = j0 + tok;
          bool ok = row_ok[r] && valid_s[stage * kTile + tok];
          if (p.causal) ok = ok && j <= j_off + qi[r];
          if (p.window_left >= 0) ok = ok && j >= j_off + qi[r] - p.window_left;
          if constexpr (kMask) {
            const int64_t bit = mask_bit0 + qi[r] * kv_len + j;
            ok = ok && bit < p.mask_bytes * 8 && ((p.mask[bit >> 3] >> (bit & 7)) & 1);
          }
          x = ok ? x : -INFINITY;
        }
        s[nt][i] = x;
        mx[r] = fmaxf(mx[r], x);
      }
    float scale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      scale[r] = mx[r] == -INFINITY ? 1.f : fast_exp2(m[r] - mx[r]);
      m[r] = mx[r];
      l[r] *= scale[r];
    }
#pragma unroll
    for (int nt = 0; nt < kSN; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float mr = mx[i / 2];
        s[nt][i] = mr == -INFINITY ? 0.f : fast_exp2(s[nt][i] - mr);
        l[i / 2] += s[nt][i];
      }
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      o[n][0] *= scale[0], o[n][1] *= scale[0];
      o[n][2] *= scale[1], o[n][3] *= scale[1];
    }
#pragma unroll
    for (int kt2 = 0; kt2 < kTile / 16; ++kt2) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kt2][0], s[2 * kt2][1]), pack2<T>(s[2 * kt2][2], s[2 * kt2][3]),
                              pack2<T>(s[2 * kt2 + 1][0], s[2 * kt2 + 1][1]),
                              pack2<T>(s[2 * kt2 + 1][2], s[2 * kt2 + 1][3])};
#pragma unroll
      for (int n = 0; n < kNT; n += 2) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, vt + swizzle<D>(kt2 * 16 + ((lane / 8) % 2) * 8 + lane % 8, n + lane / 16));
        mma_16816<T>(o[n], pa, bv[0], bv[1]);
        mma_16816<T>(o[n + 1], pa, bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Each row is complete in its warp: normalise and write.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    if (!row_ok[r]) continue;
    const int64_t pr = row0 + warp * 16 + lane / 4 + 8 * r;
    const int h = kvh * group + (int)(pr % group);
    const int64_t orow = (q0 + qi[r]) * p.hq + h;
    const float inv = l[r] > 0.f ? p.v_scale / l[r] : 0.f;
    T* dst = static_cast<T*>(p.out) + orow * D + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      dst[n * 8] = from_float<T>(o[n][2 * r] * inv);
      dst[n * 8 + 1] = from_float<T>(o[n][2 * r + 1] * inv);
    }
    if (lane % 4 == 0) p.lse[orow] = l[r] > 0.f ? m[r] + log2f(l[r]) : -INFINITY;
  }
}

template <typename T, int D, bool kRagged, bool kMask>
cudaError_t launch_one(const Params& p, cudaStream_t stream) {
  constexpr size_t smem = smem_bytes(D);
  auto* kernel = prefill_kernel<T, D, kRagged, kMask>;
  // Above 48 KiB of dynamic shared memory a kernel must opt in (per device, so on every launch; it is cheap).
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  const int64_t tiles = max_row_tiles(p.total_q, p.batch, p.hq / p.hkv);
  kernel<<<dim3((unsigned)tiles, p.hkv), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D, bool kRagged>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  if (p.batch == 0 || p.total_q == 0 || p.hq == 0) return cudaSuccess;
  return p.mask ? launch_one<T, D, kRagged, true>(p, stream) : launch_one<T, D, kRagged, false>(p, stream);
}

}  // namespace prefill
}  // namespace flashinfer

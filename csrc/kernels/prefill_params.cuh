// Parameters and launch geometry of the batch prefill kernel (prefill.cuh): the Params a launch fills in, the tile
// shape and shared memory per head_dim, the grid bound and the KV split count, all from shapes alone; and the
// kernel's guarded readers of the request tables and the packed mask. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/fastdiv.cuh"

namespace flashinfer {
namespace prefill {

struct Params {
  const void* q;                 // [total_q, hq, head_dim] through q_stride_n / q_stride_h; rows 16-byte aligned
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
  FastDiv group_div;             // by hq / hkv: a packed row to its (token, head); rows < 2^31 (the adapter checks)
  void* out;                     // [total_q, hq, D], q's dtype
  float* lse;                    // [total_q, hq], log2
  int num_splits;                // KV splits per row tile (grid z)
  float* tmp_o;                  // [num_splits, total_q, hq, D]: normalised partials (num_splits > 1)
  float* tmp_lse;                // [num_splits, total_q, hq]
  float sm_scale, logits_soft_cap, k_scale, v_scale;
  int window_left;               // -1: none
  bool causal;
  bool rope;                     // ROPE_LLAMA: q at kv_len - qo_len + i, k at its index in the request
  float rope_rcp_scale, rope_log2_theta;
};

constexpr int kWarps = 4;  // a block's warps (eight at head_dim 256: warps())

// mma M tiles (16 rows each) per warp. Two halve the shared-memory reads per mma; head_dim 256 keeps one, since
// its output accumulators alone would fill the register file at two. (wgmma: a warp's 16 rows of each of its
// warpgroup's m_tiles 64-row tiles; the same count of rows and accumulators.)
__host__ __device__ constexpr int m_tiles(int head_dim) { return head_dim == 256 ? 1 : 2; }
// Warps per block: eight at head_dim 256, where a warp holds one row tile, so a block still covers 128 rows and
// each K/V tile it loads serves as many queries as at head_dim 128 (with 64-token tiles, 2-8% faster than four
// warps over 32-token tiles, H200; 3% slower on a small split launch).
__host__ __device__ constexpr int warps(int head_dim) { return head_dim == 256 ? 2 * kWarps : kWarps; }
__host__ __device__ constexpr int block_threads(int head_dim) { return 32 * warps(head_dim); }
__host__ __device__ constexpr int block_rows(int head_dim) { return warps(head_dim) * 16 * m_tiles(head_dim); }
// KV tokens per pipeline stage. At D 128, 64-token tiles in two stages beat 32 in three (H200, benchmarks/micro:
// 1 x 8192 causal 294 -> 309 TFLOP/s, custom mask 139 -> 163): half the barriers and softmax passes per token;
// at D 256 with eight warps, 64 beat 32 by 6-8% on long requests.
__host__ __device__ constexpr int kv_tile(int head_dim) { return 64; }
__host__ __device__ constexpr int stages(int head_dim) { return head_dim == 64 ? 3 : 2; }
// What the block's scheduling scan hands every warp: its request and row tile (b < 0: no tile), and the
// request's extents.
struct BlockTile {
  int64_t q_begin, q_len, kv_begin, kv_len;
  int b, tile;
};
// The K/V stages (kv_bytes per element), for fp8 KV the 16-bit K and V tile each stage is converted into, the
// query tile, token validity per stage, the BlockTile. Nothing is static: a static variable sits in front of the
// dynamic region, which wgmma needs 1024-aligned, and its padding put two head_dim 128 blocks past the 196 KiB
// shared-memory carveout (H100/H200) into the 228 KiB one, which leaves L1 28 KiB instead of 60 (H200: the
// mma.sync mainloop 6-7% slower, 20% with a custom mask).
__host__ __device__ constexpr size_t smem_bytes(int head_dim, int kv_bytes) {
  return (size_t)stages(head_dim) * 2 * kv_tile(head_dim) * head_dim * kv_bytes +
         (kv_bytes == 2 ? 0 : (size_t)2 * kv_tile(head_dim) * head_dim * 2) +
         (size_t)block_rows(head_dim) * head_dim * 2 + (size_t)stages(head_dim) * kv_tile(head_dim) * 4 +
         sizeof(BlockTile);
}
// Upper bound of sum_b ceil(qo_len_b * group / rows) from shapes alone.
inline int64_t max_row_tiles(int64_t total_q, int64_t batch, int64_t group, int rows) {
  return (total_q * group + rows - 1) / rows + batch;
}
constexpr int kMaxSplits = 64;
// A split is worth its extra query-tile load and partial write only with this many KV tokens to read.
constexpr int64_t kMinSplitTokens = 256;
// KV splits for `blocks` row-tile blocks (estimated from the query rows) over a KV of about `kv_per_request`
// tokens (cache rows over batch: an upper bound from shapes), with `resident` blocks resident on the GPU at once:
// as many as keep the launch to one wave, none shorter than kMinSplitTokens. From one full wave on, the blocks'
// uneven lengths already balance the GPU and a split only adds its partial traffic (measured: 4 x 256 over 8192
// tokens, 256 blocks, takes 521 us unsplit and 528 / 550 us with 2 / 4 splits).
inline int choose_splits(int64_t blocks, int64_t resident, int64_t kv_per_request) {
  if (blocks <= 0 || blocks * 2 > resident) return 1;
  const int64_t most = std::min<int64_t>(kMaxSplits, kv_per_request / kMinSplitTokens);
  return (int)std::max<int64_t>(1, std::min<int64_t>(most, resident / blocks));
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

// Bits 0 .. n - 1 set (none for n <= 0, all for n >= 64).
__device__ __forceinline__ uint64_t low_bits(int64_t n) {
  return n <= 0 ? 0ull : n >= 64 ? ~0ull : (1ull << n) - 1;
}

// The custom-mask bits of kTile consecutive keys from bit `start` of the packed mask, bit k of the result for key
// k: kTile / 8 + 1 byte loads per query row and tile, in place of one load and a 64-bit index per score. Bytes past
// mask_bytes read as zero (masked).
template <int kTile>
__device__ __forceinline__ uint64_t mask_window(const Params& p, int64_t start) {
  const int64_t byte0 = start >> 3;
  const int sh = (int)(start & 7);
  uint64_t w = 0;
#pragma unroll
  for (int k = 0; k <= kTile / 8; ++k) {
    const int64_t idx = byte0 + k;
    const uint64_t byte = idx < p.mask_bytes ? p.mask[idx] : 0;
    if (k < kTile / 8) w |= byte << (8 * k);
    else if (sh) w = (w >> sh) | byte << (kTile - sh);
  }
  return w;
}

}  // namespace prefill
}  // namespace flashinfer

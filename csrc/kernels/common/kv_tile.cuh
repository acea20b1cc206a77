// K/V tiles of a paged (or ragged) KV cache streamed into shared memory: the block-level piece every attention
// kernel shares. Torch-free. P is the kernel's parameter struct; it names the cache, strides and page tables the
// same way in every family (k_cache, v_cache, k_stride_page/entry/head, v_..., indices, num_pages, page_div).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cp_async.cuh"
#include "mma.cuh"
#include "vec.cuh"
#include "wgmma.cuh"

namespace flashinfer {

// The KV tokens [t0, t1) one block owns, cut in ntiles tiles; start is the first kv_indices entry (paged) or the
// first row (ragged) of the request.
struct Slice {
  int64_t start;
  int64_t len;     // tokens in the request
  int64_t t0, t1;  // this block's tokens
  int ntiles;
};

// Streams K and V tiles of kTile tokens of one kv head into shared memory with cp.async, 16 bytes per copy (8 16-bit
// or 16 fp8 elements: fp8 tiles take half the copies and page lookups per byte that 8-element copies would). Thread
// tid copies chunk tid % kChunks of token rows tid / kChunks + i * kRowsPerStep, i < kLoads. A load is two steps,
// one pipeline iteration apart, so the page-table reads of the next tile overlap the compute of this one: find()
// starts reading pages into registers, issue() checks them and starts the copies. Tokens past the slice or on a page
// outside the cache are zero-filled (and, paged, flagged invalid), so no read ever leaves the cache. Positions are
// 32-bit: t < len <= num_indices * page_size < 2^31 (checked by the adapter). kSwizzle lays rows out for ldmatrix
// (swizzle(), or swizzle_fp8() for 1-byte KV, in common/mma.cuh; with kWgLayout as wgmma reads it: tile_swizzle() in
// common/wgmma.cuh). kRagged reads a contiguous KV tensor instead of pages: token t of the slice is row s.start + t
// (p.k_stride_page is then unused), so a thread's rows of a tile lie kRowsPerStep rows apart and each copy's address
// is the last one's plus a fixed step: no lookup, no shuffle, no select in a tile that lies inside the slice, and no
// validity flags (every row of the slice is readable; the kernel tests the slice end itself). Against the shared
// lookups the paged form uses, that halves the loader's instructions a tile (bf16 D 128 prefill on mma.sync: 92
// against 184 a thread) and made prefill over ragged KV 4.5-12% faster on both mainloops (H200, benchmarks/micro;
// custom masks 0.5-10%). The page and entry strides are below 2^31 (checked by the adapter), so each offset is two
// 32 x 32 -> 64-bit multiply-adds.
//
// Who looks up a row's page: without kShareLookups every thread looks up each of its kLoads rows, so the kChunks
// threads of a row repeat the same page-table read, division and offset products. With it, each lane of a warp looks
// up one of the warp's kLoads * kWarpRows rows and the copies take its byte offsets by shuffle: one lookup per token,
// and kLoads - 1 fewer live lookups per thread (bf16 D 128 decode: 224 -> 176 registers). Each kernel picks the form
// its benchmarks favour. A row-major split (the kThreads / kTile threads of a token row copy its chunks, so each
// thread looks up its one row) halved the loader's instructions yet made prefill 6-21% slower on both mainloops at
// every shape but wgmma's head_dim 256 (H200), likely because one warp-wide copy then touches 16 rows, 32 bytes of
// each, where this layout's touches 2 rows of 256 contiguous bytes.
template <typename P, typename KV, int D, int kTile, int kThreads, bool kSwizzle, bool kRagged = false,
          bool kShareLookups = false, bool kWgLayout = false>
struct TileLoader {
  static constexpr int kElems = 16 / sizeof(KV);  // elements per copy
  static constexpr int kChunks = D / kElems;       // copies per token row
  static constexpr int kLoads = kTile * kChunks / kThreads;
  static constexpr int kRowsPerStep = kThreads / kChunks;
  static constexpr int kWarpRows = 32 / kChunks;  // rows a warp copies per step
  static constexpr int kLookups = kShareLookups ? 1 : kLoads;
  static_assert(kTile * kChunks % kThreads == 0, "whole copies per thread");
  static_assert(kThreads % kChunks == 0, "a thread copies the same chunk of every row it loads");
  static_assert(!kShareLookups || (32 % kChunks == 0 && kLoads * kWarpRows <= 32), "a lane looks up one whole row");
  // Whether copy() hides the bases from the compiler (see there), where that measured faster: with shared lookups, on
  // the wgmma layout and at head_dim 128 (H200, benchmarks/micro: prefill mma.sync D 128 +0.7-1.5%, +4.3% with RoPE,
  // wgmma D 256 +3.9%, decode_tc D 128 level to +1.3%; mma.sync D 64 and D 256 1-4% slower, D 64 with a custom mask
  // then spilling).
  static constexpr bool kOpaqueBases = kShareLookups && (kWgLayout || D == 128);
  // This thread's chunk of kv head kvh in entry 0 of page 0; ragged: in its first row of the slice's first tile.
  const KV* k_base;
  const KV* v_base;
  const P& p;
  const Slice& s;
  int dst0;  // this thread's shared-memory offset (elements) in its first row of a stage
  int page_of[kLookups], entry_of[kLookups];  // paged: page (-1: nothing to read) and entry
  int next_ = 0;                               // ragged: the tile find() named

  static_assert(!kWgLayout || (kSwizzle && sizeof(KV) == 2), "the wgmma layout is a 16-bit swizzled one");
  static constexpr int kRowStride = kWgLayout ? 64 : D;  // elements from a row to the next (within a slab)

  __device__ __forceinline__ static int tile_offset(int tok, int ch) {
    if constexpr (!kSwizzle) return tok * D + ch * kElems;
    else if constexpr (sizeof(KV) == 1) return swizzle_fp8<D>(tok, ch);
    else return tile_swizzle<kWgLayout, D, kTile>(tok, ch);
  }

  // Tile row of lookup j of this thread. Shared: lane l of a warp takes row l % kWarpRows of the warp's step
  // l / kWarpRows, so the copies of step i read lane i * kWarpRows + lane / kChunks.
  __device__ __forceinline__ static int lookup_row(int j) {
    const int lane = threadIdx.x % 32;
    if constexpr (kShareLookups)
      return (int)(threadIdx.x / 32) * kWarpRows + lane / kWarpRows * kRowsPerStep + lane % kWarpRows;
    else return (int)threadIdx.x / kChunks + j * kRowsPerStep;
  }

  __device__ __forceinline__ TileLoader(const P& params, const Slice& slice, int kvh)
      : k_base(static_cast<const KV*>(params.k_cache) + kvh * params.k_stride_head + threadIdx.x % kChunks * kElems +
               (kRagged ? first_row(slice) * (int32_t)params.k_stride_entry : 0)),
        v_base(static_cast<const KV*>(params.v_cache) + kvh * params.v_stride_head + threadIdx.x % kChunks * kElems +
               (kRagged ? first_row(slice) * (int32_t)params.v_stride_entry : 0)),
        p(params),
        s(slice),
        dst0(tile_offset(threadIdx.x / kChunks, threadIdx.x % kChunks)) {}

  // Ragged: this thread's first row of the slice, as a row of the KV tensor. In 32 bits (in 64 the masked kernels
  // spill more): start + t0 <= the rows <= 2^31 - 257 (checked by the adapter), plus fewer than a tile's rows.
  __device__ __forceinline__ static int64_t first_row(const Slice& sl) {
    return (int)(sl.start + sl.t0) + (int)threadIdx.x / kChunks;
  }

  __device__ __forceinline__ void find(int tile) {
    if constexpr (kRagged) next_ = tile;
    else lookup(tile, page_of, entry_of);
  }

  __device__ __forceinline__ void issue(KV* k_s, KV* v_s, int* valid_s, int stage) const {
    if constexpr (kRagged) copy_ragged(next_, k_s, v_s, stage);
    else copy(page_of, entry_of, k_s, v_s, valid_s, stage);
  }

  // The pipeline's first kStages - 1 tiles, one commit group each, then the lookup of tile kStages - 1. Every
  // page-table read is written before the first copy: cp.async carries a memory clobber, so the compiler keeps a read
  // written after a copy after it, and alternating find() and issue() would wait one trip to memory per stage. (ptxas
  // may still sink a read below copies that do not need it: decode_tc at D 128 keeps one trip per stage.)
  template <int kStages>
  __device__ __forceinline__ void prologue(KV* k_s, KV* v_s, int* valid_s) {
    if constexpr (kRagged) {
#pragma unroll
      for (int st = 0; st < kStages - 1; ++st) {
        if (st < s.ntiles) copy_ragged(st, k_s, v_s, st);
        cp_async_commit();
      }
      find(kStages - 1);
    } else {
      int page[kStages - 1][kLookups], entry[kStages - 1][kLookups];
#pragma unroll
      for (int st = 0; st < kStages - 1; ++st) lookup(st, page[st], entry[st]);
      find(kStages - 1);
#pragma unroll
      for (int st = 0; st < kStages - 1; ++st) {
        if (st < s.ntiles) copy(page[st], entry[st], k_s, v_s, valid_s, st);
        cp_async_commit();
      }
    }
  }

 private:
  __device__ __forceinline__ void lookup(int tile, int (&page)[kLookups], int (&entry)[kLookups]) const {
#pragma unroll
    for (int j = 0; j < kLookups; ++j) {
      const uint32_t t = (uint32_t)(s.t0 + (int64_t)tile * kTile) + lookup_row(j);
      const bool mine = !kShareLookups || (int)(threadIdx.x % 32) < kLoads * kWarpRows;
      const bool in = mine && tile < s.ntiles && t < (uint32_t)s.t1;
      const uint32_t pi = p.page_div.div(t);
      // The page is checked against the cache in issue(), an iteration later: testing it here would stall the warp
      // on this load at every tile.
      page[j] = in ? p.indices[s.start + pi] : -1;
      entry[j] = (int)p.page_div.mod(t, pi);
    }
  }

  // Shared-memory offset (elements) of copy i of this thread in a stage.
  __device__ __forceinline__ int dst_of(int stage, int i) const {
    // Rows kRowsPerStep apart share their swizzle when that is a multiple of its 8-row period.
    const int in_stage = kRowsPerStep % 8 == 0 || !kSwizzle
                             ? dst0 + i * kRowsPerStep * kRowStride
                             : tile_offset((int)threadIdx.x / kChunks + i * kRowsPerStep, threadIdx.x % kChunks);
    return stage * kTile * D + in_stage;
  }

  // Ragged: tile `tile` (< s.ntiles) of the slice. A tile that ends inside the slice (all but a slice's last) copies
  // every row unconditionally; the last one zero-fills the rows past s.t1 (their copies name the cache's first
  // element, as the paged form's do, and read nothing).
  __device__ __forceinline__ void copy_ragged(int tile, KV* k_s, KV* v_s, int stage) const {
    const KV* k = k_base + (int64_t)(tile * kTile) * (int32_t)p.k_stride_entry;
    const KV* v = v_base + (int64_t)(tile * kTile) * (int32_t)p.v_stride_entry;
    const int64_t k_step = (int64_t)kRowsPerStep * (int32_t)p.k_stride_entry;
    const int64_t v_step = (int64_t)kRowsPerStep * (int32_t)p.v_stride_entry;
    const int left = (int)(s.t1 - s.t0) - tile * kTile - (int)threadIdx.x / kChunks;  // rows of the slice from mine
    auto rows = [&](auto inside) {
#pragma unroll
      for (int i = 0; i < kLoads; ++i) {
        const bool ok = inside || i * kRowsPerStep < left;
        const int dst = dst_of(stage, i);
        cp_async<16>(k_s + dst, ok ? k : static_cast<const KV*>(p.k_cache), ok);
        cp_async<16>(v_s + dst, ok ? v : static_cast<const KV*>(p.v_cache), ok);
        k += k_step, v += v_step;
      }
    };
    if (s.t0 + (int64_t)(tile + 1) * kTile <= s.t1) rows(std::true_type{});
    else rows(std::false_type{});
  }

  __device__ __forceinline__ void copy(const int (&page)[kLookups], const int (&entry)[kLookups], KV* k_s, KV* v_s,
                                      int* valid_s, int stage) const {
    // Element offsets of each looked-up row from k_base / v_base; a row that is not readable reads nothing.
    int64_t k_off[kLookups], v_off[kLookups];
    bool ok[kLookups];
#pragma unroll
    for (int j = 0; j < kLookups; ++j) {
      ok[j] = page[j] >= 0 && page[j] < p.num_pages;
      const int pg = ok[j] ? page[j] : 0, ent = ok[j] ? entry[j] : 0;
      k_off[j] = (int64_t)ent * (int32_t)p.k_stride_entry;
      v_off[j] = (int64_t)ent * (int32_t)p.v_stride_entry;
      k_off[j] += (int64_t)pg * (int32_t)p.k_stride_page;
      v_off[j] += (int64_t)pg * (int32_t)p.v_stride_page;
    }
    // The bases as values the compiler cannot take apart: otherwise it re-associates base + row offset as the cache's
    // (uniform) address + (this thread's offset + the row's), four instructions a copy address instead of two.
    const KV* kb = k_base;
    const KV* vb = v_base;
    if constexpr (kOpaqueBases) asm("" : "+l"(kb), "+l"(vb));
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      int64_t ko, vo;
      bool rok;
      if constexpr (kShareLookups) {
        const int src = i * kWarpRows + lane / kChunks;
        ko = __shfl_sync(0xffffffffu, k_off[0], src), vo = __shfl_sync(0xffffffffu, v_off[0], src);
        rok = __shfl_sync(0xffffffffu, ok[0], src);
      } else {
        ko = k_off[i], vo = v_off[i], rok = ok[i];
      }
      const int dst = dst_of(stage, i);
      cp_async<16>(k_s + dst, kb + ko, rok);
      cp_async<16>(v_s + dst, vb + vo, rok);
    }
    // The thread that looked a row up flags it (once per row: without sharing, the thread copying chunk 0).
#pragma unroll
    for (int j = 0; j < kLookups; ++j)
      if (kShareLookups ? lane < kLoads * kWarpRows : threadIdx.x % kChunks == 0)
        valid_s[stage * kTile + lookup_row(j)] = ok[j];
  }
};

// Two fp8 values (the low 16 bits of x) to f16, exactly: both fp8 formats fit f16's range and precision.
template <typename KV>
__device__ __forceinline__ __half2_raw fp8x2_to_f16x2(uint32_t x) {
  constexpr __nv_fp8_interpretation_t kind = std::is_same_v<KV, __nv_fp8_e4m3> ? __NV_E4M3 : __NV_E5M2;
  return __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(x & 0xffffu), kind);
}

// One staged fp8 tile of kTile tokens (rows of D, unswizzled) to 16-bit rows laid out for ldmatrix (or, kWgLayout,
// for wgmma), by a block of kThreads threads. fp8 -> half is exact (fp8x2_to_f16x2), and so is half -> bf16 for
// these values; the scales stay out of the conversion (k_scale goes into the scores, v_scale into the output).
template <typename T, typename KV, int D, int kTile, int kThreads, bool kWgLayout = false>
__device__ __forceinline__ void convert_tile(const KV* src, T* dst) {
  for (int c = threadIdx.x; c < kTile * (D / 8); c += kThreads) {
    const int tok = c / (D / 8), ch = c % (D / 8);
    const uint2 raw = *reinterpret_cast<const uint2*>(src + tok * D + ch * 8);
    const uint32_t words[2] = {raw.x, raw.y};
    Vec<T, 8> out;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2 h(fp8x2_to_f16x2<KV>(words[i / 2] >> (16 * (i % 2))));
      if constexpr (std::is_same_v<T, __half>) {
        out.v[2 * i] = __low2half(h), out.v[2 * i + 1] = __high2half(h);
      } else {
        const float2 f = __half22float2(h);
        out.v[2 * i] = __float2bfloat16_rn(f.x), out.v[2 * i + 1] = __float2bfloat16_rn(f.y);
      }
    }
    out.store(dst + tile_swizzle<kWgLayout, D, kTile>(tok, ch));
  }
}

}  // namespace flashinfer

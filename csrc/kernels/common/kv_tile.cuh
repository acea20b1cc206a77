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
// or 16 fp8 elements: fp8 tiles take half the copies and page lookups per byte that 8-element copies would). A load is
// two steps, one pipeline iteration apart, so the page-table reads of the next tile overlap the compute of this one:
// find() starts reading the pages of this thread's kLoads token rows into registers, issue() checks them and starts
// their copies. Tokens past the slice or on a page outside the cache are zero-filled and flagged invalid, so no read
// ever leaves the cache. Positions are 32-bit: t < len <= num_indices * page_size < 2^31 (checked by the adapter).
// kSwizzle lays rows out for ldmatrix (swizzle(), or swizzle_fp8() for 1-byte KV, in common/mma.cuh). kRagged reads a
// contiguous KV tensor instead of pages: token t of the slice is row s.start + t (p.k_stride_page is then unused).
// The page and entry strides are below 2^31 (checked by the adapter), so each offset is two 32 x 32 -> 64-bit
// multiply-adds.
template <typename P, typename KV, int D, int kTile, int kThreads, bool kSwizzle, bool kRagged = false>
struct TileLoader {
  static constexpr int kElems = 16 / sizeof(KV);  // elements per copy
  static constexpr int kChunks = D / kElems;       // copies per token row
  static constexpr int kLoads = kTile * kChunks / kThreads;
  static_assert(kTile * kChunks % kThreads == 0, "whole copies per thread");
  static_assert(kThreads % kChunks == 0, "a thread copies the same chunk of every row it loads");
  const KV* k_base;  // this thread's chunk of kv head kvh in entry 0 of page 0
  const KV* v_base;
  const P& p;
  const Slice& s;
  int page_of[kLoads], entry_of[kLoads];

  __device__ __forceinline__ TileLoader(const P& params, const Slice& slice, int kvh)
      : k_base(static_cast<const KV*>(params.k_cache) + kvh * params.k_stride_head + threadIdx.x % kChunks * kElems),
        v_base(static_cast<const KV*>(params.v_cache) + kvh * params.v_stride_head + threadIdx.x % kChunks * kElems),
        p(params),
        s(slice) {}

  __device__ __forceinline__ void find(int tile) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const uint32_t t = (uint32_t)(s.t0 + (int64_t)tile * kTile) + (threadIdx.x + i * kThreads) / kChunks;
      const bool in = tile < s.ntiles && t < (uint32_t)s.t1;
      if constexpr (kRagged) {
        page_of[i] = in ? 0 : -1;
        entry_of[i] = (int)(s.start + t);
      } else {
        const uint32_t pi = p.page_div.div(t);
        // The page is checked against the cache in issue(), an iteration later: testing it here would stall the
        // warp on this load at every tile.
        page_of[i] = in ? p.indices[s.start + pi] : -1;
        entry_of[i] = (int)p.page_div.mod(t, pi);
      }
    }
  }

  __device__ __forceinline__ void issue(KV* k_s, KV* v_s, int* valid_s, int stage) const {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      const int c = threadIdx.x + i * kThreads, tok = c / kChunks, ch = c % kChunks;
      const bool ok = page_of[i] >= 0 && page_of[i] < p.num_pages;
      const int pg = ok ? page_of[i] : 0, entry = ok ? entry_of[i] : 0;
      int dst = tok * D + ch * kElems;
      if constexpr (kSwizzle) dst = sizeof(KV) == 1 ? swizzle_fp8<D>(tok, ch) : swizzle<D>(tok, ch);
      dst += stage * kTile * D;
      int64_t k_off = (int64_t)entry * (int32_t)p.k_stride_entry, v_off = (int64_t)entry * (int32_t)p.v_stride_entry;
      if constexpr (!kRagged) {
        k_off += (int64_t)pg * (int32_t)p.k_stride_page;
        v_off += (int64_t)pg * (int32_t)p.v_stride_page;
      }
      cp_async<16>(k_s + dst, k_base + k_off, ok);
      cp_async<16>(v_s + dst, v_base + v_off, ok);
      if (ch == 0) valid_s[stage * kTile + tok] = ok;
    }
  }
};

// Two fp8 values (the low 16 bits of x) to f16, exactly: both fp8 formats fit f16's range and precision.
template <typename KV>
__device__ __forceinline__ __half2_raw fp8x2_to_f16x2(uint32_t x) {
  constexpr __nv_fp8_interpretation_t kind = std::is_same_v<KV, __nv_fp8_e4m3> ? __NV_E4M3 : __NV_E5M2;
  return __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(x & 0xffffu), kind);
}

// One staged fp8 tile of kTile tokens (rows of D, unswizzled) to 16-bit rows laid out for ldmatrix, by a block of
// kThreads threads. fp8 -> half is exact (fp8x2_to_f16x2), and so is half -> bf16 for these values; the scales
// stay out of the conversion (k_scale goes into the scores, v_scale into the output).
template <typename T, typename KV, int D, int kTile, int kThreads>
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
    out.store(dst + swizzle<D>(tok, ch));
  }
}

}  // namespace flashinfer

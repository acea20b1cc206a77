// Batch prefill attention on tensor cores, over a paged or a ragged KV cache, with two mainloops behind one
// scheduler, mask and epilogue: warpgroup wgmma where the build targets sm_90a, mma.sync m16n8k16 on every other
// target (sm_80+). Torch-free. Params, the tile shape per head_dim and the split count: prefill_params.cuh.
//
// Query rows are (token, head) pairs packed head-fastest: row r of request b is query token r / group, query head kvh *
// group + r % group, so a GQA group shares every K/V tile it loads. A block takes block_rows(D) packed rows of one
// request and one kv head: warps(D) warps, each owning m_tiles(D) mma M tiles of 16 rows, so every K/V fragment a warp
// reads from shared memory feeds m_tiles(D) mma. It walks the KV tokens its rows can see (causal and window limits cut
// the range) in tiles of kv_tile(D) tokens through a cp.async pipeline, with an online softmax per row in registers
// (log2 domain). Each warp owns its rows over the whole KV range, so there is no cross-warp merge. On wgmma every
// four warps are a warpgroup: each of its 64-row tiles gives a warp 16 rows (two tiles a warpgroup at head_dim 64
// and 128; at 256 one, and two warpgroups a block), both products read Q, K and V from shared memory in the 128-byte
// swizzled layout (common/wgmma.cuh), P comes from registers, and the softmax between them is the mma.sync one (the
// accumulator layouts agree). fp8 KV and ROPE_LLAMA take the same mainloop: their shared-memory passes write that
// layout.
//
// Scheduling is on the device: grid x is an upper bound of the number of row tiles over the batch (it depends
// only on shapes: total query tokens, batch, group); each block finds its (request, tile) by a warp scan of
// qo_indptr, and blocks past the last tile exit. Heavy tiles (late in a causal request) are handed out first, and
// in launch order the kv heads of one tile come side by side (grid y is not the kv head): with the heads as the
// outer order, the heavy tiles of the last heads started in the last wave and ran on alone.
//
// KV splits (grid z): when the row tiles alone cannot fill the GPU (few query tokens against a long KV: chunked
// prefill, a prefix-cached append), the launcher cuts every tile's KV range into num_splits runs of whole tiles,
// the count chosen from shapes only. Each split block writes its rows' normalised partial and log2-sum-exp to a
// workspace, and merge_kernel (prefill_merge.cuh), launched next, combines them into out and lse, a warp per row over
// the whole GPU.
// (Merging in the last split block of each tile, as decode does, left a tail of 30-60 us: 128 rows merged by one
// block while the rest of the GPU idles.)
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/block_trace.cuh"
#include "common/kv_tile.cuh"
#include "common/launch.cuh"
#include "common/pdl.cuh"
#include "common/rotary.cuh"
#include "common/softcap.cuh"
#include "common/vec.cuh"
#include "prefill_merge.cuh"
#include "prefill_params.cuh"

namespace flashinfer {
namespace prefill {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLazyMax = 8.f;  // log2 units the running max may lag the true one (see the softmax)

// Calls f(mi, nt, i) for every score a thread holds: row tile mi, n-tile nt, fragment element i (its row is i / 2
// of the thread's two, its token 2 * (lane % 4) + i % 2 of the n-tile). Unrolled: each pass of the softmax is one
// straight run of instructions.
template <int kM, int kSN, typename F>
__device__ __forceinline__ void for_each_score(F&& f) {
#pragma unroll
  for (int mi = 0; mi < kM; ++mi)
#pragma unroll
    for (int nt = 0; nt < kSN; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) f(mi, nt, i);
}

// T: q and out; KV: the cache, T or fp8. Each staged fp8 tile is converted to T in shared memory, once per block,
// before the mma read it: every warp reads the whole tile, so converting in registers (as decode_tc.cuh does, where
// each warp owns its own tokens) would convert each element once per warp. kRope: ROPE_LLAMA, a pass over the
// query tile and one over each K tile (a template flag, not a branch: the mere presence of the pass in the loop
// cost the kernel without RoPE 7%).
template <typename T, typename KV, int D, bool kRagged, bool kMask, bool kRope>
__global__ void __launch_bounds__(block_threads(D)) prefill_kernel(Params p) {
  constexpr int kBlockThreads = block_threads(D);
  constexpr int kStages = stages(D), kTile = kv_tile(D), kM = m_tiles(D), kRows = block_rows(D);
  constexpr int kNT = D / 8;      // n-tiles of the output
  constexpr int kSN = kTile / 8;  // n-tiles of S
  constexpr bool kConvert = !std::is_same_v<T, KV>;
  // sm_90a: the two products on wgmma, the tiles (fp8 KV: the converted ones) in its swizzled layout (swizzle_wg).
#if defined(FLASHINFER_WGMMA) && !defined(FLASHINFER_PREFILL_MMA_SYNC)  // the latter: to measure mma.sync on sm_90a
  constexpr bool kWg = true;
#else
  constexpr bool kWg = false;
#endif
  // Whether the full-tile test runs before the S product (else after it). At head_dim 256 on wgmma, where the
  // accumulators fill the register file, its inputs then die before S's registers come live: 5-6% faster there with
  // 16-bit KV on an H200 (benchmarks/micro); 1-2% slower at head_dim 128 and 8% slower on mma.sync at 256. The test is
  // written out at both places: as a lambda or helper it changed the code of every other instantiation.
  constexpr bool kWholeEarly = kWg && D == 256;
  // 1024 bytes: where wgmma's swizzle atoms start (every tile below is a multiple of 1024 bytes); the mma.sync
  // fragment addresses (SwizzledLane) need each tile on a multiple of a row.
  static_assert(kStages * kTile * D * sizeof(KV) % 1024 == 0 && kTile * D * sizeof(T) % 1024 == 0,
                "every tile starts on a 1024-byte boundary");  // the sizes of the tiles before it
  extern __shared__ __align__(1024) unsigned char smem[];
  KV* k_s = reinterpret_cast<KV*>(smem);                       // [kStages][kTile][D], swizzled when 16-bit
  KV* v_s = k_s + kStages * kTile * D;
  T* kc_s = reinterpret_cast<T*>(v_s + kStages * kTile * D);   // fp8 KV: the converted tiles [kTile][D], swizzled
  T* vc_s = kc_s + (kConvert ? kTile * D : 0);
  T* q_s = vc_s + (kConvert ? kTile * D : 0);                   // [kRows][D], swizzled
  int* valid_s = reinterpret_cast<int*>(q_s + kRows * D);       // [kStages][kTile]: paged KV only
  BlockTile* sched = reinterpret_cast<BlockTile*>(valid_s + kStages * kTile);

  BLOCK_TRACE_ENTRY();
  if constexpr (kWg) {
    if ((uint32_t)__cvta_generic_to_shared(smem) % 1024 != 0) __trap();  // the layout would read the wrong elements
  }
  // Publishes the block's shared-memory writes (cp.async copies, the fp8 conversion and RoPE passes) to every warp,
  // and on wgmma also to the async proxy its operand reads go through.
  auto publish = [] {
    if constexpr (kWg) fence_async_shared();
    __syncthreads();
  };
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Launch order within a split, in 32 bits (the launcher keeps the grid's x * y below 2^32): in 64 bits its
  // division, dead after the scheduler, still left the mma.sync mainloop 11 more spill reloads a KV tile.
  const uint32_t lin = blockIdx.x + blockIdx.y * gridDim.x;
  const int kvh = (int)(lin % (uint32_t)p.hkv), group = p.hq / p.hkv;
  // Trigger at entry: a prefill launch is many waves, and its successor gets in only once the last wave has begun
  // either way; with the trigger after the tile loop, as decode has it, chained launches ran level (H200, micro).
  pdl_enter();

  // Which (request, row tile) this block serves: a running sum of tiles per request, 32 requests a step. Each lane
  // reads its request's KV extent beside its query extent, so the block starts with both (one dependent trip to
  // memory fewer before the first page lookup).
  if (warp == 0) {
    int64_t remaining = lin / (uint32_t)p.hkv;
    int found_b = -1, found_t = 0;
    for (int base = 0; base < p.batch && found_b < 0; base += 32) {
      const int b = base + lane;
      int64_t tiles = 0, q_begin = 0, q_len = 0, k_begin = 0, k_len = 0;
      if (b < p.batch) {
        q_begin = qo_start(p, b);
        q_len = max(qo_start(p, b + 1) - q_begin, (int64_t)0);
        kv_extent<kRagged>(p, b, k_begin, k_len);
        tiles = (q_len * group + kRows - 1) / kRows;
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
        q_begin = __shfl_sync(0xffffffffu, q_begin, l), q_len = __shfl_sync(0xffffffffu, q_len, l);
        k_begin = __shfl_sync(0xffffffffu, k_begin, l), k_len = __shfl_sync(0xffffffffu, k_len, l);
        if (lane == 0) *sched = BlockTile{q_begin, q_len, k_begin, k_len, found_b, found_t};
      } else {
        remaining -= __shfl_sync(0xffffffffu, incl, 31);
      }
    }
    if (lane == 0 && found_b < 0) sched->b = -1;  // past the last tile (the grid is an upper bound)
  }
  __syncthreads();
  const int b = sched->b, tile_q = sched->tile;
  if (b < 0) return;
  BLOCK_TRACE(3);  // scheduled

  const int64_t q0 = sched->q_begin, qo_len = sched->q_len, kv_start = sched->kv_begin, kv_len = sched->kv_len;
  const int64_t row0 = (int64_t)tile_q * kRows;

  // The query tile: packed row r -> token i = (row0 + r) / group, head kvh * group + (row0 + r) % group. Its copies
  // join the first pipeline stage's group, issued before the first page lookup so they overlap its dependent load
  // (the request's extents came with the scan above); a row past the request is zero-filled. A thread copies chunk
  // ch of rows r1, r1 + kQStep, ...: from one to the next its (token, head) pair moves by (kQStep / group, kQStep %
  // group) and its source by a fixed offset (plus a carry when the head wraps), so the whole tile costs one division
  // and a few additions a copy (the prologue runs one warp per scheduler beside a co-resident block's mma loop,
  // where every instruction is paid in latency). q rows are on 16-byte boundaries (the adapter copies a view whose
  // rows are not).
  {
    constexpr int kQChunks = D / 8, kQStep = kBlockThreads / kQChunks;
    static_assert(kBlockThreads % kQChunks == 0 && kRows % kQStep == 0, "whole rows per pass");
    const int ch = tid % kQChunks, r1 = tid / kQChunks;
    const uint32_t step_i = p.group_div.div(kQStep), step_h = p.group_div.mod(kQStep, step_i);
    uint32_t i = p.group_div.div((uint32_t)(row0 + r1)), h = p.group_div.mod((uint32_t)(row0 + r1), i);
    const int64_t sn = p.q_stride_n, sh = p.q_stride_h;
    const int64_t step = step_i * sn + step_h * sh, carry = sn - group * sh;
    int64_t off = (q0 + i) * sn + (kvh * group + h) * sh + ch * 8;
    const T* q = static_cast<const T*>(p.q);
    const uint32_t q_rows = (uint32_t)qo_len;
#pragma unroll
    for (int k = 0; k < kRows / kQStep; ++k) {
      const bool in = i < q_rows;
      const int r = r1 + k * kQStep;
      cp_async<16>(q_s + tile_swizzle<kWg, D, kRows>(r, ch), q + (in ? off : 0), in);
      i += step_i, h += step_h, off += step;
      if (h >= (uint32_t)group) h -= group, ++i, off += carry;
    }
  }

  const int64_t j_off = kv_len - qo_len;  // bottom-right alignment: query i sees keys j <= j_off + i
  const int64_t i_first = p.group_div.div((uint32_t)row0),
                i_last = min(qo_len - 1, (int64_t)p.group_div.div((uint32_t)(row0 + kRows - 1)));
  int64_t lo = 0, hi = kv_len;
  if (p.causal) hi = min(hi, max(j_off + i_last + 1, (int64_t)0));
  if (p.window_left >= 0) lo = min(hi, max((int64_t)0, j_off + i_first - p.window_left));
  // Split blockIdx.z takes its run of whole tiles of [lo, hi); late splits of a short range stay empty.
  const int64_t range_tiles = hi > lo ? (hi - lo + kTile - 1) / kTile : 0;
  const int64_t split_tiles = (range_tiles + p.num_splits - 1) / p.num_splits;
  Slice sl;
  sl.start = kv_start, sl.len = kv_len;
  sl.t0 = min(hi, lo + (int64_t)blockIdx.z * split_tiles * kTile);
  sl.t1 = min(hi, sl.t0 + split_tiles * kTile);
  sl.ntiles = (int)((sl.t1 - sl.t0 + kTile - 1) / kTile);

  // One page lookup per token row, shared across the warp (common/kv_tile.cuh): fewer registers and loader
  // instructions at every head dim.
  TileLoader<Params, KV, D, kTile, kBlockThreads, !kConvert, kRagged, true, kWg && !kConvert> loader(p, sl, kvh);
  loader.prologue<kStages>(k_s, v_s, valid_s);

  // Scores to the log2 domain. The common case folds the scale into the exponent (exp2(x * e_scale - m), one
  // fma); a scale that is not positive (which would turn a masked -inf into NaN) scales each score first and leaves
  // e_scale = 1. A soft cap turns each score into tanh(x sm_scale k_scale / cap), in [-1, 1], and folds cap log2(e)
  // into e_scale (positive, so the running maxima stay maxima). K rotated at an amplitude below 1 (kRopeAmp) is
  // scaled back through k_scale.
  constexpr float kAmp = kRope ? kRopeAmp<T, KV> : 1.f;
  const float k_scale = p.k_scale / kAmp;
  const bool cap = p.logits_soft_cap > 0.f;
  const float qk_scale = p.sm_scale * k_scale * kLog2e;
  const bool pre = !(qk_scale > 0.f);  // scale each score first (uncapped only: a cap is tested before it)
  const float e_scale = cap ? p.logits_soft_cap * kLog2e : pre ? 1.f : qk_scale;
  const float tanh_scale = cap ? p.sm_scale * k_scale / p.logits_soft_cap : 0.f;
  // This warp's rows: tile mi holds rows wrow + kMStep mi .. + 16; a thread owns two of each (lane / 4 and lane / 4
  // + 8). mma.sync: a warp's kM tiles are adjacent; wgmma: its 16 rows of each of its warpgroup's kM 64-row tiles
  // (warpgroup g holds tiles g kM .. g kM + kM - 1 of the block's rows).
  constexpr int kMStep = kWg ? 64 : 16;
  const int wgroup = kBlockThreads > 128 ? warp / 4 : 0;  // this warp's warpgroup
  const int wrow = kWg ? 64 * kM * wgroup + 16 * (warp % 4) : warp * 16 * kM;
  // 32-bit positions from here on: query and KV positions are < 2^31 (checked by the adapter).
  int qi[kM][2];
  bool row_ok[kM][2];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      qi[mi][r] = (int)p.group_div.div((uint32_t)(row0 + wrow + kMStep * mi + lane / 4 + 8 * r));
      row_ok[mi][r] = qi[mi][r] < qo_len;
    }
  int64_t mask_bit0 = 0;
  if constexpr (kMask) mask_bit0 = (int64_t)max(p.mask_indptr[b], 0) * 8;
  float o[kM][kNT][4];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi)
#pragma unroll
    for (int n = 0; n < kNT; ++n) o[mi][n][0] = o[mi][n][1] = o[mi][n][2] = o[mi][n][3] = 0.f;
  float m[kM][2], l[kM][2];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) m[mi][0] = m[mi][1] = -INFINITY, l[mi][0] = l[mi][1] = 0.f;
  // Query fragments stay in registers when they fit in 32; otherwise they are read from shared memory per tile.
  constexpr bool kQInRegs = !kWg && kM * D / 16 * 4 <= 32;
  uint32_t qa[kQInRegs ? kM : 1][kQInRegs ? D / 16 : 1][4];
  cp_async_wait<kStages - 2>();  // the first group: the query tile and the first K/V stage
  publish();
  if constexpr (kRope) {
    rope_tile<T, D, kRows, kBlockThreads, kWg>(p.rope_rcp_scale, p.rope_log2_theta, q_s,
                                               [&](int r) { return j_off + p.group_div.div((uint32_t)(row0 + r)); });
    publish();
  }
  // Fragment addresses: K as the B operand (tokens x chunks), V transposed, Q as the A operand.
  const SwizzledLane<D> k_lane(kConvert ? (void*)kc_s : k_s, (lane / 16) * 8 + lane % 8, (lane / 8) % 2);
  const SwizzledLane<D> v_lane(kConvert ? (void*)vc_s : v_s, ((lane / 8) % 2) * 8 + lane % 8, lane / 16);
  const SwizzledLane<D> q_lane(q_s, lane % 16, lane / 16);
  if constexpr (kQInRegs) {
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qa[mi][kk], q_lane.at(wrow + 16 * mi, kk * 2));
  }
  // The first and last query token of this warp's rows: a tile every row sees whole needs no per-element mask.
  const int64_t warp_i0 = p.group_div.div((uint32_t)(row0 + wrow)),
                warp_i1 = p.group_div.div((uint32_t)(row0 + wrow + kMStep * (kM - 1) + 15));

  for (int tile = 0; tile < sl.ntiles; ++tile) {
    cp_async_wait<kStages - 2>();
    publish();
    if (tile == 0) BLOCK_TRACE(4);  // the first tile has landed
    // Every token of the tile on a readable page and inside the slice (the common case)? Paged: the flags were
    // written when the stage was issued, before the barrier above. Ragged: every row of the slice is readable.
    const int stage = tile % kStages;
    const int srow = stage * kTile;  // first row of this stage in k_s / v_s (and in valid_s)
    const int64_t j0 = sl.t0 + (int64_t)tile * kTile;
    bool all_valid;
    if constexpr (kRagged) {
      all_valid = j0 + kTile <= sl.t1;
    } else {
      int valid = 1;
#pragma unroll
      for (int t = lane; t < kTile; t += 32) valid &= valid_s[srow + t];
      all_valid = __all_sync(0xffffffffu, valid);
    }
    // Copies of tile + kStages - 1 (a stage every warp left before the barrier above), lookup of the tile after it.
    // Ragged bf16 / fp16 KV, which needs no lookups, issues them after this tile's S product: the tensor cores start
    // sooner (1-4% on H200). Paged KV needs the lead for its lookups; ragged fp8 KV measured 0.1-2.5% slower with
    // it on both mainloops (not profiled; its conversion pass already sits between the barrier and the S product).
    constexpr bool kLateIssue = kRagged && !kConvert;
    auto issue_next = [&] {
      if (tile + kStages - 1 < sl.ntiles) loader.issue(k_s, v_s, valid_s, (tile + kStages - 1) % kStages);
      cp_async_commit();
      loader.find(tile + kStages);
    };
    if constexpr (!kLateIssue) issue_next();
    // First row of the tile the mma reads: the stage itself, or the converted copy of an fp8 stage. Every warp
    // finished reading the previous converted tile before the barrier above.
    int mrow = srow;
    if constexpr (kConvert) {
      convert_tile<T, KV, D, kTile, kBlockThreads, kWg>(k_s + srow * D, kc_s);
      convert_tile<T, KV, D, kTile, kBlockThreads, kWg>(v_s + srow * D, vc_s);
      publish();
      mrow = 0;
    }
    if constexpr (kRope) {
      // K rotated where the mma reads it, in place: the stage is refilled only after the next loop barrier.
      T* kt;
      if constexpr (kConvert) kt = kc_s; else kt = k_s + srow * D;
      rope_tile_consecutive<T, D, kTile, kBlockThreads, kWg>(RopeParams{p.rope_rcp_scale, p.rope_log2_theta}, kt, j0,
                                                             threadIdx.x % (D / 16), threadIdx.x / (D / 16), kAmp);
      publish();
    }

    // This thread's custom-mask bits per row (bit 8 nt + e for its score of token 8 nt + 2 (lane % 4) + e), read
    // before the mma below so the loads' latency hides behind it.
    uint64_t mwin[kM][2];
    if constexpr (kMask) {
#pragma unroll
      for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          mwin[mi][r] = row_ok[mi][r] ? mask_window<kTile>(p, mask_bit0 + (int64_t)qi[mi][r] * kv_len + j0) >>
                                            (2 * (lane % 4))
                                      : 0;
    }
    bool whole_early = false;
    if constexpr (kWholeEarly)
      whole_early = all_valid && !kMask && (!p.causal || j0 + kTile - 1 <= j_off + warp_i0) &&
                    (p.window_left < 0 || j0 >= j_off + warp_i1 - p.window_left);
    // S = Q K^T: each K fragment serves the warp's kM row tiles (wgmma: the warpgroup's, straight from shared memory).
    float s[kM][kSN][4];
    if constexpr (kWg) {
      // This warpgroup's tiles of q_s; the stage, or the converted copy of an fp8 stage (mrow 0: kc_s / vc_s).
      const uint32_t q_addr = (uint32_t)__cvta_generic_to_shared(q_s) + wgroup * kM * 64 * 128;
      const uint32_t k_addr = (uint32_t)__cvta_generic_to_shared(kConvert ? (void*)kc_s : (void*)(k_s + mrow * D));
      wg_fence();
#pragma unroll
      for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          // k step kk: slab kk / 4 (64 columns of 128-byte rows), 32 bytes further per step inside it.
          const uint32_t q_off = (kk / 4) * kRows * 128 + (kk % 4) * 32 + mi * 64 * 128;
          const uint32_t k_off = (kk / 4) * kTile * 128 + (kk % 4) * 32;
          wgmma_ss_n64<T>(s[mi], wg_desc(q_addr + q_off, 16, 1024), wg_desc(k_addr + k_off, 16, 1024), kk > 0);
        }
      wg_commit();
      if constexpr (kLateIssue) issue_next();
      wg_wait<0>();
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) wg_keep(s[mi]);
    }
    if constexpr (!kWg) for_each_score<kM, kSN>([&](int mi, int nt, int i) { s[mi][nt][i] = 0.f; });
#pragma unroll
    for (int kk = 0; kk < (kWg ? 0 : D / 16); ++kk) {
      uint32_t bk[kTile / 16][4];
#pragma unroll
      for (int nb = 0; nb < kTile / 16; ++nb)
        ldmatrix_x4(bk[nb], k_lane.at(mrow + nb * 16, kk * 2));
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) {
        uint32_t a_smem[4];
        if constexpr (!kQInRegs) ldmatrix_x4(a_smem, q_lane.at(wrow + 16 * mi, kk * 2));
        const uint32_t(&a)[4] = kQInRegs ? qa[kQInRegs ? mi : 0][kQInRegs ? kk : 0] : a_smem;
#pragma unroll
        for (int nb = 0; nb < kTile / 16; ++nb) {
          mma_16816<T>(s[mi][2 * nb], a, bk[nb][0], bk[nb][1]);
          mma_16816<T>(s[mi][2 * nb + 1], a, bk[nb][2], bk[nb][3]);
        }
      }
    }
    if constexpr (!kWg && kLateIssue) issue_next();
    // Per-element masks only where some element of the warp's rows x tile can be masked out; rows past the
    // request are never written, so they need no mask.
    const bool whole = kWholeEarly ? whole_early
                                   : all_valid && !kMask && (!p.causal || j0 + kTile - 1 <= j_off + warp_i0) &&
                                         (p.window_left < 0 || j0 >= j_off + warp_i1 - p.window_left);
    // Each uniform condition is tested once per tile, around a whole pass over the fragments.
    if (cap)
      for_each_score<kM, kSN>(
          [&](int mi, int nt, int i) { s[mi][nt][i] = tanh_approx(s[mi][nt][i] * tanh_scale); });
    else if (pre)
      for_each_score<kM, kSN>([&](int mi, int nt, int i) { s[mi][nt][i] *= qk_scale; });
    if (!whole) {
      // One keep word per row, bit 8 nt + e for the score of token 8 nt + c + e (c = 2 (lane % 4)): every condition
      // is a handful of word operations per row and tile, and each score a bit test and a select.
      const int c = 2 * (lane % 4);
      uint64_t valid_bits = ~0ull;
      if (!all_valid) {
        if constexpr (kRagged) {
          valid_bits = low_bits(sl.t1 - j0 - c);
        } else {
          valid_bits = 0;
#pragma unroll
          for (int nt = 0; nt < kSN; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              valid_bits |= (uint64_t)(valid_s[srow + nt * 8 + c + e] != 0) << (nt * 8 + e);
        }
      }
#pragma unroll
      for (int mi = 0; mi < kM; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // Key token t of the tile sits at bit t - c; the limits below are in tokens of the tile.
          const int64_t diag = j_off + qi[mi][r] - j0;  // the last key the row sees under causal
          uint64_t keep = row_ok[mi][r] ? valid_bits : 0;
          if (p.causal) keep &= low_bits(diag + 1 - c);
          if (p.window_left >= 0) keep &= ~low_bits(diag - p.window_left - c);
          if constexpr (kMask) keep &= mwin[mi][r];
#pragma unroll
          for (int nt = 0; nt < kSN; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if (!((keep >> (nt * 8 + e)) & 1)) s[mi][nt][2 * r + e] = -INFINITY;
        }
    }
    float mx[kM][2];
#pragma unroll
    for (int mi = 0; mi < kM; ++mi) mx[mi][0] = mx[mi][1] = -INFINITY;
    for_each_score<kM, kSN>([&](int mi, int nt, int i) { mx[mi][i / 2] = fmaxf(mx[mi][i / 2], s[mi][nt][i]); });
    // Row maxima in the log2 domain; the running max m moves only when a tile's max passes it by more than
    // kLazyMax, so most tiles skip the rescale of o. exp2(x - m) then stays <= 2^kLazyMax: exact enough in 16-bit
    // P and far from fp32 overflow in l and o. m is uniform over a row's four lanes, so each thread may test its
    // own maximum: one vote then says whether any row passed, and the shuffles for the row maxima run only then,
    // off the path from S to P: 0.4-1.8% faster on mma.sync, 0.6-2.4% on wgmma at head_dim 64 and 256. wgmma at
    // head_dim 128 keeps the row maxima first: its long shapes ran 0.8-1.5% slower without (H200, benchmarks/micro).
    constexpr bool kRowMaxFirst = kWg && D == 128;
    auto row_max = [](float v) {
      v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
      return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    };
    bool grow = false;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if constexpr (kRowMaxFirst) mx[mi][r] = row_max(mx[mi][r]);
        mx[mi][r] *= e_scale;  // -inf stays -inf: e_scale > 0
        grow |= mx[mi][r] > m[mi][r] + kLazyMax;
      }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) {
        float scale[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m_new = fmaxf(m[mi][r], kRowMaxFirst ? mx[mi][r] : row_max(mx[mi][r]));
          scale[r] = m_new == -INFINITY ? 1.f : fast_exp2(m[mi][r] - m_new);
          m[mi][r] = m_new;
          l[mi][r] *= scale[r];
        }
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
          o[mi][n][0] *= scale[0], o[mi][n][1] *= scale[0];
          o[mi][n][2] *= scale[1], o[mi][n][3] *= scale[1];
        }
      }
    }
    // A row with nothing seen yet has m = -inf and only -inf scores: subtracting 0 keeps exp2 at 0.
    float m_use[kM][2];
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
      for (int r = 0; r < 2; ++r) m_use[mi][r] = m[mi][r] == -INFINITY ? 0.f : m[mi][r];
    for_each_score<kM, kSN>([&](int mi, int nt, int i) {
      s[mi][nt][i] = fast_exp2(fmaf(s[mi][nt][i], e_scale, -m_use[mi][i / 2]));
      l[mi][i / 2] += s[mi][nt][i];
    });
    // O += P V: P straight from the S fragments (the mma C layout is the A layout of the next), each V fragment
    // serving the kM row tiles. wgmma reads its A registers asynchronously: all of P is packed first, and nothing
    // touches it or o until the wait.
    if constexpr (kWg) {
      uint32_t pa[kTile / 16][kM][4];
#pragma unroll
      for (int kt2 = 0; kt2 < kTile / 16; ++kt2)
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) c_to_a<T>(s[mi], kt2, pa[kt2][mi]);
      const uint32_t v_addr = (uint32_t)__cvta_generic_to_shared(kConvert ? (void*)vc_s : (void*)(v_s + mrow * D));
      wg_fence();
#pragma unroll
      for (int kt2 = 0; kt2 < kTile / 16; ++kt2)
#pragma unroll
        for (int mi = 0; mi < kM; ++mi)  // 16 tokens = two 8-row groups further; the slabs kTile rows apart
          wgmma_rs<D, T>(o[mi], pa[kt2][mi], wg_desc(v_addr + kt2 * 16 * 128, kTile * 128, 1024));
      wg_commit();
      wg_wait<0>();
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) wg_keep(o[mi]);
    }
#pragma unroll
    for (int kt2 = 0; kt2 < (kWg ? 0 : kTile / 16); ++kt2) {
      uint32_t pa[kM][4];
#pragma unroll
      for (int mi = 0; mi < kM; ++mi) c_to_a<T>(s[mi], kt2, pa[mi]);
#pragma unroll
      for (int n = 0; n < kNT; n += 2) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, v_lane.at(mrow + kt2 * 16, n));
#pragma unroll
        for (int mi = 0; mi < kM; ++mi) {
          mma_16816<T>(o[mi][n], pa[mi], bv[0], bv[1]);
          mma_16816<T>(o[mi][n + 1], pa[mi], bv[2], bv[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  // wgmma: the output is staged over q_s, which the warpgroup's last products read.
  if constexpr (kWg) __syncthreads();
  BLOCK_TRACE(5);

  // Each row is complete in its warp: normalise and write (a split writes its partial in fp32). The unsplit output is
  // staged in the warp's own rows of q_s, which no other warp reads, and leaves as 16-byte row-contiguous stores:
  // straight from the mma fragments it would be 2-byte stores scattered over 8 rows.
  int64_t orow[kM][2];
#pragma unroll
  for (int mi = 0; mi < kM; ++mi)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[mi][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = wrow + kMStep * mi + lane / 4 + 8 * r;
      const int64_t pr = row0 + row;
      orow[mi][r] = (q0 + qi[mi][r]) * p.hq + kvh * group + (int)p.group_div.mod((uint32_t)pr, qi[mi][r]);
      const float inv = sum > 0.f ? p.v_scale / sum : 0.f;
      const float row_lse = sum > 0.f ? m[mi][r] + log2f(sum) : -INFINITY;
      if (p.num_splits == 1) {
#pragma unroll
        for (int n = 0; n < kNT; ++n)
          *reinterpret_cast<uint32_t*>(q_s + swizzle<D>(row, n) + 2 * (lane % 4)) =
              pack2<T>(o[mi][n][2 * r] * inv, o[mi][n][2 * r + 1] * inv);
        if (row_ok[mi][r] && lane % 4 == 0) p.lse[orow[mi][r]] = row_lse;
      } else if (row_ok[mi][r]) {
        const int64_t prow = (int64_t)blockIdx.z * p.total_q * p.hq + orow[mi][r];
        float* dst = p.tmp_o + prow * D + 2 * (lane % 4);
#pragma unroll
        for (int n = 0; n < kNT; ++n)
          *reinterpret_cast<float2*>(dst + n * 8) = make_float2(o[mi][n][2 * r] * inv, o[mi][n][2 * r + 1] * inv);
        if (lane % 4 == 0) p.tmp_lse[prow] = row_lse;
      }
    }
  if (p.num_splits == 1) {
    __syncwarp();
    // The four lanes of a row copy it in aligned runs of four chunks (64 bytes); odd rows start one run later, so the
    // eight lanes of each 16-byte shared-memory phase (two rows) read eight different bank groups. out is allocated
    // by the op (16-byte aligned) and a row is D * 2 bytes.
    constexpr int kRuns = D / 32;
#pragma unroll
    for (int mi = 0; mi < kM; ++mi)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (!row_ok[mi][r]) continue;
        const int row = wrow + kMStep * mi + lane / 4 + 8 * r;
        T* dst = static_cast<T*>(p.out) + orow[mi][r] * D;
#pragma unroll
        for (int j = 0; j < kRuns; ++j) {
          const int phys = ((j + (row & 1)) % kRuns) * 4 + lane % 4;  // chunk as stored in q_s
          const uint4 v = *reinterpret_cast<const uint4*>(q_s + row * D + phys * 8);
          *reinterpret_cast<uint4*>(dst + (phys ^ (row & 7)) * 8) = v;
        }
      }
  }
  BLOCK_TRACE_EXIT();
}

// Fills in the split count (from shapes and the device only), asks env.alloc_tmp(p) for the split workspace when
// there is more than one split (it sets p.tmp_o and p.tmp_lse), and launches the kernel, then the merge.
template <typename T, typename KV, int D, bool kRagged, bool kMask, bool kRope>
cudaError_t launch_one(Params p, const LaunchEnv<Params>& env) {
  constexpr size_t smem = smem_bytes(D, sizeof(KV));
  auto* kernel = prefill_kernel<T, KV, D, kRagged, kMask, kRope>;
  int per_sm = 0;
  cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), block_threads(D), smem, &per_sm);
  if (err != cudaSuccess) return err;
  const int group = p.hq / p.hkv;
  p.group_div = FastDiv((uint32_t)group);
  const int64_t tiles = max_row_tiles(p.total_q, p.batch, group, block_rows(D));
  if ((uint64_t)tiles * (uint64_t)p.hkv > UINT32_MAX) return cudaErrorInvalidConfiguration;  // see `lin`
  const int64_t kv_rows = kRagged ? p.num_indices : p.num_indices * p.page_size;
  p.num_splits = choose_splits((p.total_q * group + block_rows(D) - 1) / block_rows(D) * p.hkv,
                               (int64_t)env.sm_count * std::max(per_sm, 1), kv_rows / p.batch);
  if (p.num_splits > 1) env.alloc_tmp(p);
  err = launch_pdl(kernel, dim3((unsigned)tiles, p.hkv, p.num_splits), dim3(block_threads(D)), smem, env.stream, p);
  if (err == cudaSuccess && p.num_splits > 1) {
    const int64_t rows = p.total_q * p.hq;
    err = launch_pdl(merge_kernel<T, D>, dim3((unsigned)((rows + kMergeWarps - 1) / kMergeWarps)),
                     dim3(kMergeThreads), 0, env.stream, p);
  }
  return err;
}

// kRope must match p.rope (each value is compiled in its own translation units).
template <typename T, typename KV, int D, bool kRagged, bool kRope>
cudaError_t launch(const Params& p, const LaunchEnv<Params>& env) {
  if (p.batch == 0 || p.total_q == 0 || p.hq == 0) return cudaSuccess;
  return p.mask ? launch_one<T, KV, D, kRagged, true, kRope>(p, env)
                : launch_one<T, KV, D, kRagged, false, kRope>(p, env);
}

}  // namespace prefill
}  // namespace flashinfer

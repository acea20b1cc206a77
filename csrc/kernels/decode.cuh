// Batch decode over a paged KV cache on CUDA cores: one query token per request. Torch-free.
//
// Grid (batch, num_kv_heads * head_chunks, num_splits). num_splits is fixed by the launcher from shapes and the
// SM count; each block finds on the device which slice of its request's KV it owns, so a captured launch stays
// correct when lengths change between replays. Empty slices write an empty partial (lse = -inf); with more than
// one split, partials go to a workspace and the last split block of each (request, kv head, head chunk) to finish
// combines them (merge_if_last_split), so no merge kernel trails the launch.
//
// Memory: K and V tiles of kTile tokens stream through a kStages-deep cp.async pipeline in shared memory, so each
// block keeps (kStages - 1) tiles in flight while it computes on the current one; the page-table lookups are part
// of the load, so their latency hides behind the pipeline too. Tokens on pages outside the cache, or past the end
// of the slice, are zero-filled and masked: no read ever leaves the cache.
//
// Compute: a row of kTPT = head_dim / 8 threads owns 8 elements of one token at a time; a thread keeps up to
// kMaxGT query heads of the GQA group in registers, so each K/V element read from shared memory serves all of them.
// The block's rows are split into head slots (enough for the group) and token slots; token slots merge at the end.
//
// Programmatic dependent launch: both decode kernels wait for their predecessor at entry but let their successor
// launch only once the block is past its tile loop (the other kernels call pdl_enter(): both at entry). A launch
// that fits in one wave would otherwise trigger at once, and the next grid would sit resident beside it for its
// whole length: on an H200, back-to-back bf16 32 x 32768 launches (256 blocks, 132 SMs) took 978 us each with the
// trigger at entry and 965 with it here, as long as one launch alone; the other shapes level or up to 2% faster
// (tensor-core kernel, benchmarks/micro/decode_micro.cu with CHAIN=20). At head_dim 256 the tensor-core kernel
// warms L2 with its slice's page-table lines before its wait (prefetch_slice_l2; the launcher decides where).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "common/fastdiv.cuh"
#include "common/kv_tile.cuh"
#include "common/launch.cuh"
#include "common/pdl.cuh"
#include "common/rotary.cuh"
#include "common/softcap.cuh"
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
  int batch, hq, hkv, page_size, num_splits, head_chunks;
  FastDiv page_div;           // by page_size; token positions are < 2^31 (checked by the adapter)
  void* out;                  // [batch, hq, head_dim], q's dtype (num_splits == 1)
  float* lse;                 // [batch, hq], log2 (num_splits == 1)
  float* tmp_o;               // [batch, num_splits, hq, head_dim] (num_splits > 1)
  float* tmp_lse;             // [batch, num_splits, hq]
  int* counters;              // [batch, grid y]: split blocks done per (request, kv head, head chunk); zero at launch
  int64_t prefetch_blocks;    // blocks of the first wave, in launch order, that prefetch (prefetch_slice_l2;
                              // the tensor-core kernel only); 0 where the launcher turns it off
  bool counters_zeroed;       // counters are zero already (a buffer every launch leaves zeroed): no memset
  float sm_scale, logits_soft_cap, k_scale, v_scale;
  int window_left;            // -1: no window
  float rope_rcp_scale, rope_log2_theta;
};

constexpr int kThreads = 128;
constexpr int kVec = 8;     // elements of a token row per thread
constexpr int kMaxGT = 4;   // query heads per thread
constexpr int kSub = 4;     // tokens scored together before one softmax rescale
constexpr int kStages = 3;
constexpr int kMaxSplits = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Tokens per pipeline stage: 8 KiB of 16-bit K, and as much V.
__host__ __device__ constexpr int tile_tokens(int head_dim) { return 4096 / head_dim; }
__host__ __device__ constexpr int rows(int head_dim) { return kThreads / (head_dim / kVec); }
// Query heads one block serves; larger GQA groups are cut into head chunks along grid y.
__host__ __device__ constexpr int heads_per_block(int head_dim) { return rows(head_dim) * kMaxGT; }

// Shared memory: the K/V stages (reused for the final merge), then token validity per stage.
__host__ __device__ constexpr size_t kv_stage_bytes(int head_dim, int kv_bytes) {
  return (size_t)2 * kStages * tile_tokens(head_dim) * head_dim * kv_bytes;
}
__host__ __device__ constexpr size_t merge_bytes(int head_dim) {
  return (size_t)rows(head_dim) * kMaxGT * (head_dim + 2) * 4;
}
__host__ __device__ constexpr size_t stage_region_bytes(int head_dim, int kv_bytes) {
  return kv_stage_bytes(head_dim, kv_bytes) > merge_bytes(head_dim) ? kv_stage_bytes(head_dim, kv_bytes)
                                                                     : merge_bytes(head_dim);
}
__host__ __device__ constexpr size_t smem_bytes(int head_dim, int kv_bytes) {
  return stage_region_bytes(head_dim, kv_bytes) + (size_t)kStages * tile_tokens(head_dim) * 4;
}

// The KV range one block owns: split `split` of request b's [lo, len), cut in whole tiles, from the request's
// kv_indptr pair and last-page length, every page-table read guarded (an indptr running backwards or past
// kv_indices gives an empty request). Every block of the request computes the same `used`, the number of splits
// that hold tokens: the merge reads only those.
struct SplitSlice : Slice {
  int used;
};

__device__ __forceinline__ SplitSlice slice_of(const Params& p, int64_t first, int64_t end, int64_t last_len,
                                               int split, int tile) {
  SplitSlice s;
  s.start = max(first, (int64_t)0);
  end = min(end, p.num_indices);
  const int64_t npages = end - s.start;
  s.len = npages > 0 ? min(max((npages - 1) * p.page_size + last_len, (int64_t)0), npages * p.page_size) : 0;
  const int64_t lo = p.window_left >= 0 ? max((int64_t)0, s.len - 1 - p.window_left) : 0;
  // 32-bit divisions: span <= len < 2^31 (kv_tile.cuh), and every block of a launch computes these.
  const uint32_t span = (uint32_t)(s.len - lo);
  uint32_t chunk = (span + p.num_splits - 1) / (uint32_t)p.num_splits;
  chunk = (chunk + tile - 1) / tile * tile;  // whole tiles; short requests leave the last splits empty
  s.t0 = lo + (int64_t)split * chunk;
  s.t1 = min(s.len, s.t0 + chunk);
  s.ntiles = s.t1 > s.t0 ? (int)(((uint32_t)(s.t1 - s.t0) + tile - 1) / tile) : 0;
  s.used = chunk > 0 ? (int)((span + chunk - 1) / chunk) : 0;
  return s;
}

__device__ __forceinline__ SplitSlice request_slice(const Params& p, int b, int split, int tile) {
  return slice_of(p, p.indptr[b], p.indptr[b + 1], p.last_page_len[b], split, tile);
}

// Called before pdl_wait(): warms L2 with what the block reads first, while the predecessor is still finishing
// (behind a decode launch, its merge and last blocks: about 4 us at batch 1, where a block's slice is a few tiles and
// the trip indptr -> page table -> first tiles is a third of the launch). The slice's page-table lines, and with
// kKvBytes > 0 that many bytes of K and V from the start of the slice, one bulk prefetch per row. The metadata may
// still be being written by the predecessor, so what is read here only steers prefetches, which have no
// architectural effect: it is read through L2 (__ldcg leaves no stale line in L1 for the reads after the wait), every
// page is checked against the cache, and the slice is computed again after the wait. L2 is where the predecessor's
// writes land, so no later read can be stale. Only the first wave's blocks (lin < p.prefetch_blocks) prefetch: later
// ones start after the wait has resolved, where a prefetch would only duplicate the copies that follow it.
// What it costs: its dependent reads (indptr, then the page table) run ahead of the wait whatever the predecessor
// is doing. Behind another decode they overlap its merge tail; behind a short kernel they do not, and in a model step
// decode follows append_paged_kv_cache, not another decode. There, with the 64 KB K/V prefetch of 16-bit D = 128, the
// launch measured 0.8-2.1 us slower than with the prefetch off (H200, benchmarks/micro with PRED=2: bf16 1 x 8192
// 19.2 against 17.0 us, 16 x 1024 26.8 against 25.4, 4 x 1024 14.6 against 13.4, each after a 2 us kernel), and in
// bench_model.py's step at 16 x 1024 the decode kernel took 25.9 us with it, 24.6 without. Behind a decode it is
// 0.4-0.7 us faster at batch 1 (bench_decode.py 1 x 8192: 14.0 against 14.7 us) and 0.1-0.4 us slower at batch 4
// and 16. So the launcher turns it on only at head_dim 256 (page-table lines; 0.3-0.5 us faster in both settings). The
// off switch is the runtime prefetch_blocks = 0, not a build without the call: that build measured 0.1-0.8 us
// slower in both settings (its SASS waits first and has fewer divergence-safe shuffle copies; moving the index
// arithmetic ahead of the wait did not recover it, so the cause is not pinned down).
template <typename KV, int D, int kThreads, int kKvBytes>
__device__ __forceinline__ void prefetch_slice_l2(const Params& p, int b, int split, int tile, int kvh, int64_t lin) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (lin >= p.prefetch_blocks) return;
  const SplitSlice s = slice_of(p, __ldcg(p.indptr + b), __ldcg(p.indptr + b + 1), __ldcg(p.last_page_len + b),
                                split, tile);
  if (s.t1 <= s.t0) return;
  // The page-table entries of [t0, t1): one prefetch per 128-byte line, none before the first entry.
  const uintptr_t first = reinterpret_cast<uintptr_t>(p.indices + s.start + p.page_div.div((uint32_t)s.t0));
  const uintptr_t last = reinterpret_cast<uintptr_t>(p.indices + s.start + p.page_div.div((uint32_t)(s.t1 - 1)));
  for (uintptr_t line = (first & ~(uintptr_t)127) + threadIdx.x * 128; line <= last; line += kThreads * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(line > first ? line : first));
  if constexpr (kKvBytes > 0) {
    constexpr int kRowBytes = D * sizeof(KV);
    const int rows = (int)min(s.t1 - s.t0, (int64_t)(kKvBytes / (2 * kRowBytes)));
    for (int r = threadIdx.x; r < 2 * rows; r += kThreads) {  // K rows, then V rows
      const bool is_v = r >= rows;
      const uint32_t t = (uint32_t)(s.t0 + (is_v ? r - rows : r));
      const uint32_t pi = p.page_div.div(t);
      const int page = __ldcg(p.indices + s.start + pi);  // t < len, so s.start + pi < kv_indptr[b + 1]
      if (page < 0 || page >= p.num_pages) continue;
      const int64_t entry = p.page_div.mod(t, pi);
      const KV* row = is_v ? static_cast<const KV*>(p.v_cache) + page * p.v_stride_page + entry * p.v_stride_entry +
                                 kvh * p.v_stride_head
                           : static_cast<const KV*>(p.k_cache) + page * p.k_stride_page + entry * p.k_stride_entry +
                                 kvh * p.k_stride_head;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(row), "r"(kRowBytes) : "memory");
    }
  }
#endif
}

template <typename KV>
__device__ __forceinline__ void load_row(const KV* s, float (&x)[kVec]) {
  const auto v = Vec<KV, kVec>::load(s);
#pragma unroll
  for (int j = 0; j < kVec; ++j) x[j] = to_float(v.v[j]);
}

// One batch of the split merge: acc += w[j] * o[(s0 + j) * step] for 16 splits, the 16 loads issued before the
// first use. A batch that runs past the `used` splits (kTail) loads the last split again in their place, with weight
// 0, so a short tail still costs one trip to L2, not one per split as a remainder loop would.
template <bool kTail>
__device__ __forceinline__ void merge_batch(const float4* o, int64_t step, const float* w, int s0, int used,
                                            float4& acc) {
  float4 x[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) x[j] = __ldcg(o + (kTail ? min(s0 + j, used - 1) : s0 + j) * step);
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const float wj = !kTail || s0 + j < used ? w[s0 + j] : 0.f;
    acc.x = fmaf(wj, x[j].x, acc.x), acc.y = fmaf(wj, x[j].y, acc.y);
    acc.z = fmaf(wj, x[j].z, acc.z), acc.w = fmaf(wj, x[j].w, acc.w);
  }
}

// Run by every thread of a split block once its partials are written. The last of the num_splits blocks of this
// (request, kv head, head chunk) to arrive combines the partials of its heads into out and lse and sets the counter
// back to zero, so a buffer of counters serves the next launch on the stream with no memset; the others return.
// Ordering: the barrier orders every thread's partial stores before thread 0's arrival, one `atom.acq_rel.gpu`: its
// release makes them visible (release is cumulative over what the barrier ordered before it) before the arrival is
// counted, and in the last block its acquire orders the other blocks' partials before the barrier that releases its
// threads to read them through L2 (__ldcg), never from a stale L1 line. One atomic per block with no fence: against
// `__threadfence()` before and after a relaxed atomicAdd (fence.sc) it took 0.2-0.3 us off every launch with splits
// on an H200 (bf16 1 x 8192 15.09 -> 14.82 us, e4m3 13.79 -> 13.54, head_dim 64 12.05 -> 11.80; benchmarks/micro,
// launches chained) and left the unsplit ones level. Every split block writes its partial (an empty slice: zeros and
// lse = -inf), so none is ever uninitialised.
//
// Only the first `used` splits hold tokens (a request shorter than num_splits tiles leaves the others empty), and
// only they are read. Shared memory (w_s, `cap` floats, the block's K/V stages, free by now) holds their weights for
// as many heads as fit; the partials are then read in batches of 16 with no dependence between splits, so the loads
// overlap. Against reading all num_splits partials in a loop unrolled by 16 (whose remainder ran one load at a
// time), on an H200 (benchmarks/micro, launches chained): bf16 1 x 1024 8.55 -> 7.45 us, 1 x 512 7.60 -> 6.60,
// 1 x 8192 14.73 -> 14.37, 1 x 32768 39.8 -> 38.2, GQA 8 1 x 8192 (66 splits) 17.2 -> 16.0, e4m3 3 x 77 8.49 ->
// 7.06; head_dim 256 (16 splits) 23.84 -> 23.93.
template <typename Q, int D>
__device__ void merge_if_last_split(const Params& p, int b, int slot, int h_base, int nheads, float* w_s, size_t cap,
                                    int used) {
  __shared__ int last;
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = p.counters + (int64_t)b * gridDim.y + slot;  // slot: the (kv head, head chunk) index
    int arrived;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(arrived) : "l"(counter) : "memory");
    last = arrived == p.num_splits - 1;
    // Every split has arrived: nothing of this launch reads the counter again, and the next launch on the stream
    // reads it only after this grid has finished (pdl_wait).
    if (last) *counter = 0;
  }
  __syncthreads();
  if (!last) return;
  // ns >= 1: an empty request (used == 0) reads split 0's lse of -inf and writes zeros and lse = -inf.
  const int ns = max(used, 1), tid = threadIdx.x, nthreads = blockDim.x, lane = tid % 32, warp = tid / 32;
  const int64_t first = (int64_t)b * p.num_splits * p.hq;  // request b's first partial row
  const int per_round = max(1, min(nheads, (int)(cap / (ns + 2))));
  float* stat = w_s + per_round * ns;  // [per_round][2]: max, sum of weights
  for (int r0 = 0; r0 < nheads; r0 += per_round) {
    const int hg = min(per_round, nheads - r0);
    for (int i = tid; i < hg * ns; i += nthreads)
      w_s[i] = __ldcg(p.tmp_lse + first + (int64_t)(i % ns) * p.hq + h_base + r0 + i / ns);
    __syncthreads();
    for (int r = warp; r < hg; r += nthreads / 32) {  // a warp per head: max, weights, sum
      float mx = -INFINITY;
      for (int s = lane; s < ns; s += 32) mx = fmaxf(mx, w_s[r * ns + s]);
      for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      float den = 0.f;
      for (int s = lane; s < ns; s += 32) {
        const float w = mx == -INFINITY ? 0.f : exp2f(w_s[r * ns + s] - mx);
        w_s[r * ns + s] = w;
        den += w;
      }
      for (int off = 16; off > 0; off /= 2) den += __shfl_xor_sync(0xffffffffu, den, off);
      if (lane == 0) stat[2 * r] = mx, stat[2 * r + 1] = den;
    }
    __syncthreads();
    // Four elements a thread: the merge is on the kernel's tail, so latency is what counts.
    for (int i = tid; i < hg * (D / 4); i += nthreads) {
      const int r = i / (D / 4), e = (i % (D / 4)) * 4, h = h_base + r0 + r;
      const float4* o = reinterpret_cast<const float4*>(p.tmp_o + (first + h) * D + e);
      const int64_t step = (int64_t)p.hq * D / 4;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      int s0 = 0;
      for (; s0 + 16 <= used; s0 += 16) merge_batch<false>(o, step, w_s + r * ns, s0, used, acc);
      if (s0 < used) merge_batch<true>(o, step, w_s + r * ns, s0, used, acc);
      const float den = stat[2 * r + 1], inv = den > 0.f ? 1.f / den : 0.f;
      Vec<Q, 4> ov;
      ov.v[0] = from_float<Q>(acc.x * inv), ov.v[1] = from_float<Q>(acc.y * inv);
      ov.v[2] = from_float<Q>(acc.z * inv), ov.v[3] = from_float<Q>(acc.w * inv);
      ov.store(static_cast<Q*>(p.out) + ((int64_t)b * p.hq + h) * D + e);
      if (e == 0) p.lse[(int64_t)b * p.hq + h] = den > 0.f ? stat[2 * r] + log2f(den) : -INFINITY;
    }
    __syncthreads();  // w_s is refilled by the next round
  }
}

template <typename Q, typename KV, int D, bool ROPE>
__global__ void __launch_bounds__(kThreads, 2) decode_kernel(Params p) {
  constexpr int kTPT = D / kVec;       // threads per token row
  constexpr int kRows = kThreads / kTPT;
  constexpr int kTile = tile_tokens(D);
  static_assert(kTile % kRows == 0 && (kTile / kRows) % kSub == 0, "a token slot scores whole sub-tiles");

  extern __shared__ __align__(128) unsigned char smem[];
  KV* k_s = reinterpret_cast<KV*>(smem);                  // [kStages][kTile][D]
  KV* v_s = k_s + kStages * kTile * D;
  int* valid_s = reinterpret_cast<int*>(smem + stage_region_bytes(D, sizeof(KV)));  // [kStages][kTile]

  const int b = blockIdx.x, kvh = blockIdx.y / p.head_chunks, chunk = blockIdx.y % p.head_chunks;
  const int tid = threadIdx.x, lane = tid % kTPT, row = tid / kTPT, e0 = lane * kVec;
  const int group = p.hq / p.hkv;
  const int h_base = kvh * group + chunk * heads_per_block(D);                   // first query head served
  const int nheads = min(group - chunk * heads_per_block(D), heads_per_block(D));
  // Head slots: the fewest (a power of two) that keep each thread at <= kMaxGT heads; the other rows split tokens.
  int slots = 1;
  while (slots * kMaxGT < nheads) slots *= 2;
  const int gt = (nheads + slots - 1) / slots;  // heads per thread
  const int slot = row % slots, tslot = row / slots, tslots = kRows / slots;
  pdl_wait();

  const SplitSlice sl = request_slice(p, b, blockIdx.z, kTile);
  const int64_t len = sl.len, t0 = sl.t0;
  const int ntiles = sl.ntiles;
  TileLoader<Params, KV, D, kTile, kThreads, false> loader(p, sl, kvh);
  loader.prologue<kStages>(k_s, v_s, valid_s);

  // This thread's query elements straight from global memory (rotated to position len - 1 under ROPE_LLAMA).
  // Scores come out in the log2 domain: sm_scale, k_scale and log2(e) are folded into q; under a soft cap q carries
  // 2 / cap as well (the argument of cap_tanh_core), so a capped score costs the core and one fma.
  const bool cap = p.logits_soft_cap > 0.f;
  const float qscale = p.sm_scale * p.k_scale * kLog2e * (cap ? 2.f / p.logits_soft_cap : 1.f);
  const float cap_scale = p.logits_soft_cap * kLog2e;
  float qr[kMaxGT][kVec], o[kMaxGT][kVec], m[kMaxGT], l[kMaxGT];
#pragma unroll
  for (int g = 0; g < kMaxGT; ++g) {
    const int hl = slot * gt + g;
    const bool used = g < gt && hl < nheads;
    const Q* qh = static_cast<const Q*>(p.q) + b * p.q_stride_n + (int64_t)(h_base + (used ? hl : 0)) * p.q_stride_h;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int e = e0 + j;
      float x = used ? to_float(qh[e]) : 0.f;
      if constexpr (ROPE) {
        const float partner = used ? to_float(qh[e < D / 2 ? e + D / 2 : e - D / 2]) : 0.f;
        float sn, cs;
        // __sincosf, as wherever attention applies RoPE (common/rotary.cuh: the fp32 angle errs as much).
        __sincosf((float)(len - 1) * rope_inv_freq(p.rope_rcp_scale, p.rope_log2_theta, e % (D / 2), D), &sn, &cs);
        x = e < D / 2 ? x * cs - partner * sn : x * cs + partner * sn;
      }
      qr[g][j] = x * qscale;
      o[g][j] = 0.f;
    }
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  // ROPE_LLAMA: this thread's frequencies, and the cosine and sine of one token's step in each, through which a key's
  // rotation follows from the previous key's.
  float freq[kVec], step_cs[kVec], step_sn[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    freq[j] = ROPE ? rope_inv_freq(p.rope_rcp_scale, p.rope_log2_theta, (e0 + j) % (D / 2), D) : 0.f;
    if constexpr (ROPE) __sincosf(freq[j], &step_sn[j], &step_cs[j]);
  }

  for (int tile = 0; tile < ntiles; ++tile) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    // The stage refilled here was consumed in the previous iteration, before the barrier above.
    if (tile + kStages - 1 < ntiles) loader.issue(k_s, v_s, valid_s, (tile + kStages - 1) % kStages);
    cp_async_commit();
    loader.find(tile + kStages);
    const int stage = tile % kStages;
    const KV* kt = k_s + stage * kTile * D;
    const KV* vt = v_s + stage * kTile * D;

    for (int u0 = tslot * (kTile / tslots); u0 < (tslot + 1) * (kTile / tslots); u0 += kSub) {
      float s[kMaxGT][kSub];
      // ROPE_LLAMA: the angles of the sub-tile's first key; each next key's by angle addition.
      float cs[kVec], sn[kVec];
      if constexpr (ROPE) {
        const float pos = (float)(t0 + (int64_t)tile * kTile + u0);
#pragma unroll
        for (int j = 0; j < kVec; ++j) __sincosf(pos * freq[j], &sn[j], &cs[j]);
      }
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
        float kf[kVec];
        load_row(kt + (u0 + u) * D + e0, kf);
        if constexpr (ROPE) {
          // The partner of element e is e +- D/2, held by the lane kTPT/2 away in the same row.
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const float partner = __shfl_xor_sync(0xffffffffu, kf[j], kTPT / 2);
            kf[j] = e0 < D / 2 ? kf[j] * cs[j] - partner * sn[j] : kf[j] * cs[j] + partner * sn[j];
            const float c = cs[j] * step_cs[j] - sn[j] * step_sn[j];
            sn[j] = sn[j] * step_cs[j] + cs[j] * step_sn[j];
            cs[j] = c;
          }
        }
        const bool ok = valid_s[stage * kTile + u0 + u];
#pragma unroll
        for (int g = 0; g < kMaxGT; ++g) {
          if (g < gt) {
            float x = 0.f;
#pragma unroll
            for (int j = 0; j < kVec; ++j) x = fmaf(qr[g][j], kf[j], x);
#pragma unroll
            for (int off = kTPT / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
            if (cap) x = fmaf(2.f * cap_scale, cap_tanh_core(x), cap_scale);
            s[g][u] = ok ? x : -INFINITY;
          }
        }
      }
#pragma unroll
      for (int g = 0; g < kMaxGT; ++g) {
        if (g < gt) {
          float mx = m[g];
#pragma unroll
          for (int u = 0; u < kSub; ++u) mx = fmaxf(mx, s[g][u]);
          const float scale = mx == -INFINITY ? 1.f : exp2f(m[g] - mx);
          float sum = 0.f;
#pragma unroll
          for (int u = 0; u < kSub; ++u) {
            s[g][u] = mx == -INFINITY ? 0.f : exp2f(s[g][u] - mx);
            sum += s[g][u];
          }
          l[g] = l[g] * scale + sum;
          m[g] = mx;
#pragma unroll
          for (int j = 0; j < kVec; ++j) o[g][j] *= scale;
        }
      }
#pragma unroll
      for (int u = 0; u < kSub; ++u) {
        float vf[kVec];
        load_row(vt + (u0 + u) * D + e0, vf);
#pragma unroll
        for (int g = 0; g < kMaxGT; ++g)
          if (g < gt)
#pragma unroll
            for (int j = 0; j < kVec; ++j) o[g][j] = fmaf(s[g][u], vf[j], o[g][j]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages become the merge buffers
  pdl_trigger();  // late: see the top of this file

  // Merge the token slots of each head slot.
  float* red_o = reinterpret_cast<float*>(smem);           // [kRows][kMaxGT][D]
  float* red_ml = red_o + kRows * kMaxGT * D;              // [kRows][kMaxGT][2]
#pragma unroll
  for (int g = 0; g < kMaxGT; ++g) {
    if (g < gt) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) red_o[(row * kMaxGT + g) * D + e0 + j] = o[g][j];
      if (lane == 0) red_ml[(row * kMaxGT + g) * 2] = m[g], red_ml[(row * kMaxGT + g) * 2 + 1] = l[g];
    }
  }
  __syncthreads();
  for (int g = 0; g < gt && tslot == 0; ++g) {
    const int hl = slot * gt + g;
    if (hl >= nheads) break;
    float mx = -INFINITY;
    for (int ts = 0; ts < tslots; ++ts) mx = fmaxf(mx, red_ml[((ts * slots + slot) * kMaxGT + g) * 2]);
    float den = 0.f, acc[kVec] = {};
    if (mx > -INFINITY) {
      for (int ts = 0; ts < tslots; ++ts) {
        const int r = (ts * slots + slot) * kMaxGT + g;
        const float w = exp2f(red_ml[r * 2] - mx);
        den += red_ml[r * 2 + 1] * w;
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] = fmaf(red_o[r * D + e0 + j], w, acc[j]);
      }
    }
    const float inv = den > 0.f ? p.v_scale / den : 0.f;
    const float lse = den > 0.f ? mx + log2f(den) : -INFINITY;
    const int h = h_base + hl;
    if (p.num_splits == 1) {
      Vec<Q, kVec> ov;
#pragma unroll
      for (int j = 0; j < kVec; ++j) ov.v[j] = from_float<Q>(acc[j] * inv);
      ov.store(static_cast<Q*>(p.out) + ((int64_t)b * p.hq + h) * D + e0);
      if (lane == 0) p.lse[(int64_t)b * p.hq + h] = lse;
    } else {
      const int64_t r = ((int64_t)b * p.num_splits + blockIdx.z) * p.hq + h;
      Vec<float, 4> o0, o1;
#pragma unroll
      for (int j = 0; j < 4; ++j) o0.v[j] = acc[j] * inv, o1.v[j] = acc[j + 4] * inv;
      o0.store(p.tmp_o + r * D + e0);
      o1.store(p.tmp_o + r * D + e0 + 4);
      if (lane == 0) p.tmp_lse[r] = lse;
    }
  }
  if (p.num_splits > 1) merge_if_last_split<Q, D>(p, b, blockIdx.y, h_base, nheads, reinterpret_cast<float*>(smem),
                                                  stage_region_bytes(D, sizeof(KV)) / 4, sl.used);
}

// Fills in the grid shape, asks `alloc_tmp(p)` for the split workspace when there is more than one split (it sets
// p.tmp_o, p.tmp_lse and p.counters, [batch * hkv * head_chunks] ints, zeroed here unless p.counters_zeroed), and
// launches `kernel`. The split count depends only on shapes and the device: as many splits per (request, kv head)
// as fill one wave of two blocks per SM. Where more blocks fit (small fp8 tiles), counting them makes more, shorter
// splits and a longer merge: on an H200, e4m3 3 x 77 (D = 64, GQA 7) took 12.6 us with 44 splits, 9.8 with 22.
// A launch of more than one wave may run fewer blocks per SM than fit (wave_residency, common/launch.cuh).
// `prefetch`: whether the first wave runs prefetch_slice_l2 before its wait.
template <typename AllocTmp>
cudaError_t launch_split(void (*kernel)(Params), int threads, size_t smem, int block_heads, bool prefetch, Params p,
                         int sm_count, AllocTmp&& alloc_tmp, cudaStream_t stream) {
  int per_sm = 0;
  cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), threads, smem, &per_sm);
  if (err != cudaSuccess) return err;
  p.head_chunks = (p.hkv > 0 ? p.hq / p.hkv + block_heads - 1 : 0) / block_heads;
  const int64_t blocks = std::max<int64_t>((int64_t)p.batch * p.hkv * p.head_chunks, 1);
  p.num_splits =
      (int)std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, (int64_t)sm_count * std::clamp(per_sm, 1, 2) / blocks));
  if (p.num_splits > 1) alloc_tmp(p);
  if (p.batch == 0 || p.hq == 0) return cudaSuccess;
  size_t launch_smem = smem;
  const int resident = wave_residency(blocks * p.num_splits, sm_count, per_sm);
  if (resident < per_sm) {
    err = smem_for_residency(reinterpret_cast<const void*>(kernel), threads, smem, resident, &launch_smem);
    if (err != cudaSuccess) return err;
  }
  // With one split a block's slice is its whole request and the ramp a small part of it: the prefetch only delayed
  // the first copies there (H200, bf16 64 x 4096: 247.7 against 245.6 us).
  p.prefetch_blocks = prefetch && p.num_splits > 1 ? (int64_t)sm_count * resident : 0;
  if (p.num_splits > 1 && !p.counters_zeroed) {
    err = cudaMemsetAsync(p.counters, 0, sizeof(int) * p.batch * p.hkv * p.head_chunks, stream);
    if (err != cudaSuccess) return err;
  }
  return launch_pdl(kernel, dim3(p.batch, p.hkv * p.head_chunks, p.num_splits), dim3(threads), launch_smem, stream,
                    p);
}

template <typename Q, typename KV, int D, bool ROPE, typename AllocTmp>
cudaError_t launch(const Params& p, int sm_count, AllocTmp&& alloc_tmp, cudaStream_t stream) {
  return launch_split(decode_kernel<Q, KV, D, ROPE>, kThreads, smem_bytes(D, sizeof(KV)), heads_per_block(D), false,
                      p, sm_count, alloc_tmp, stream);
}

}  // namespace decode
}  // namespace flashinfer

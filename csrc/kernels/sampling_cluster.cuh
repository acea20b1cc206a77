// Sampling ops that walk whole rows: softmax with a temperature, the filters' renormalised probabilities (top-k,
// top-p) and masked logits (top-k). Torch-free.
//
// A row is shared by a cluster of up to 8 blocks (sm_90+), each holding its slice of the row in shared memory: the
// row is read from memory once and written once, every other pass runs over shared memory, and the blocks combine
// their partial results through distributed shared memory, always in rank order (the same bits every run). At small
// batches this spreads a row over 8 SMs where one block a row left the rest of the GPU idle; at large ones it keeps
// the passes off memory. Rows too long for the slices (over 8 x 40960 entries) are walked from memory by one block
// a row, with the same passes.
//
// The renormalising and masking ops need each row's boundary entry v: the largest entry with meas(x >= v) >=
// target, where meas counts entries (top-k, target k) or sums their mass (top-p, target top_p * total). Every entry
// >= v is kept, so ties with the boundary are. v is found by a radix select over the floats' order-preserving 32-bit
// keys: four passes of 8 bits, each a histogram of the entries whose key starts with the digits chosen
// so far, then a scan down from the top bin to the bin where the measure reaches what is left of the target: four
// passes whatever the row. Counts are integers, and masses are summed as 64-bit fixed point (2^52 units for the
// row's total, about double precision an entry), so the histograms do not depend on the order atomics land in.
#pragma once
#include <type_traits>

#include "common/cluster.cuh"
#include "common/launch.cuh"
#include "sampling.cuh"

namespace flashinfer {
namespace sampling {

constexpr int kBins = 256;                // a digit of 8 bits: four passes over a 32-bit key
constexpr int kMaxCluster = 8;            // the portable cluster size
constexpr int kSliceEntries = 16384;      // a cluster of ceil(vocab / this) blocks (at most 8)
constexpr int kMaxSliceEntries = 40960;   // 160 KiB of floats a block; longer rows are read from memory
static_assert(kBins <= kThreads, "a thread scans a bin");

enum class Renorm { kTopK, kTopP, kMaskLogits };

struct RenormParams {
  const void* in;          // [rows, vocab] (float probs; logits of T for kMaskLogits), row stride in elements
  int64_t stride;
  void* out;               // [rows, vocab] contiguous, the input's dtype
  int vocab;
  PerRow<int32_t> top_k;
  PerRow<float> top_p;
};

struct SoftmaxParams {
  const void* logits;      // [rows, vocab] of T, row stride in elements
  int64_t stride;
  float* probs;            // [rows, vocab] contiguous
  int vocab;
  PerRow<float> temperature;  // <= 0: the row's first largest logit gets probability 1 (greedy)
};

// How rows are split: a cluster of `cluster` blocks a row, each caching `slice` entries (a multiple of 4, so every
// slice of a row of 4-element vectors starts on one), or (cached false) one block a row reading memory each pass.
struct RowSplit {
  int cluster, slice;
  bool cached;
};

inline RowSplit split_rows(int vocab, int rows) {
  const int cluster = clusters_supported() ? std::min(kMaxCluster, (vocab + kSliceEntries - 1) / kSliceEntries) : 1;
  const int slice = ((vocab + cluster - 1) / cluster + 3) / 4 * 4;
  if (slice <= kMaxSliceEntries && (int64_t)rows * cluster <= INT32_MAX) return {cluster, slice, true};
  return {1, vocab, false};
}

// A block's part of its row: row r, entries [begin, begin + len) of it.
struct Slice {
  int r, begin, len;
};

__device__ __forceinline__ Slice slice_of(int cluster, int slice, int vocab) {
  const int begin = (int)(blockIdx.x % cluster) * slice;
  return {(int)(blockIdx.x / cluster), begin, max(0, min(slice, vocab - begin))};
}

// Every block's `mine` (one value a block, already reduced over it) combined over the cluster in rank order, the
// same in every block. `slot` is this block's shared exchange variable, used once a kernel.
template <typename S, typename C>
__device__ __forceinline__ S cluster_combine(S mine, S* slot, int cluster, S all, C&& combine) {
  if (threadIdx.x == 0) *slot = mine;
  cluster_sync(cluster);
  for (int q = 0; q < cluster; ++q) all = combine(all, *cluster_map(slot, q, cluster));
  return all;
}

// out[i] = f(cache[i]) for the slice's len entries (VEC 4: len is a multiple of 4 and out 4-element aligned).
template <int VEC, typename O, typename F>
__device__ __forceinline__ void write_cached(const float* cache, O* out, int len, F&& f) {
  if constexpr (VEC == 4) {
    for (int i = threadIdx.x * 4; i < len; i += kThreads * 4) {
      const float4 q = *reinterpret_cast<const float4*>(cache + i);
      Vec<O, 4> y;
      y.v[0] = from_float<O>(f(q.x)), y.v[1] = from_float<O>(f(q.y));
      y.v[2] = from_float<O>(f(q.z)), y.v[3] = from_float<O>(f(q.w));
      y.store(out + i);
    }
  } else {
    for (int i = threadIdx.x; i < len; i += kThreads) out[i] = from_float<O>(f(cache[i]));
  }
}

// A block's slice statistics, exchanged over the cluster.
struct SliceStats {
  float max, sum;
};

// Sum over the threads of higher index, and over all threads, for one value a thread (integers: exact).
template <typename M>
__device__ __forceinline__ void suffix_scan(M own, M* warp_tot /* kWarps */, M& above, M& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  M incl = own;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const M t = __shfl_down_sync(0xffffffffu, incl, off);
    if (lane + off < 32) incl += t;
  }
  if (lane == 0) warp_tot[warp] = incl;
  __syncthreads();
  M later = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w > warp) later += warp_tot[w];
    all += warp_tot[w];
  }
  above = later + (incl - own);
  total = all;
}

template <bool kCount>
using Measure = std::conditional_t<kCount, uint32_t, unsigned long long>;

template <bool kCount>
struct RadixShared {
  // Each warp counts into its own histogram: warps never contend for a bin, only a warp's lanes with equal digits.
  Measure<kCount> warp_hist[kWarps][kBins];
  Measure<kCount> hist[2][kBins];  // the block's; passes alternate, so one cluster barrier a pass keeps reads and
                                   // the next writes apart
  Measure<kCount> warp_tot[kWarps];
  int bin[2];
  Measure<kCount> above[2], in_bin[2];
};

// The boundary of the cluster's row over the entries each(f) hands to f (this block's slice; NaN skipped). Count:
// target is k; mass: target is top_p of the row's mass and `scale` turns an entry into fixed point. Returns whether
// the boundary exists (false: fewer than k entries that are not NaN) and, in v and kept_fx, the boundary and the
// measure of the entries >= v (fixed point for mass).
template <bool kCount, typename Each>
__device__ __forceinline__ bool radix_select(Each&& each, int cluster, RadixShared<kCount>& sh, float top_p,
                                             double scale, Measure<kCount> target, float& v,
                                             Measure<kCount>& kept_fx) {
  using M = Measure<kCount>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t prefix = 0, mask = 0;
  M kept_above = 0;
#pragma unroll 1
  for (int d = 0; d < 4; ++d) {
    const int shift = 24 - 8 * d;
    M* wh = sh.warp_hist[warp];
    for (int j = lane; j < kBins; j += 32) wh[j] = 0;
    if (threadIdx.x == 0) sh.bin[d & 1] = -1;
    __syncwarp();
    each([&](float x) {
      const uint32_t key = float_key(x);
      if (x == x && (key & mask) == prefix) {
        M m;
        if constexpr (kCount) m = 1u;
        else m = __double2ull_rn((double)x * scale);  // negative entries (not probabilities) weigh 0
        atomicAdd(&wh[(key >> shift) & (kBins - 1)], m);
      }
    });
    __syncthreads();
    M* h = sh.hist[d & 1];
    if (threadIdx.x < kBins) {
      M t = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) t += sh.warp_hist[w][threadIdx.x];
      h[threadIdx.x] = t;
    }
    cluster_sync(cluster);
    // Thread t scans bin t, summed over the cluster's blocks in rank order.
    M own = 0;
    if (threadIdx.x < kBins)
      for (int q = 0; q < cluster; ++q) own += cluster_map(h, q, cluster)[threadIdx.x];
    M above, total;
    suffix_scan(own, sh.warp_tot, above, total);
    // The first pass sees every entry: top-p's target is a share of their fixed-point total.
    if (!kCount && d == 0) target = (M)ceil((double)top_p * (double)total);
    if (above < target && above + own >= target)  // this thread's bin reaches the target
      sh.bin[d & 1] = threadIdx.x, sh.above[d & 1] = above, sh.in_bin[d & 1] = own;
    __syncthreads();
    const int b = sh.bin[d & 1];
    if (b < 0) return false;  // every bin together falls short of the target
    prefix |= (uint32_t)b << shift;
    mask |= (uint32_t)(kBins - 1) << shift;
    target -= sh.above[d & 1];
    kept_above += sh.above[d & 1];
    if (d == 3) kept_fx = kept_above + sh.in_bin[d & 1];
  }
  v = key_float(prefix);
  return true;
}

template <Renorm kMode, int VEC, typename T, bool kCached>
__global__ void __launch_bounds__(kThreads, 2) renorm_kernel(RenormParams p, int cluster, int slice) {
  constexpr bool kCount = kMode != Renorm::kTopP;
  __shared__ RadixShared<kCount> sh;
  __shared__ float scratch[4 * kWarps];
  __shared__ SliceStats xch[2];
  extern __shared__ float4 cache4[];
  float* cache = reinterpret_cast<float*>(cache4);
  const Slice sl = slice_of(cluster, slice, p.vocab);
  const int padded = (sl.len + 3) / 4 * 4;
  pdl_enter();
  const T* row = static_cast<const T*>(p.in) + (int64_t)sl.r * p.stride + sl.begin;
  T* out = static_cast<T*>(p.out) + (int64_t)sl.r * p.vocab + sl.begin;

  // The slice's entries, in the same order every pass: from shared memory (NaN past the slice's end) or the row.
  auto each = [&](auto&& f) {
    if constexpr (kCached) {
      for (int i = threadIdx.x * 4; i < padded; i += kThreads * 4) {
        const float4 q = *reinterpret_cast<const float4*>(cache + i);
        f(q.x), f(q.y), f(q.z), f(q.w);
      }
    } else {
      for_row<VEC>(row, sl.len, [&](int, float x) { f(x); });
    }
  };
  // The row's largest entry and sum, from each block's over its slice.
  auto row_stats = [&](SliceStats s, SliceStats* slot) {
    float t[1] = {s.sum};
    block_sums(t, scratch);
    s = {block_max(s.max, scratch), t[0]};
    return cluster_combine(s, slot, cluster, SliceStats{-INFINITY, 0.f}, [](SliceStats a, SliceStats b) {
      return SliceStats{fmaxf(a.max, b.max), a.sum + b.sum};
    });
  };

  // Pass one: the slice into shared memory, its largest entry and its sum.
  SliceStats s{-INFINITY, 0.f};
  for_row<VEC>(row, sl.len, [&](int i, float x) {
    if constexpr (kCached) cache[i] = x;
    s.max = fmaxf(s.max, x), s.sum += x;
  });
  if (kCached && threadIdx.x < padded - sl.len) cache[sl.len + threadIdx.x] = NAN;
  const SliceStats top = row_stats(s, &xch[0]);

  const int k = p.top_k.at(sl.r);
  const float top_p = p.top_p.at(sl.r);
  const bool on = kMode == Renorm::kTopP ? top_p < 1.f : k > 0 && k < p.vocab;
  float v = -INFINITY, kept = top.sum;
  bool sum_kept = false;  // the kept mass needs a pass of its own
  if constexpr (kMode == Renorm::kTopP) {
    if (on && top_p > 0.f && top.sum > 0.f && top.sum < INFINITY) {
      const double scale = 4503599627370496.0 / top.sum;  // 2^52 units for the row's total
      Measure<false> kept_fx = 0;
      radix_select<false>(each, cluster, sh, top_p, scale, 0, v, kept_fx);
      kept = (float)((double)kept_fx / scale);
    } else if (on && !(top_p > 0.f)) {  // top-p 0: the largest entries only
      v = top.max, sum_kept = true;
    }
  } else if (on) {  // a row of NaN has no boundary: radix_select skips NaN and finds fewer than k entries
    Measure<true> kept_n = 0;
    if (!radix_select<true>(each, cluster, sh, 0.f, 0.0, (uint32_t)k, v, kept_n)) v = -INFINITY;
    sum_kept = kMode == Renorm::kTopK;
  }
  if (sum_kept) {
    SliceStats m{-INFINITY, 0.f};
    each([&](float x) { m.sum += x >= v ? x : 0.f; });
    kept = row_stats(m, &xch[1]).sum;
  }
  // The other blocks may still read this one's shared memory: it stays until they are done (the wait below).
  cluster_arrive(cluster);
  const bool ok = kept > 0.f && kept < INFINITY;
  const float inv = ok ? 1.f / kept : 0.f;
  auto f = [&](float x) {
    if constexpr (kMode == Renorm::kMaskLogits) return x >= v ? x : -INFINITY;
    else return ok && x >= v ? x * inv : 0.f;
  };
  if constexpr (kCached) write_cached<VEC>(cache, out, sl.len, f);
  else write_row<VEC>(row, out, sl.len, f);
  cluster_wait(cluster);
}

// Online softmax: pass one keeps each thread's running maximum and sum of exponentials, merged over the block and
// then the cluster; pass two writes. Scaled logits x / temperature; a row whose maximum is -inf (or NaN) is written
// as zeros.
template <int VEC, typename T, bool kCached>
__global__ void __launch_bounds__(kThreads, 2) softmax_kernel(SoftmaxParams p, int cluster, int slice) {
  struct MaxAt {
    float m;
    int i;
  };
  __shared__ float scratch[4 * kWarps];
  __shared__ int iscratch[kWarps];
  __shared__ float2 xch;
  __shared__ MaxAt top_xch;
  extern __shared__ float4 cache4[];
  float* cache = reinterpret_cast<float*>(cache4);
  const Slice sl = slice_of(cluster, slice, p.vocab);
  pdl_enter();
  const T* row = static_cast<const T*>(p.logits) + (int64_t)sl.r * p.stride + sl.begin;
  float* out = p.probs + (int64_t)sl.r * p.vocab + sl.begin;
  const float temp = p.temperature.at(sl.r);
  if (!(temp > 0.f)) {  // greedy: probability 1 on the first largest logit
    float m = -INFINITY;
    int i = INT_MAX;
    for_row<VEC>(row, sl.len, [&](int j, float x) { better_max(m, i, x, sl.begin + j); });
    block_argmax(m, i, scratch, iscratch);
    const MaxAt top = cluster_combine(MaxAt{m, i}, &top_xch, cluster, MaxAt{-INFINITY, INT_MAX}, [](MaxAt a, MaxAt b) {
      better_max(a.m, a.i, b.m, b.i);
      return a;
    });
    cluster_arrive(cluster);
    const int at = (top.i == INT_MAX ? 0 : top.i) - sl.begin;
    for (int j = threadIdx.x; j < sl.len; j += kThreads) out[j] = j == at ? 1.f : 0.f;
    cluster_wait(cluster);
    return;
  }
  const float scale = 1.4426950408889634f / temp;  // log2(e) / t: exponents in base 2
  // Each tile's entries move the running maximum once, then add branch-free (a rescale per entry cost as much as
  // the rest of the pass). A NaN logit makes the sum NaN and the row zeros, as the CPU op.
  float m = -INFINITY, s = 0.f;
  for (int tile = 0; tile < sl.len; tile += kTileEntries<VEC>) {
    float y[kChunks * VEC];
    load_tile<VEC>(row, sl.len, tile, y);
    const int base = tile + threadIdx.x * kChunks * VEC;
    float tm = -INFINITY;
#pragma unroll
    for (int e = 0; e < kChunks * VEC; ++e) {
      y[e] = base + e < sl.len ? y[e] * scale : -INFINITY;
      if (kCached && base + e < sl.len) cache[base + e] = y[e];
      tm = fmaxf(tm, y[e]);
    }
    if (tm > m) s = (m == -INFINITY ? 0.f : s * exp2f(m - tm)), m = tm;
    if (m > -INFINITY) {
#pragma unroll
      for (int e = 0; e < kChunks * VEC; ++e) s += exp2f(y[e] - m);  // -inf entries add 0
    }
  }
  float2 ms = block_max_sum(float2{m, s}, scratch);
  ms = cluster_combine(ms, &xch, cluster, float2{-INFINITY, 0.f}, merge_max_sum);
  cluster_arrive(cluster);
  const bool ok = ms.x > -INFINITY && ms.x < INFINITY && ms.y > 0.f;
  const float inv = ok ? 1.f / ms.y : 0.f;
  if constexpr (kCached) write_cached<VEC>(cache, out, sl.len, [&](float y) { return ok ? exp2f(y - ms.x) * inv : 0.f; });
  else write_row<VEC>(row, out, sl.len, [&](float x) { return ok ? exp2f(x * scale - ms.x) * inv : 0.f; });
  cluster_wait(cluster);
}

// A row kernel's four instantiations, indexed [cached][vec4] (vec4: 4-element loads).
template <typename P>
using RowKernels = void (*const[2][2])(P, int, int);

// Launches the form of `kernels` that split_rows picks for `rows` rows.
template <typename P>
cudaError_t launch_rows(RowKernels<P>& kernels, const P& p, int rows, bool vec4, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const RowSplit split = split_rows(p.vocab, rows);
  void (*kernel)(P, int, int) = kernels[split.cached][vec4];
  const size_t smem = split.cached ? (size_t)split.slice * sizeof(float) : 0;
  int fits = 0;
  cudaError_t err = prepare_kernel(reinterpret_cast<const void*>(kernel), kThreads, smem, &fits);
  if (err != cudaSuccess) return err;
  return launch_pdl_clusters(split.cluster, kernel, dim3(rows * split.cluster), dim3(kThreads), smem, stream, p,
                             split.cluster, split.slice);
}

template <Renorm kMode, typename T>
cudaError_t launch_renorm(const RenormParams& p, int rows, bool vec4, cudaStream_t stream) {
  static RowKernels<RenormParams> kernels = {{renorm_kernel<kMode, 1, T, false>, renorm_kernel<kMode, 4, T, false>},
                                             {renorm_kernel<kMode, 1, T, true>, renorm_kernel<kMode, 4, T, true>}};
  return launch_rows(kernels, p, rows, vec4, stream);
}

template <typename T>
cudaError_t launch_softmax(const SoftmaxParams& p, int rows, bool vec4, cudaStream_t stream) {
  static RowKernels<SoftmaxParams> kernels = {{softmax_kernel<1, T, false>, softmax_kernel<4, T, false>},
                                              {softmax_kernel<1, T, true>, softmax_kernel<4, T, true>}};
  return launch_rows(kernels, p, rows, vec4, stream);
}

}  // namespace sampling
}  // namespace flashinfer

// Sampling: draws from a row's distribution under top-k / top-p / min-p filters, one block a row; the check of a
// chain of speculative draft tokens, one block a request; and the row helpers shared with sampling_cluster.cuh
// (softmax, renormalised probabilities, masked logits). Torch-free.
//
// A row p of `vocab` non-negative weights (probabilities, not necessarily normalised; total = sum p):
//   top-k keeps i when fewer than k entries are larger than p_i (every entry tied with the k-th largest is kept);
//   top-p keeps i when the entries larger than p_i hold less than top_p * total: the smallest set of largest entries
//         whose mass reaches top_p, ties with its smallest kept;
//   min-p keeps i when p_i >= min_p * max p.
// Filters given together keep the intersection (FlashInfer's "joint" order). A draw picks a kept i with probability
// p_i / (mass kept). top_k <= 0 or >= vocab, top_p >= 1 and min_p <= 0 switch a filter off.
//
// Draws are rejection rounds over a shrinking candidate set {p > low} (every entry <= low is known to be filtered
// out): draw i from the candidates by one scan of the row, then one pass counts the entries and the mass above p_i
// and above a second pivot halfway to `high`; i is kept -> done, else low rises to the larger pivot known to be
// filtered out. Every round is exact (a kept draw is distributed as the kept set's weights), so no threshold is
// ever computed; the largest entry is always kept, so the rounds end (capped at kMaxRounds, then the largest).
// The renormalising and masking ops need the threshold itself: a radix select, sampling_cluster.cuh.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "common/pdl.cuh"
#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "common/vec.cuh"

namespace flashinfer {
namespace sampling {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRounds = 64;

// A filter parameter of draw b: arr[b] when the per-row tensor is given, else the scalar.
template <typename V>
struct PerRow {
  const V* arr;
  V val;
  __device__ __forceinline__ V at(int b) const { return arr ? arr[b] : val; }
};

// The Philox key of request b: seed and offset, each int64 [1] (step 0: one for all) or [batch] (step 1).
struct PhiloxKeys {
  const int64_t* seed;
  const int64_t* offset;
  int seed_step, offset_step;
  __device__ __forceinline__ uint64_t seed_of(int b) const { return (uint64_t)seed[b * seed_step]; }
  __device__ __forceinline__ uint64_t offset_of(int b) const { return (uint64_t)offset[b * offset_step]; }
};

struct SampleParams {
  const float* probs;      // [rows, vocab], row stride `stride` (elements), last dim contiguous
  int64_t stride;
  int rows, vocab;         // vocab < 2^24: counts are kept exactly in fp32
  const int32_t* indices;  // [batch]: the row of probs draw b uses; null: row b
  PerRow<int32_t> top_k;   // [batch] or scalar
  PerRow<float> top_p, min_p;
  PhiloxKeys keys;
  int32_t* out;            // [batch]
  bool* valid;             // [batch]: the row has a positive, finite total (else out = its first largest entry)
};

// Speculative sampling over a chain of n draft tokens a request (definition: chain_speculative_sampling in
// csrc/registration.cpp). Rows contiguous; the uniforms are philox_uniform(seed, offset, request, i): i < n for the
// keep tests, n for the draw, as the CPU op takes them, so both keep the same tokens for the same (seed, offset).
struct SpecParams {
  const float* draft;        // [batch, n, vocab]
  const int32_t* draft_ids;  // [batch, n]
  const float* target;       // [batch, n + 1, vocab]
  int n, vocab;
  PhiloxKeys keys;
  int32_t* out;              // [batch, n + 1]
  int32_t* accepted;         // [batch]
  int32_t* emitted;          // [batch]
};

// Order-preserving 32-bit keys of floats (NaN aside): a < b <=> key(a) < key(b).
__device__ __forceinline__ uint32_t float_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return u ^ ((u >> 31) ? 0xffffffffu : 0x80000000u);
}
__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float(k ^ ((k >> 31) ? 0x80000000u : 0xffffffffu));
}

// A thread's entries of a row, a tile at a time: kChunks vectors of VEC consecutive entries, the thread's chunk of
// the tile contiguous (entries tile + (tid * kChunks + c) * VEC ..), all loads of a tile issued before any is used.
// One block walks a whole row, so at small batches the loads a thread keeps in flight set the speed: one 16-byte
// load at a time ran a 128k-entry pass in about 15 us on an H200. VEC 4 needs vocab % 4 == 0 and 16-byte aligned rows
// (the launcher checks), so a vector is wholly inside the row or wholly past it.
constexpr int kChunks = 4;

template <int VEC>
constexpr int kTileEntries = kThreads * kChunks * VEC;

template <int VEC, typename T>
__device__ __forceinline__ void load_tile(const T* row, int vocab, int tile, float (&x)[kChunks * VEC]) {
  const int base = tile + threadIdx.x * kChunks * VEC;
  Vec<T, VEC> v[kChunks];
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
    if (base + c * VEC < vocab) v[c] = Vec<T, VEC>::load(row + base + c * VEC);
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[c * VEC + j] = base + c * VEC < vocab ? to_float(v[c].v[j]) : NAN;
}

// Calls f(i, x) for the thread's entries of a row (past the row's end: skipped), in the same order every pass.
template <int VEC, typename T, typename F>
__device__ __forceinline__ void for_row(const T* row, int vocab, F&& f) {
  for (int tile = 0; tile < vocab; tile += kTileEntries<VEC>) {
    float x[kChunks * VEC];
    load_tile<VEC>(row, vocab, tile, x);
    const int base = tile + threadIdx.x * kChunks * VEC;
#pragma unroll
    for (int e = 0; e < kChunks * VEC; ++e)
      if (base + e < vocab) f(base + e, x[e]);
  }
}

// out[i] = f(row[i]) over the thread's entries (out contiguous, of the output type O).
template <int VEC, typename T, typename O, typename F>
__device__ __forceinline__ void write_row(const T* row, O* out, int vocab, F&& f) {
  for (int tile = 0; tile < vocab; tile += kTileEntries<VEC>) {
    float x[kChunks * VEC];
    load_tile<VEC>(row, vocab, tile, x);
    const int base = tile + threadIdx.x * kChunks * VEC;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      if (base + c * VEC >= vocab) continue;
      Vec<O, VEC> y;
#pragma unroll
      for (int j = 0; j < VEC; ++j) y.v[j] = from_float<O>(f(x[c * VEC + j]));
      y.store(out + base + c * VEC);
    }
  }
}

// Sums of N values over the block, in a fixed order (the same bits every run), returned to every thread.
template <int N>
__device__ __forceinline__ void block_sums(float (&v)[N], float* scratch /* N * kWarps */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    v[n] = warp_sum(v[n]);
    if (lane == 0) scratch[n * kWarps + warp] = v[n];
  }
  __syncthreads();
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(lane < kWarps ? scratch[n * kWarps + lane] : 0.f);
  __syncthreads();
}

// Maximum over the block (NaN ignored), returned to every thread.
__device__ __forceinline__ float block_max(float x, float* scratch /* kWarps */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = lane < kWarps ? scratch[lane] : -INFINITY;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  __syncthreads();
  return x;
}

// Two online-softmax states (maximum, sum of base-2 exponentials below it) as one; -inf maxima hold nothing.
__device__ __forceinline__ float2 merge_max_sum(float2 a, float2 b) {
  const float m = fmaxf(a.x, b.x);
  if (m == -INFINITY) return a;
  return float2{m, (a.x == -INFINITY ? 0.f : a.y * exp2f(a.x - m)) + (b.x == -INFINITY ? 0.f : b.y * exp2f(b.x - m))};
}

// The block's online-softmax state, merged in a fixed order and returned to every thread.
__device__ __forceinline__ float2 block_max_sum(float2 ms, float* scratch /* 2 * kWarps */) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    ms = merge_max_sum(ms, float2{__shfl_xor_sync(0xffffffffu, ms.x, off), __shfl_xor_sync(0xffffffffu, ms.y, off)});
  if (lane == 0) scratch[warp] = ms.x, scratch[kWarps + warp] = ms.y;
  __syncthreads();
  ms = float2{lane < kWarps ? scratch[lane] : -INFINITY, lane < kWarps ? scratch[kWarps + lane] : 0.f};
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    ms = merge_max_sum(ms, float2{__shfl_xor_sync(0xffffffffu, ms.x, off), __shfl_xor_sync(0xffffffffu, ms.y, off)});
  __syncthreads();
  return ms;
}

// The row's largest entry (the first on ties; NaN never wins), its index and the row's total.
struct RowTop {
  float max, total;
  int argmax;
};

__device__ __forceinline__ void better_max(float& m, int& i, float om, int oi) {
  if (om > m || (om == m && oi < i)) m = om, i = oi;
}

// The block's largest (m, i) (the first index on ties), returned to every thread.
__device__ __forceinline__ void block_argmax(float& m, int& i, float* scratch, int* iscratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    better_max(m, i, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, i, off));
  if (lane == 0) scratch[warp] = m, iscratch[warp] = i;
  __syncthreads();
  m = lane < kWarps ? scratch[lane] : -INFINITY;
  i = lane < kWarps ? iscratch[lane] : INT_MAX;
#pragma unroll
  for (int off = 16; off > 0; off /= 2)
    better_max(m, i, __shfl_xor_sync(0xffffffffu, m, off), __shfl_xor_sync(0xffffffffu, i, off));
  __syncthreads();
}

template <int VEC, typename T>
__device__ RowTop row_top(const T* row, int vocab, float* scratch, int* iscratch) {
  float m = -INFINITY, s = 0.f;
  int i = INT_MAX;
  for_row<VEC>(row, vocab, [&](int j, float x) {
    better_max(m, i, x, j);
    s += x;
  });
  block_argmax(m, i, scratch, iscratch);
  float t[1] = {s};
  block_sums(t, scratch);
  return {m, t[0], i == INT_MAX ? 0 : i};
}

// The first entry i whose running sum of weights over the row passes target, or -1 when target is at or past the
// total. load(tile, w) gives the thread's weights of a tile (load_tile's entries; 0 for entries that do not count and
// past the row's end). The threads' intervals [before, before + own) tile the row exactly: each bound is computed by
// the same float operations as its neighbour's, so exactly one thread claims a target below the total.
template <int VEC, typename L>
__device__ int scan_pick_weights(int vocab, float target, L&& load, float* warp_tot, int* found) {
  constexpr int kE = kChunks * VEC;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) *found = INT_MAX;
  float running = 0.f;
  for (int tile = 0; tile < vocab; tile += kTileEntries<VEC>) {
    const int base = tile + threadIdx.x * kE;
    float w[kE], own = 0.f;
    load(tile, w);
#pragma unroll
    for (int e = 0; e < kE; ++e) own += w[e];
    float incl = own;
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const float t = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += t;
    }
    float excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = 0.f;
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    float before = 0.f, tile_total = 0.f;
    for (int w2 = 0; w2 < kWarps; ++w2) {
      if (w2 == warp) before = tile_total;
      tile_total += warp_tot[w2];
    }
    const float lo = running + (before + excl), hi = running + (before + incl);
    if (own > 0.f && target >= lo && target < hi) {
      float acc = lo;
      int pick = -1;
#pragma unroll
      for (int e = 0; e < kE; ++e)
        if (w[e] > 0.f && (pick < 0 || acc <= target)) acc += w[e], pick = base + e;  // the last if rounding runs out
      atomicMin(found, pick);
    }
    __syncthreads();
    const int f = *found;
    if (f != INT_MAX) return f;
    running += tile_total;
  }
  return -1;
}

// scan_pick_weights over the row's candidates (cand(x) true, weight x).
template <int VEC, typename C>
__device__ int scan_pick(const float* row, int vocab, float target, C&& cand, float* warp_tot, int* found) {
  return scan_pick_weights<VEC>(vocab, target, [&](int tile, float (&w)[kChunks * VEC]) {
    const int base = tile + threadIdx.x * kChunks * VEC;
    load_tile<VEC>(row, vocab, tile, w);
#pragma unroll
    for (int e = 0; e < kChunks * VEC; ++e) w[e] = base + e < vocab && cand(w[e]) ? w[e] : 0.f;
  }, warp_tot, found);
}

template <int VEC>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  __shared__ float scratch[4 * kWarps];
  __shared__ int iscratch[kWarps];
  __shared__ int found;
  const int b = blockIdx.x;
  pdl_enter();
  const int src = p.indices ? p.indices[b] : b;
  if (src < 0 || src >= p.rows) {  // an index out of range reads nothing
    if (threadIdx.x == 0) p.out[b] = 0, p.valid[b] = false;
    return;
  }
  const float* row = p.probs + (int64_t)src * p.stride;
  const int k = p.top_k.at(b);
  const float top_p = p.top_p.at(b), min_p = p.min_p.at(b);
  const bool use_k = k > 0 && k < p.vocab, use_p = top_p < 1.f, use_min = min_p > 0.f;
  const RowTop top = row_top<VEC>(row, p.vocab, scratch, iscratch);
  const bool ok = top.total > 0.f && top.total < INFINITY;
  int pick = top.argmax;
  // No mass to draw from, or a top-p of 0 (only the largest entry): the first largest entry.
  if (ok && !(use_p && !(top_p > 0.f))) {
    const float floor_p = use_min ? min_p * top.max : -INFINITY;
    const float p_mass = top_p * top.total;
    float low = -INFINITY, high = top.max, q = top.total;
    if (use_min) {
      float t[1] = {0.f};
      for_row<VEC>(row, p.vocab, [&](int, float x) { t[0] += x >= floor_p ? x : 0.f; });
      block_sums(t, scratch);
      q = t[0];
    }
    const uint64_t seed = p.keys.seed_of(b), offset = p.keys.offset_of(b);
    for (int round = 0; round < kMaxRounds; ++round) {
      const float target = philox_uniform(seed, offset, (uint32_t)b, (uint32_t)round) * q;
      const int i = scan_pick<VEC>(row, p.vocab, target, [&](float x) { return x > low && x >= floor_p; }, scratch,
                                   &found);
      const int cand = i < 0 ? top.argmax : i;  // a target at the candidates' total by rounding: the largest entry
      if (!use_k && !use_p) {  // min-p alone (or no filter): every candidate is kept
        pick = cand;
        break;
      }
      const float pivot0 = row[cand], pivot1 = 0.5f * (pivot0 + high);
      float a[4] = {0.f, 0.f, 0.f, 0.f};  // count and mass above pivot0, above pivot1
      for_row<VEC>(row, p.vocab, [&](int, float x) {
        if (x > pivot0) a[0] += 1.f, a[1] += x;
        if (x > pivot1) a[2] += 1.f, a[3] += x;
      });
      block_sums(a, scratch);
      if ((!use_k || a[0] < (float)k) && (!use_p || a[1] < p_mass)) {
        pick = cand;
        break;
      }
      if ((!use_k || a[2] < (float)k) && (!use_p || a[3] < p_mass)) {
        low = pivot0, high = pivot1, q = a[1];
      } else {
        low = pivot1, q = a[3];
      }
    }
  }
  if (threadIdx.x == 0) p.out[b] = pick, p.valid[b] = ok;
}

// Sum over the block of the weights load(tile, w) gives (see scan_pick_weights), in a fixed order.
template <int VEC, typename L>
__device__ float weights_total(int vocab, L&& load, float* scratch) {
  float t[1] = {0.f};
  for (int tile = 0; tile < vocab; tile += kTileEntries<VEC>) {
    float w[kChunks * VEC];
    load(tile, w);
#pragma unroll
    for (int e = 0; e < kChunks * VEC; ++e) t[0] += w[e];
  }
  block_sums(t, scratch);
  return t[0];
}

// One block a request: the keep tests (a thread a draft position), then one draw over the vocabulary at the first
// position not kept. Every branch below is uniform over the block (its conditions come from block reductions).
template <int VEC>
__global__ void __launch_bounds__(kThreads) chain_speculative_kernel(SpecParams p) {
  constexpr int kE = kChunks * VEC;
  __shared__ float scratch[kWarps];
  __shared__ int iscratch[kWarps];
  __shared__ int found, kept_s, first_s;
  const int b = blockIdx.x, n = p.n, vocab = p.vocab;
  pdl_enter();
  const uint64_t seed = p.keys.seed_of(b), offset = p.keys.offset_of(b);
  const int32_t* ids = p.draft_ids + (int64_t)b * n;
  const float* draft = p.draft + (int64_t)b * n * vocab;
  const float* target = p.target + (int64_t)b * (n + 1) * vocab;
  if (threadIdx.x == 0) kept_s = 0, first_s = n;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const int t = ids[i];
    const float u = philox_uniform(seed, offset, (uint32_t)b, (uint32_t)i);
    // A token outside the vocabulary reads nothing and is not kept. NaN probabilities never keep a token.
    if (t >= 0 && t < vocab && u * draft[(int64_t)i * vocab + t] < target[(int64_t)i * vocab + t]) {
      atomicAdd(&kept_s, 1);
    } else {
      atomicMin(&first_s, i);
    }
  }
  __syncthreads();
  const int j = first_s;
  const float* pj = target + (int64_t)j * vocab;
  const float u = philox_uniform(seed, offset, (uint32_t)b, (uint32_t)n);
  int pick = -1;
  if (j < n) {  // the residual max(target - draft, 0) at the first position not kept
    const float* qj = draft + (int64_t)j * vocab;
    auto residual = [&](int tile, float (&w)[kE]) {
      const int base = tile + threadIdx.x * kE;
      float d[kE];
      load_tile<VEC>(pj, vocab, tile, w);
      load_tile<VEC>(qj, vocab, tile, d);
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const float r = w[e] - d[e];
        w[e] = base + e < vocab && r > 0.f ? r : 0.f;
      }
    };
    const float total = weights_total<VEC>(vocab, residual, scratch);
    if (total > 0.f && total < INFINITY)
      pick = scan_pick_weights<VEC>(vocab, u * total, residual, scratch, &found);
  }
  if (pick < 0) {  // every draft token kept (the bonus token), or a residual without mass: the target row
    auto positive = [&](int tile, float (&w)[kE]) {
      const int base = tile + threadIdx.x * kE;
      load_tile<VEC>(pj, vocab, tile, w);
#pragma unroll
      for (int e = 0; e < kE; ++e) w[e] = base + e < vocab && w[e] > 0.f ? w[e] : 0.f;
    };
    const float total = weights_total<VEC>(vocab, positive, scratch);
    if (total > 0.f && total < INFINITY)
      pick = scan_pick_weights<VEC>(vocab, u * total, positive, scratch, &found);
  }
  if (pick < 0) {  // no positive finite mass (or a target at the total by rounding): the first largest entry
    float m = -INFINITY;
    int i = INT_MAX;
    for_row<VEC>(pj, vocab, [&](int v, float x) { better_max(m, i, x, v); });
    block_argmax(m, i, scratch, iscratch);
    pick = i == INT_MAX ? 0 : i;
  }
  int32_t* out = p.out + (int64_t)b * (n + 1);
  for (int i = threadIdx.x; i <= n; i += kThreads) out[i] = i < j ? ids[i] : i == j ? pick : -1;
  if (threadIdx.x == 0) p.accepted[b] = kept_s, p.emitted[b] = j;
}

inline cudaError_t launch_chain_speculative(const SpecParams& p, int batch, bool vec4, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  return vec4 ? launch_pdl(chain_speculative_kernel<4>, dim3(batch), dim3(kThreads), 0, stream, p)
              : launch_pdl(chain_speculative_kernel<1>, dim3(batch), dim3(kThreads), 0, stream, p);
}

// One block a draw; VEC 4 when every row starts on a 16-byte boundary of 4-element groups (the caller
// passes vec4 = vocab % 4 == 0, row stride % 4 == 0, 16-byte aligned base), else 1.
inline cudaError_t launch_sample(const SampleParams& p, int batch, bool vec4, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  return vec4 ? launch_pdl(sample_kernel<4>, dim3(batch), dim3(kThreads), 0, stream, p)
              : launch_pdl(sample_kernel<1>, dim3(batch), dim3(kThreads), 0, stream, p);
}

}  // namespace sampling
}  // namespace flashinfer

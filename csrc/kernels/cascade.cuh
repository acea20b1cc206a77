// Attention-state merges (cascade attention): attention over KV split into disjoint pieces, recombined from each
// piece's output v and log2-sum-exp s. Torch-free.
//
// A state is v [seq, H, D] with s [seq, H] float32, s = log2 sum_j 2^(score_j) over the piece's keys (base 2, as
// every attention op of the library returns it) and v the softmax-weighted mean of the piece's values. States over
// disjoint keys merge exactly:
//   S = log2 sum_k 2^(s_k),   V = sum_k 2^(s_k - S) v_k,
// computed from M = max_k s_k so that no power overflows. A row where every s_k is -inf (no key in any piece)
// merges to V = 0, S = -inf, the attention ops' own answer for a row that sees no key.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/dispatch.h"
#include "common/fastdiv.cuh"
#include "common/pdl.cuh"
#include "common/vec.cuh"

namespace flashinfer {
namespace cascade {

// `num` states of one tensor (merge_states) or a single state (num = 1, the state stride unused).
struct States {
  const void* v;     // [seq, num, H, D], D contiguous, through the element strides below
  const float* s;    // [seq, num, H]
  int64_t v_seq, v_state, v_head;
  int64_t s_seq, s_state, s_head;
  int num;
};

struct Params {
  States in[2];      // merge_state: a and b; merge_states: in[0] holds them all and in[1].num = 0
  void* v_out;       // [seq, H, D] (the in-place merge writes in[0]'s tensors)
  float* s_out;      // [seq, H]
  int64_t vo_seq, vo_head, so_seq, so_head;
  const bool* mask;  // [seq] or null: rows where it is false are neither read nor written
  uint32_t pairs;    // seq * H (row, head) pairs, each merged on its own
  FastDiv heads;     // pair -> (row, head)
  int head_dim;      // >= 1
  int group_log2;    // a pair's D is covered by 2^group_log2 lanes of a warp, kPer vectors of VEC elements each
  int split_log2;    // merge_states: 2^split_log2 such groups share a pair's states, combined in shared memory
};

constexpr int kThreads = 128;
// Vectors a lane keeps in flight per row (32 bytes of 16-bit data). Measured on an H200 (bf16, 32 heads, D 128,
// kernels timed in a CUDA graph), 1 / 2 / 4: merge_state of 16384 rows 109 / 95 / 113 us; merge_states of 8192 x 4
// states 91 us at 2, 112 at 4. One vector a lane repeats the index math and s reads over fewer bytes; four hold
// twice the registers (128 a thread).
constexpr int kVectorsPerLane = 2;
// merge_states: a group of lanes walks at least this many of a pair's states before groups split them further;
// with fewer, the combine in shared memory costs more than the parallelism gains (64 rows x 16 states, H200:
// 8.7 us at one state a group, 5.5 at two, 5.2 at four, 6.9 at eight).
constexpr int kMinStatesPerGroup = 4;
// merge_states: threads an SM one round of its blocks holds (8 blocks of 128 at this kernel's registers, H200).
// Splitting a pair's states past it starts a second, partial round: 64 x 128 states ran 23.4 us at 16 groups a
// pair (2048 blocks) against 20.4 at 8 (1024 blocks, one round).
constexpr int kStatesThreadsPerSM = 1024;

// Weights are 2^(s - M); a state with s = -inf weighs 0 (and M = -inf only when every state does).
__device__ __forceinline__ float state_weight(float s, float m) { return m == -INFINITY ? 0.f : exp2f(s - m); }

// Where a block's threads sit: kThreads / (group * split) pair slots, each of `split` groups of `group` lanes. A
// lane covers elements c + (i * group + lane) * VEC, i < kPer, of each chunk of group * kPer * VEC starting at c,
// so that for each i a group reads one contiguous run of its row.
struct Place {
  int lane, sub, slot;
  uint32_t pair, row, h;
  bool live;  // a pair of the launch (the pair kernel also tests the mask)
  __device__ __forceinline__ Place(const Params& p) {
    lane = threadIdx.x & ((1 << p.group_log2) - 1);
    sub = (threadIdx.x >> p.group_log2) & ((1 << p.split_log2) - 1);
    slot = threadIdx.x >> (p.group_log2 + p.split_log2);
    pair = blockIdx.x * (uint32_t)(kThreads >> (p.group_log2 + p.split_log2)) + slot;
    row = p.heads.div(pair);
    h = pair - row * p.heads.d;
    live = pair < p.pairs;
  }
};

// merge_state and merge_state_in_place: p.in holds one state each. Every load a lane needs for its first chunk (both
// s values and both v rows) is issued before any of them is used, so a row costs one memory round trip.
template <typename T, int VEC, int kPer>
__global__ void __launch_bounds__(kThreads) merge_pair_kernel(Params p) {
  using TV = Vec<T, VEC>;
  Place at(p);
  pdl_enter();
  const bool live = at.live && (p.mask == nullptr || p.mask[at.row]);
  const States &a = p.in[0], &b = p.in[1];
  const T* va = static_cast<const T*>(a.v) + at.row * a.v_seq + at.h * a.v_head;
  const T* vb = static_cast<const T*>(b.v) + at.row * b.v_seq + at.h * b.v_head;
  const int step = VEC << p.group_log2;  // between a lane's vectors
  const int lane0 = at.lane * VEC;
  float sa = -INFINITY, sb = -INFINITY;
  TV xa[kPer], xb[kPer];
  const auto load = [&](int c) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (c + i * step + lane0 < p.head_dim) {
        xa[i] = TV::load(va + c + i * step + lane0);
        xb[i] = TV::load(vb + c + i * step + lane0);
      }
    }
  };
  if (live) {
    sa = a.s[at.row * a.s_seq + at.h * a.s_head];
    sb = b.s[at.row * b.s_seq + at.h * b.s_head];
    load(0);
  }
  const float m = fmaxf(sa, sb), ea = state_weight(sa, m), eb = state_weight(sb, m), den = ea + eb;
  const float inv = den > 0.f ? 1.f / den : 0.f, wa = ea * inv, wb = eb * inv;
  T* out = static_cast<T*>(p.v_out) + at.row * p.vo_seq + at.h * p.vo_head;
  for (int c = 0; live && c < p.head_dim; c += kPer * step) {
    if (c > 0) load(c);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (c + i * step + lane0 >= p.head_dim) continue;
      TV o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_float<T>(wa * to_float(xa[i].v[j]) + wb * to_float(xb[i].v[j]));
      o.store(out + c + i * step + lane0);
    }
  }
  // The in-place merge overwrites s_a, which the group's other lanes read above: all of them are past their reads.
  __syncwarp();
  if (live && at.lane == 0) p.s_out[at.row * p.so_seq + at.h * p.so_head] = den > 0.f ? m + log2f(den) : -INFINITY;
}

// merge_states with split > 1: adds the acc and den of a slot's split groups (lane by lane) and hands the sums to
// group 0. Called by every thread of the block (it holds barriers). Thread `sub` of a lane adds positions sub,
// sub + split, ... over the groups, so the adding is spread over all of them.
template <int kQ>
__device__ __forceinline__ float add_over_split(float (&acc)[kQ], float den, int sub, int split, int group_log2) {
  __shared__ float part[kQ][kThreads];  // [position][thread]: the stores of a warp fall in distinct banks
  __shared__ float part_den[kThreads];
  __syncthreads();  // the previous chunk's readers are done
#pragma unroll
  for (int q = 0; q < kQ; ++q) part[q][threadIdx.x] = acc[q];
  part_den[threadIdx.x] = den;
  __syncthreads();
  const int base = threadIdx.x - (sub << group_log2);  // group 0's thread of this lane
  for (int q = sub; q < kQ; q += split) {
    float t = 0.f;
    for (int g = 0; g < split; ++g) t += part[q][base + (g << group_log2)];
    part[q][base] = t;
  }
  __syncthreads();
  float total = 0.f;
  for (int g = 0; g < split; ++g) total += part_den[base + (g << group_log2)];
#pragma unroll
  for (int q = 0; q < kQ; ++q) acc[q] = part[q][threadIdx.x];  // group 0 keeps them; the others drop theirs
  return total;
}

// merge_states: p.in[0] holds num states a row, group g of a slot takes states g, g + split, ... One pass over them
// keeps a running maximum and rescales the sums when it grows, so the s and v loads of four states go out together
// (a separate pass for the maximum would add a memory round trip before the first v load). With split > 1 the
// slot's groups then bring their sums to the slot's maximum and add them in shared memory.
template <typename T, int VEC, int kPer>
__global__ void __launch_bounds__(kThreads) merge_states_kernel(Params p) {
  using TV = Vec<T, VEC>;
  constexpr int kQ = kPer * VEC;  // elements a lane holds per chunk
  Place at(p);
  pdl_enter();
  const States& in = p.in[0];
  const int split = 1 << p.split_log2, num = at.live ? in.num : 0;
  const float* s = in.s + at.row * in.s_seq + at.h * in.s_head;
  const T* v = static_cast<const T*>(in.v) + at.row * in.v_seq + at.h * in.v_head;
  const int step = VEC << p.group_log2, lane0 = at.lane * VEC;
  float m = -INFINITY, den = 0.f;
  for (int c = 0; c < p.head_dim; c += kPer * step) {
    float acc[kQ] = {};
    m = -INFINITY, den = 0.f;  // every chunk recomputes them, in the same order: the same values
    // Not unrolled: one state's loads at a time keeps the kernel under 64 registers, 8 blocks an SM, and the other
    // resident warps hide the latency; unrolled by 4 it held 70 (7 blocks) and ran 3-12% slower at every shape
    // measured (64 x 16 to 8192 x 4 states, H200).
#pragma unroll 1
    for (int k = at.sub; k < num; k += split) {
      const float sk = s[k * in.s_state];
      TV x[kPer];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
        if (c + i * step + lane0 < p.head_dim) x[i] = TV::load(v + k * in.v_state + c + i * step + lane0);
      const float grown = fmaxf(m, sk), scale = state_weight(m, grown), w = state_weight(sk, grown);
      m = grown;
      den = fmaf(den, scale, w);
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[i * VEC + j] = fmaf(acc[i * VEC + j], scale, w * to_float(x[i].v[j]));
    }
    if (split > 1) {  // uniform across the launch: every thread reaches the barriers
      __shared__ float shared_m[kThreads];
      __syncthreads();  // the previous chunk's readers are done
      shared_m[threadIdx.x] = m;
      __syncthreads();
      const int base = threadIdx.x - (at.sub << p.group_log2);
      float top = m;
      for (int g = 0; g < split; ++g) top = fmaxf(top, shared_m[base + (g << p.group_log2)]);
      const float scale = state_weight(m, top);
#pragma unroll
      for (int q = 0; q < kQ; ++q) acc[q] *= scale;
      m = top;
      den = add_over_split(acc, den * scale, at.sub, split, p.group_log2);
    }
    if (!at.live || at.sub != 0) continue;
    const float inv = den > 0.f ? 1.f / den : 0.f;
    T* out = static_cast<T*>(p.v_out) + at.row * p.vo_seq + at.h * p.vo_head;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if (c + i * step + lane0 >= p.head_dim) continue;
      TV o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = from_float<T>(acc[i * VEC + j] * inv);
      o.store(out + c + i * step + lane0);
    }
  }
  if (at.live && at.sub == 0 && at.lane == 0)
    p.s_out[at.row * p.so_seq + at.h * p.so_head] = den > 0.f ? m + log2f(den) : -INFINITY;
}

// How a launch covers the pairs: the fewest lanes whose kPer vectors reach across D (at most a warp; wider heads
// loop over chunks), and for merge_states, a pair's states shared among 2^split_log2 groups (64 rows of 128 states:
// 128 blocks in all without it) while the groups fit in a block, each keeps kMinStatesPerGroup states and the launch
// stays within one round of resident blocks.
inline void plan_cover(Params& p, int vec, int per, int sm_count, bool pair) {
  p.group_log2 = 0;
  while (p.group_log2 < 5 && (int64_t(per) * vec << p.group_log2) < p.head_dim) ++p.group_log2;
  p.split_log2 = 0;
  const int64_t round = int64_t(sm_count) * kStatesThreadsPerSM;
  while (!pair && (2 << (p.group_log2 + p.split_log2)) <= kThreads &&
         (kMinStatesPerGroup << (p.split_log2 + 1)) <= p.in[0].num &&
         (int64_t(p.pairs) << (p.group_log2 + p.split_log2 + 1)) <= round)
    ++p.split_log2;
}

template <bool kPair, int kPer, typename T>
cudaError_t launch_per(Params p, int vec, int sm_count, cudaStream_t stream) {
  if (p.pairs == 0) return cudaSuccess;
  plan_cover(p, vec, kPer, sm_count, kPair);
  const uint32_t slots = kThreads >> (p.group_log2 + p.split_log2);
  const dim3 grid((p.pairs + slots - 1) / slots), block(kThreads);
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_VEC(vec, VEC, {
    if constexpr (VEC * sizeof(T) > 16) {  // wider than a 16-byte load: never chosen (widest_vec)
      err = cudaErrorInvalidValue;
    } else if constexpr (kPair) {
      err = launch_pdl(merge_pair_kernel<T, VEC, kPer>, grid, block, 0, stream, p);
    } else {
      err = launch_pdl(merge_states_kernel<T, VEC, kPer>, grid, block, 0, stream, p);
    }
  })
  return err;
}

// p.in: two single states (merge_state, merge_state_in_place: in[1].num = 1) or in[0] with num states and
// in[1].num = 0 (merge_states). `vec` divides head_dim and keeps every row of every v on a VEC-element boundary
// (the caller checks: widest_vec).
template <typename T>
cudaError_t launch(Params p, int vec, int sm_count, cudaStream_t stream) {
  return p.in[1].num == 1 ? launch_per<true, kVectorsPerLane, T>(p, vec, sm_count, stream)
                           : launch_per<false, kVectorsPerLane, T>(p, vec, sm_count, stream);
}

}  // namespace cascade
}  // namespace flashinfer

// Rotary position embedding for q [nnz, Hq, D] and k [nnz, Hk, D]. Torch-free.
//
// One block per token. The block first fills shared memory with cos/sin for the rotary_dim/2 frequencies of
// its position (angles reduced in double precision, or read from a cos/sin cache), then every head of q and k
// rotates from that table. A short batch with a cos/sin cache instead spreads each token over several blocks
// that read their angles straight from the cache row (rope_spread_kernel). Positions come from pos_ids, or from a
// ragged indptr/offsets pair (pos = offsets[b] + t - indptr[b]), found by binary search so the grid depends only
// on nnz.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

#include "common/dispatch.h"
#include "common/pdl.cuh"
#include "common/vec.cuh"

namespace flashinfer {
namespace rope {

struct Params {
  const void* q;            // [nnz, hq, head_dim], strides below (elements)
  const void* k;            // [nnz, hk, head_dim]
  void* q_out;              // may equal q (in place)
  void* k_out;              // may equal k
  int64_t q_stride_n, q_stride_h, k_stride_n, k_stride_h;
  int64_t qo_stride_n, qo_stride_h, ko_stride_n, ko_stride_h;
  int64_t nnz;
  int hq, hk, head_dim, rotary_dim;

  // Position source: pos_ids if non-null (dtype P), else the ragged pair.
  const void* pos_ids;      // [nnz]
  const int32_t* indptr;    // [batch + 1]
  const int32_t* offsets;   // [batch]
  int batch;

  // Angle source: the cos/sin cache if use_cache, else computed from the frequency parameters.
  bool use_cache;
  const float* cos_sin_cache;  // [cache_len, rotary_dim]: cos in the first half, sin in the second
  int64_t cache_len, cache_stride;
  double theta;             // base
  double freq_exp;          // -2 log2(theta) / rotary_dim: set by launch(), freq_i = 2^(i * freq_exp)
  double rcp_scale;         // 1 / rope_scale
  bool llama31;             // Llama 3.1 frequency smoothing with the two constants below
  double smooth_a, smooth_b;

  bool interleave;          // pairs (2i, 2i+1) instead of (i, i + rotary_dim/2)
  bool copy_rest;           // also write dims [rotary_dim, head_dim) of the outputs (out of place)
};

// Position of token t, or false when it lies outside every request of the ragged batch (padding).
template <typename P>
__device__ __forceinline__ bool token_position(const Params& p, int64_t t, double& pos) {
  if (p.pos_ids != nullptr) {
    pos = (double)static_cast<const P*>(p.pos_ids)[t];
    return true;
  }
  if (p.batch == 0 || t < p.indptr[0] || t >= p.indptr[p.batch]) return false;
  int lo = 0, hi = p.batch - 1;  // largest b with indptr[b] <= t; terminates whatever indptr holds
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.indptr[mid] <= t) lo = mid; else hi = mid - 1;
  }
  pos = (double)p.offsets[lo] + (double)(t - p.indptr[lo]);
  return true;
}

// Frequency i of the rotation, from the parameters only (no memory reads).
// theta^(-2i / rotary_dim) as one exp2 of a host-computed exponent: pow and the division took a long batch 10%.
__device__ __forceinline__ double rope_freq(const Params& p, int i) {
  const double freq = exp2(i * p.freq_exp);
  if (p.llama31) {
    const double smooth = fmin(1.0, fmax(0.0, freq * p.smooth_a + p.smooth_b));
    return (1.0 - smooth) * freq * p.rcp_scale + smooth * freq;
  }
  return freq * p.rcp_scale;
}

// Frequency i over pi: the angle per unit of position in the half turns that sincospi takes.
__device__ __forceinline__ double rope_freq_pi(const Params& p, int i) {
  constexpr double kInvPi = 0.318309886183790671537767526745;
  return rope_freq(p, i) * kInvPi;
}

// Item it of token t: vector j of head h of q (h < hq) or k. Rotated items read and write e0 and e1 (VEC adjacent
// pairs when interleaved, two VEC-runs half a rotary_dim apart for NeoX) at frequencies f0 .. f0 + VEC; pass-through
// items (dims past rotary_dim of an out-of-place call) copy e0 only. Both vectors are loaded for every item (e1
// lies inside the head for pass-through items too), so the two loads are in flight together.
template <typename T>
struct Item {
  const T* src;
  T* dst;
  int e0, e1, f0;
  bool copy;
};

// Items per head: half / VEC rotated (n_rot), then the pass-through ones of an out-of-place call.
struct Items {
  int half, n_rot, per_head;
};

template <int VEC>
__host__ __device__ __forceinline__ Items items_of(const Params& p) {
  const int half = p.rotary_dim / 2, n_rot = half / VEC;
  return {half, n_rot, n_rot + (p.copy_rest ? (p.head_dim - p.rotary_dim) / VEC : 0)};
}

template <typename T, int VEC, bool INTERLEAVE>
__device__ __forceinline__ Item<T> locate(const Params& p, const Items& n, int64_t t, int it) {
  const int half = n.half, n_rot = n.n_rot, per_head = n.per_head;
  const int h = it / per_head, j = it % per_head;
  const bool is_q = h < p.hq;
  const int hh = is_q ? h : h - p.hq;
  Item<T> m;
  m.src = is_q ? static_cast<const T*>(p.q) + t * p.q_stride_n + hh * p.q_stride_h
               : static_cast<const T*>(p.k) + t * p.k_stride_n + hh * p.k_stride_h;
  m.dst = is_q ? static_cast<T*>(p.q_out) + t * p.qo_stride_n + hh * p.qo_stride_h
               : static_cast<T*>(p.k_out) + t * p.ko_stride_n + hh * p.ko_stride_h;
  m.copy = j >= n_rot;
  m.f0 = m.copy ? 0 : j * VEC;
  m.e0 = m.copy ? p.rotary_dim + (j - n_rot) * VEC : (INTERLEAVE ? 2 * m.f0 : m.f0);
  m.e1 = INTERLEAVE ? 2 * m.f0 + VEC : half + m.f0;
  return m;
}

// Rotates item m's vectors (a at e0, b at e1) by the angles whose cos/sin are c[k] / s[k], k < VEC, and stores them.
template <typename T, int VEC, bool INTERLEAVE>
__device__ __forceinline__ void rotate_store(const Item<T>& m, Vec<T, VEC> a, Vec<T, VEC> b, const float* c,
                                             const float* s) {
  if (m.copy) {
    a.store(m.dst + m.e0);
    return;
  }
  float x[2 * VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    x[k] = to_float(a.v[k]);
    x[VEC + k] = to_float(b.v[k]);
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    // (x0, x1) is pair k: adjacent elements when interleaved, a[k] and b[k] otherwise.
    float& x0 = INTERLEAVE ? x[2 * k] : x[k];
    float& x1 = INTERLEAVE ? x[2 * k + 1] : x[VEC + k];
    const float r0 = x0 * c[k] - x1 * s[k], r1 = x1 * c[k] + x0 * s[k];
    x0 = r0;
    x1 = r1;
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    a.v[k] = from_float<T>(x[k]);
    b.v[k] = from_float<T>(x[VEC + k]);
  }
  a.store(m.dst + m.e0);
  b.store(m.dst + m.e1);
}

// The order of a block's memory round trips: the previous kernel (pdl_enter), its position, maybe a cos/sin cache
// row, then its q/k vectors. The q/k addresses do not depend on the position, so a short batch, which is bound by
// that latency chain, loads its first kEarly items per thread before reading the position (one block per token,
// as many threads as items / kEarly): the round trips overlap. A long batch is bound by bandwidth instead, and the
// registers those loads hold cost it occupancy, so it loads after the table (kEarly = 0). Measured on an H100
// (stand-alone, bf16, 32 + 8 heads of 128): kEarly 1 at 1 / 128 tokens 1.73 / 2.89 us against 2.65 / 4.32 with
// late loads; kEarly 2 best at 512 tokens, even at 1024; late loads best from 2048 on (at 16384 tokens early loads
// took 154 us against 124).
constexpr int64_t kEarly1Tokens = 256;
constexpr int64_t kEarly2Tokens = 1024;

template <typename T, typename P, int VEC, bool INTERLEAVE, int kEarly>
__global__ void rope_kernel(Params p) {
  extern __shared__ float table[];  // [half] cos, then [half] sin
  using TV = Vec<T, VEC>;
  const int64_t t = blockIdx.x;
  const Items n = items_of<VEC>(p);
  const int half = n.half;
  const int total = (p.hq + p.hk) * n.per_head;
  // The angle is pos * freq; sincospi(pos * freq / pi) reduces its argument exactly, so large positions keep full
  // precision without the slow reduction path of sincos (which cost a long batch 15%). For a short batch the
  // thread's first frequency, which reads no memory, is computed before the wait on the previous kernel.
  const double fpi0 =
      kEarly > 0 && !p.use_cache && (int)threadIdx.x < half ? rope_freq_pi(p, threadIdx.x) : 0.0;
  pdl_enter();

  constexpr int kRegs = kEarly > 0 ? kEarly : 1;
  TV a[kRegs], b[kRegs];
#pragma unroll
  for (int u = 0; u < kEarly; ++u) {
    const int it = threadIdx.x + u * blockDim.x;
    if (it < total) {
      const Item<T> m = locate<T, VEC, INTERLEAVE>(p, n, t, it);
      a[u] = TV::load(m.src + m.e0);
      b[u] = TV::load(m.src + m.e1);
    }
  }

  double pos = 0.0;
  const bool valid = token_position<P>(p, t, pos);
  // One branch around each loop: with the branch inside, a long batch lost 5-7% (H200, 16384 tokens).
  if (p.use_cache) {
    // A position outside the cache has no angle: its rotated dims become NaN rather than reading past the cache.
    const bool in_cache = valid && pos >= 0 && pos < (double)p.cache_len;
    const float* row = p.cos_sin_cache + (in_cache ? (int64_t)pos * p.cache_stride : 0);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      table[i] = in_cache ? row[i] : __int_as_float(0x7fffffff);
      table[half + i] = in_cache ? row[half + i] : __int_as_float(0x7fffffff);
    }
  } else {
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
      float c = 1.f, s = 0.f;  // padding token of a ragged batch: left as it is
      if (valid) {
        double sd, cd;
        sincospi(pos * (kEarly > 0 && i == (int)threadIdx.x ? fpi0 : rope_freq_pi(p, i)), &sd, &cd);
        c = (float)cd;
        s = (float)sd;
      }
      table[i] = c;
      table[half + i] = s;
    }
  }
  __syncthreads();

#pragma unroll
  for (int u = 0; u < kEarly; ++u) {
    const int it = threadIdx.x + u * blockDim.x;
    if (it < total) {
      const Item<T> m = locate<T, VEC, INTERLEAVE>(p, n, t, it);
      rotate_store<T, VEC, INTERLEAVE>(m, a[u], b[u], table + m.f0, table + half + m.f0);
    }
  }
  for (int it = threadIdx.x + kEarly * blockDim.x; it < total; it += blockDim.x) {
    const Item<T> m = locate<T, VEC, INTERLEAVE>(p, n, t, it);
    rotate_store<T, VEC, INTERLEAVE>(m, TV::load(m.src + m.e0), TV::load(m.src + m.e1), table + m.f0,
                                     table + half + m.f0);
  }
}

// A short batch with a cos/sin cache: grid (tokens, blocks of kSpreadThreads items), one item per thread, which
// reads the cos and sin of its own VEC frequencies straight from the cache row: no table and no barrier, and the
// items of a token spread over several SMs. Computed angles do not gain from it (each thread would evaluate VEC
// sincospi where the table evaluates one per frequency: 1.94 against 1.79 us at 1 token), and past 4096 tokens the
// table's single read of each cache row wins. H100, stand-alone, bf16, 32 + 8 heads of 128: 1 token 1.85 ->
// 1.42 us, 1024 tokens 11.1 -> 9.8, 4096 35.4 -> 33.7; at 16384 tokens it would take 129.3 against 126.6.
constexpr int64_t kSpreadTokens = 4096;
constexpr int kSpreadThreads = 64;

template <typename T, typename P, int VEC, bool INTERLEAVE>
__global__ void __launch_bounds__(kSpreadThreads) rope_spread_kernel(Params p) {
  using TV = Vec<T, VEC>;
  const int64_t t = blockIdx.x;
  const Items n = items_of<VEC>(p);
  const int it = blockIdx.y * kSpreadThreads + threadIdx.x;
  pdl_enter();
  if (it >= (p.hq + p.hk) * n.per_head) return;
  // q/k first: their addresses do not depend on the position, so the two round trips overlap.
  const Item<T> m = locate<T, VEC, INTERLEAVE>(p, n, t, it);
  const TV a = TV::load(m.src + m.e0), b = TV::load(m.src + m.e1);
  double pos = 0.0;
  // As in rope_kernel: a position outside the cache rotates to NaN rather than reading past the cache.
  const bool in_cache = token_position<P>(p, t, pos) && pos >= 0 && pos < (double)p.cache_len;
  const float* row = p.cos_sin_cache + (in_cache ? (int64_t)pos * p.cache_stride : 0) + m.f0;
  float c[VEC], s[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    c[k] = in_cache ? row[k] : __int_as_float(0x7fffffff);
    s[k] = in_cache ? row[n.half + k] : __int_as_float(0x7fffffff);
  }
  rotate_store<T, VEC, INTERLEAVE>(m, a, b, c, s);
}

template <typename T, typename P, int VEC, bool INTERLEAVE, int kEarly>
cudaError_t launch_with(const Params& p, int total, cudaStream_t stream) {
  // Late loads: up to 256 threads stride over the items. Early loads: one thread per kEarly items, so that they
  // all sit in registers across the table.
  int threads = kEarly > 0 ? ((total + kEarly - 1) / kEarly + 31) / 32 * 32 : (total + 31) / 32 * 32;
  const int max_threads = kEarly > 0 ? 1024 : 256;
  threads = threads < 64 ? 64 : (threads > max_threads ? max_threads : threads);
  const size_t smem = sizeof(float) * p.rotary_dim;
  return launch_pdl(rope_kernel<T, P, VEC, INTERLEAVE, kEarly>, dim3((unsigned)p.nnz), dim3(threads), smem, stream,
                    p);
}

template <typename T, typename P>
cudaError_t launch(const Params& params, int vec, cudaStream_t stream) {
  if (params.nnz == 0 || params.hq + params.hk == 0) return cudaSuccess;
  Params p = params;
  p.freq_exp = -2.0 * std::log2(p.theta) / p.rotary_dim;
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_BOOL(p.interleave, INTERLEAVE, FI_DISPATCH_VEC(vec, VEC, {
    const int total = (p.hq + p.hk) * items_of<VEC>(p).per_head;
    if (p.use_cache && p.nnz <= kSpreadTokens) {
      err = launch_pdl(rope_spread_kernel<T, P, VEC, INTERLEAVE>,
                       dim3((unsigned)p.nnz, (unsigned)((total + kSpreadThreads - 1) / kSpreadThreads)),
                       dim3(kSpreadThreads), 0, stream, p);
    } else if (p.nnz <= kEarly1Tokens) {
      err = launch_with<T, P, VEC, INTERLEAVE, 1>(p, total, stream);
    } else if (p.nnz <= kEarly2Tokens) {
      err = launch_with<T, P, VEC, INTERLEAVE, 2>(p, total, stream);
    } else {
      err = launch_with<T, P, VEC, INTERLEAVE, 0>(p, total, stream);
    }
  }))
  return err;
}

}  // namespace rope
}  // namespace flashinfer

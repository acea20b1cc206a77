// Rotary position embedding for q [nnz, Hq, D] and k [nnz, Hk, D]. Torch-free.
//
// One block per token. The block first fills shared memory with cos/sin for the rotary_dim/2 frequencies of
// its position (computed in double precision, or read from a cos/sin cache), then every head of q and k
// rotates from that table. Positions come from pos_ids, or from a ragged indptr/offsets pair
// (pos = offsets[b] + t - indptr[b]), found by binary search so the grid depends only on nnz.
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
__device__ __forceinline__ double rope_freq(const Params& p, int i) {
  const double freq = pow(p.theta, -2.0 * i / p.rotary_dim);
  if (p.llama31) {
    const double smooth = fmin(1.0, fmax(0.0, freq * p.smooth_a + p.smooth_b));
    return (1.0 - smooth) * freq * p.rcp_scale + smooth * freq;
  }
  return freq * p.rcp_scale;
}

// kEarly: a short batch is latency-bound: a block waits on the previous kernel, then on its position, then on its
// q/k vectors. So the first frequency a thread needs is computed before pdl_enter (it reads no memory), and the
// first item's q/k vectors are loaded before the position and the table (their addresses do not depend on them):
// the two memory round trips overlap (H200, 1 token: 2.6 -> 2.0 us). A long batch is bandwidth-bound and keeps
// the plain order: with every block loading early, 16384 tokens took 123 us against 99-114 us without.
constexpr int64_t kEarlyTokens = 256;

template <typename T, typename P, int VEC, bool INTERLEAVE, bool kEarly>
__global__ void rope_kernel(Params p) {
  extern __shared__ float table[];  // [half] cos, then [half] sin
  using TV = Vec<T, VEC>;
  const int64_t t = blockIdx.x;
  const int half = p.rotary_dim / 2;
  const int n_rot = half / VEC;
  const int per_head = n_rot + (p.copy_rest ? (p.head_dim - p.rotary_dim) / VEC : 0);
  const int total = (p.hq + p.hk) * per_head;
  const double freq0 = kEarly && !p.use_cache && (int)threadIdx.x < half ? rope_freq(p, threadIdx.x) : 0.0;
  pdl_enter();

  // Item it: vector j of head h of q (h < hq) or k. Rotated items read and write e0 and e1 (VEC adjacent pairs
  // when interleaved, two VEC-runs half a rotary_dim apart for NeoX); pass-through items copy e0 only.
  struct Item {
    const T* src;
    T* dst;
    int e0, e1, f0;
    bool copy;
  };
  auto locate = [&](int it) {
    const int h = it / per_head, j = it % per_head;
    const bool is_q = h < p.hq;
    const int hh = is_q ? h : h - p.hq;
    Item m;
    m.src = is_q ? static_cast<const T*>(p.q) + t * p.q_stride_n + hh * p.q_stride_h
                 : static_cast<const T*>(p.k) + t * p.k_stride_n + hh * p.k_stride_h;
    m.dst = is_q ? static_cast<T*>(p.q_out) + t * p.qo_stride_n + hh * p.qo_stride_h
                 : static_cast<T*>(p.k_out) + t * p.ko_stride_n + hh * p.ko_stride_h;
    m.copy = j >= n_rot;  // pass-through dims of an out-of-place call
    m.f0 = m.copy ? 0 : j * VEC;
    m.e0 = m.copy ? p.rotary_dim + (j - n_rot) * VEC : (INTERLEAVE ? 2 * m.f0 : m.f0);
    m.e1 = INTERLEAVE ? 2 * m.f0 + VEC : half + m.f0;
    return m;
  };
  TV a0, b0;
  const bool first = kEarly && (int)threadIdx.x < total;
  if (first) {
    const Item m = locate(threadIdx.x);
    a0 = TV::load(m.src + m.e0);
    if (!m.copy) b0 = TV::load(m.src + m.e1);
  }

  double pos = 0.0;
  const bool valid = token_position<P>(p, t, pos);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float c, s;
    if (p.use_cache) {
      // A position outside the cache has no angle: its rotated dims become NaN rather than reading
      // past the cache.
      if (valid && pos >= 0 && pos < (double)p.cache_len) {
        const float* row = p.cos_sin_cache + (int64_t)pos * p.cache_stride;
        c = row[i];
        s = row[half + i];
      } else {
        c = s = __int_as_float(0x7fffffff);
      }
    } else if (valid) {
      double sd, cd;
      sincos(pos * (kEarly && i == (int)threadIdx.x ? freq0 : rope_freq(p, i)), &sd, &cd);
      c = (float)cd;
      s = (float)sd;
    } else {
      c = 1.f;  // padding token of a ragged batch: left as it is
      s = 0.f;
    }
    table[i] = c;
    table[half + i] = s;
  }
  __syncthreads();

  for (int it = threadIdx.x; it < total; it += blockDim.x) {
    const Item m = locate(it);
    const bool pre = first && it == (int)threadIdx.x;
    TV a = pre ? a0 : TV::load(m.src + m.e0);
    if (m.copy) {
      a.store(m.dst + m.e0);
      continue;
    }
    TV b = pre ? b0 : TV::load(m.src + m.e1);
    float x[2 * VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      x[k] = to_float(a.v[k]);
      x[VEC + k] = to_float(b.v[k]);
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float c = table[m.f0 + k], s = table[half + m.f0 + k];
      // (x0, x1) is pair k: adjacent elements when interleaved, a[k] and b[k] otherwise.
      float& x0 = INTERLEAVE ? x[2 * k] : x[k];
      float& x1 = INTERLEAVE ? x[2 * k + 1] : x[VEC + k];
      const float r0 = x0 * c - x1 * s, r1 = x1 * c + x0 * s;
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
}

template <typename T, typename P>
cudaError_t launch(const Params& p, int vec, cudaStream_t stream) {
  if (p.nnz == 0 || p.hq + p.hk == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_BOOL(p.nnz <= kEarlyTokens, kEarly, FI_DISPATCH_BOOL(p.interleave, INTERLEAVE, FI_DISPATCH_VEC(vec, VEC, {
    const int per_head = p.rotary_dim / 2 / VEC + (p.copy_rest ? (p.head_dim - p.rotary_dim) / VEC : 0);
    int threads = (p.hq + p.hk) * per_head;
    threads = threads < 64 ? 64 : (threads > 256 ? 256 : (threads + 31) / 32 * 32);
    const size_t smem = sizeof(float) * p.rotary_dim;
    err = launch_pdl(rope_kernel<T, P, VEC, INTERLEAVE, kEarly>, dim3((unsigned)p.nnz), dim3(threads), smem, stream,
                     p);
  })))
  return err;
}

}  // namespace rope
}  // namespace flashinfer

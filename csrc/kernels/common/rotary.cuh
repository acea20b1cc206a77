// Rotary embedding for the attention kernels that apply ROPE_LLAMA on the fly. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <type_traits>

#include "vec.cuh"
#include "wgmma.cuh"

namespace flashinfer {

// The amplitude at which fp8 KV is rotated into a tile of T: e5m2 reaches 57344, so a rotated pair (up to sqrt(2) times
// that) could pass f16's 65504; at half amplitude it cannot, and the scores take the 2 back. bf16 has the range.
template <typename T, typename KV>
constexpr float kRopeAmp = std::is_same_v<T, __half> && std::is_same_v<KV, __nv_fp8_e5m2> ? 0.5f : 1.f;

// Inverse frequency of rotary pair i of a head_dim-wide rotation: rcp_scale * theta^(-2 i / head_dim), with theta
// given as log2(theta) so the device evaluates one exp2.
__device__ __forceinline__ float rope_inv_freq(float rcp_scale, float log2_theta, int i, int head_dim) {
  return rcp_scale * exp2f(-2.f * i / head_dim * log2_theta);
}

// ROPE_LLAMA on a swizzled (tile_swizzle(), common/wgmma.cuh) [kRows][D] tile in shared memory, in place, by a
// block of kThreads threads: element e < D / 2 of a row is paired with e + D / 2 (the NeoX halves), and the rotated
// rows are rounded to T, the operand type of the mma that reads them. A thread takes the same 8-element chunk of
// the first half (and its partner) in rows kRopeStep apart, so its eight frequencies are computed once a call (with
// the chunk taken afresh each row, the wgmma mainloop's RoPE prefill ran 9-16% slower, H200). The fast __sincosf:
// the fp32 angle pos * freq already carries an absolute error of about |angle| * 2^-24, the order of what the
// hardware sine adds, and the accurate sincosf made the RoPE passes cost as much as the attention (measured 1.85x).
template <int D, int kThreads>
constexpr int kRopeStep = kThreads / (D / 16);

// Row r's chunk ch and its partner rotated by the angles whose cosines and sines are cs and sn.
template <typename T, int D, int kRows, bool kWgLayout>
__device__ __forceinline__ void rope_rotate_chunk(T* tile, int r, int ch, const float (&cs)[8], const float (&sn)[8]) {
  T* lo = tile + tile_swizzle<kWgLayout, D, kRows>(r, ch);
  T* hi = tile + tile_swizzle<kWgLayout, D, kRows>(r, ch + D / 16);
  Vec<T, 8> a = Vec<T, 8>::load(lo), b = Vec<T, 8>::load(hi);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float u = to_float(a.v[j]), w = to_float(b.v[j]);
    a.v[j] = from_float<T>(u * cs[j] - w * sn[j]);
    b.v[j] = from_float<T>(w * cs[j] + u * sn[j]);
  }
  a.store(lo);
  b.store(hi);
}

// Row r rotated to position pos(r) (the query tile: packed rows, whose positions repeat over a GQA group).
template <typename T, int D, int kRows, int kThreads, bool kWgLayout = false, typename Pos>
__device__ __forceinline__ void rope_tile(float rcp_scale, float log2_theta, T* tile, Pos&& pos) {
  constexpr int kStep = kRopeStep<D, kThreads>;
  static_assert(kThreads % (D / 16) == 0 && kRows % kStep == 0, "every thread takes one chunk in whole passes");
  const int ch = threadIdx.x % (D / 16);
  float freq[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) freq[j] = rope_inv_freq(rcp_scale, log2_theta, ch * 8 + j, D);
  for (int r = threadIdx.x / (D / 16); r < kRows; r += kStep) {
    float cs[8], sn[8];
    const float x = (float)pos(r);
#pragma unroll
    for (int j = 0; j < 8; ++j) __sincosf(x * freq[j], &sn[j], &cs[j]);
    rope_rotate_chunk<T, D, kRows, kWgLayout>(tile, r, ch, cs, sn);
  }
}

// The constants of a K pass (rope_rows_consecutive) for a thread's chunk ch, rows kStep apart: the chunk's eight
// frequencies and the sine and cosine of kStep times each. The same for every tile, so either computed on each pass
// from RopeParams (the prefill mainloops, whose registers are taken) or once a kernel into a RopeChunk kept across its
// tile loop (8 exp2 and 8 __sincosf a tile saved).
struct RopeParams {
  float rcp_scale, log2_theta;
};
template <int D, int kThreads>
struct RopeChunk {
  float freq[8], step_cs[8], step_sn[8];
  __device__ __forceinline__ void init(const RopeParams& p, int ch) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      freq[j] = rope_inv_freq(p.rcp_scale, p.log2_theta, ch * 8 + j, D);
      __sincosf((float)kRopeStep<D, kThreads> * freq[j], &step_sn[j], &step_cs[j]);
    }
  }
};

// The rows of a K pass from the first one's cosines and sines: rotate(r, cs, sn) for r = r0, r0 + kStep, ..., each
// next row's angles by the angle-addition rotation through kStep * freq: four fma-pipe operations a pair in place of
// two special-function ones, which bound the pass (the mma.sync mainloop's RoPE prefill 5-6% faster for it at head_dim
// 128, H200). The rotation adds a few ulps a row over the at most seven further rows a thread takes, below the error
// of the fp32 angle itself.
template <int D, int kRows, int kThreads, typename Rotate>
__device__ __forceinline__ void rope_walk_rows(float (&cs)[8], float (&sn)[8], const float (&step_cs)[8],
                                               const float (&step_sn)[8], int r0, Rotate&& rotate) {
  constexpr int kStep = kRopeStep<D, kThreads>;
  static_assert(kThreads % (D / 16) == 0 && kRows % kStep == 0, "every thread takes one chunk in whole passes");
  static_assert(kRows / kStep <= 8, "the rotation's rounding grows with the rows a thread takes");
#pragma unroll
  for (int k = 0; k < kRows / kStep; ++k) {
    rotate(r0 + k * kStep, cs, sn);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float c = cs[j] * step_cs[j] - sn[j] * step_sn[j];
      sn[j] = sn[j] * step_cs[j] + cs[j] * step_sn[j];
      cs[j] = c;
    }
  }
}

// Row r rotated to position pos0 + r (a K tile), by kThreads threads (a block, or one warp over its own rows) of which
// this one takes chunk ch of rows r0, r0 + kStep, ... (ch = t % (D / 16), r0 = t / (D / 16) for thread t of them):
// rotate(r, cs, sn) does row r's chunk with the cosines and sines of its angles, the first row's from __sincosf.
// amp scales every cosine and sine (the walk keeps it): kRopeAmp.
template <int D, int kRows, int kThreads, typename Rotate>
__device__ __forceinline__ void rope_rows_consecutive(const RopeParams& p, int64_t pos0, int ch, int r0,
                                                      Rotate&& rotate, float amp = 1.f) {
  float cs[8], sn[8], step_cs[8], step_sn[8];
  const float x = (float)(pos0 + r0);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float freq = rope_inv_freq(p.rcp_scale, p.log2_theta, ch * 8 + j, D);
    __sincosf(x * freq, &sn[j], &cs[j]);
    cs[j] *= amp, sn[j] *= amp;
    __sincosf((float)kRopeStep<D, kThreads> * freq, &step_sn[j], &step_cs[j]);
  }
  rope_walk_rows<D, kRows, kThreads>(cs, sn, step_cs, step_sn, r0, rotate);
}
template <int D, int kRows, int kThreads, typename Rotate>
__device__ __forceinline__ void rope_rows_consecutive(const RopeChunk<D, kThreads>& c, int64_t pos0, int /*ch*/,
                                                      int r0, Rotate&& rotate, float amp = 1.f) {
  float cs[8], sn[8];
  const float x = (float)(pos0 + r0);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    __sincosf(x * c.freq[j], &sn[j], &cs[j]);
    cs[j] *= amp, sn[j] *= amp;
  }
  rope_walk_rows<D, kRows, kThreads>(cs, sn, c.step_cs, c.step_sn, r0, rotate);
}

// A swizzled [kRows][D] tile in shared memory rotated in place, row r to position pos0 + r (rope_rows_consecutive;
// consts is RopeParams or the thread's RopeChunk; amp as there).
template <typename T, int D, int kRows, int kThreads, bool kWgLayout = false, typename Consts>
__device__ __forceinline__ void rope_tile_consecutive(const Consts& consts, T* tile, int64_t pos0, int ch, int r0,
                                                      float amp = 1.f) {
  rope_rows_consecutive<D, kRows, kThreads>(
      consts, pos0, ch, r0,
      [&](int r, const float(&cs)[8], const float(&sn)[8]) {
        rope_rotate_chunk<T, D, kRows, kWgLayout>(tile, r, ch, cs, sn);
      },
      amp);
}

}  // namespace flashinfer

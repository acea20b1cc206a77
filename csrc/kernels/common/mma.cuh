// Warp-level tensor-core building blocks (sm_80+): ldmatrix, mma.sync m16n8k16 with fp32 accumulators, and the
// XOR swizzle that keeps ldmatrix conflict-free on tiles whose rows are a multiple of 128 bytes. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashinfer {

// Offset, in elements, of 16-byte chunk `chunk` of row `row` in a [rows][D] tile of 16-bit elements. Chunk
// indices are XORed with row % 8, so the 8 rows one ldmatrix matrix reads fall in 8 different bank groups.
template <int D>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  static_assert(D % 64 == 0, "rows of at least 8 chunks");
  return row * D + ((chunk ^ (row & 7)) * 8);
}

// Offset, in bytes, of 16-byte chunk `chunk` of row `row` in a [rows][D] tile of 1-byte (fp8) elements, for ldmatrix
// on the raw bytes. The 8 rows one matrix reads must fall in 8 different bank groups: at D >= 128 a row spans whole
// 128-byte lines and chunks are XORed with row % 8; at D = 64 two rows share a line, so the XOR term is (row / 2) % 4
// and the row's parity picks the line half.
template <int D>
__device__ __forceinline__ int swizzle_fp8(int row, int chunk) {
  static_assert(D % 64 == 0, "rows of at least 4 chunks");
  return row * D + ((chunk ^ (D == 64 ? (row >> 1) & 3 : row & 7)) * 16);
}

// ldmatrix operand addresses of one lane into a swizzled [rows][D] tile, from two registers. The lane reads row
// r + lane_row (r a multiple of 8, so the row's low three bits are lane_row's) at logical chunk c + lane_chunk (c
// even, lane_chunk 0 or 1); its swizzled chunk is then c ^ y with y = lane_chunk ^ (lane_row & 7) fixed per lane.
// Kernels that unroll over many (r, c) keep base and y live instead of one address per fragment. The tile must start on
// a multiple of D * 2 bytes (one row; every tile here is 1024-byte aligned): then a row's address is zero where the
// chunk index goes, so adding the chunk and XORing it in are the same, and at() is written with XORs, which ptxas folds
// with the unrolled constants in fewer live registers (the mma.sync prefill mainloop at bf16 D 128: 56 bytes of spills
// to none, 4-9% faster on an H200). At D 64 (128-byte rows) the sum form stays: 1-2% faster there.
template <int D>
struct SwizzledLane {
  uint32_t base;  // .shared byte address of row lane_row of the tile
  uint32_t y;
  __device__ __forceinline__ SwizzledLane(const void* tile, int lane_row, int lane_chunk)
      : base(static_cast<uint32_t>(__cvta_generic_to_shared(tile)) + (uint32_t)(lane_row * D * 2)),
        y((uint32_t)(lane_chunk ^ (lane_row & 7))) {}
  __device__ __forceinline__ uint32_t at(int r, int c) const {
    if constexpr (D == 64) return base + (uint32_t)(r * D * 2) + (((uint32_t)c ^ y) << 4);
    else return ((base ^ (y << 4)) + (uint32_t)(r * D * 2)) ^ ((uint32_t)c << 4);
  }
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// The same from a generic pointer into shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  ldmatrix_x4(r, static_cast<uint32_t>(__cvta_generic_to_shared(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  ldmatrix_x4_trans(r, static_cast<uint32_t>(__cvta_generic_to_shared(smem)));
}

// d += a * b for one 16x8x16 tile: a row-major (4 registers), b column-major (2), d fp32 (4).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (one MUFU.EX2; exp2f adds range handling the softmax does not need: its
// arguments are <= 0 after the running max is subtracted, and -inf gives +0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Two floats rounded into one register of two 16-bit elements (lo in the low half), as mma operands take them.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The A fragment of k step kt (16 columns) from the C fragments c of the product before, rounded to T: the m16n8
// C layout of n-tiles 2 kt and 2 kt + 1 is the m16n8k16 A layout (and, per warp, a register-A wgmma's), so P = S
// feeds P V without a trip through shared memory.
template <typename T, int N>
__device__ __forceinline__ void c_to_a(const float (&c)[N][4], int kt, uint32_t (&a)[4]) {
  a[0] = pack2<T>(c[2 * kt][0], c[2 * kt][1]);
  a[1] = pack2<T>(c[2 * kt][2], c[2 * kt][3]);
  a[2] = pack2<T>(c[2 * kt + 1][0], c[2 * kt + 1][1]);
  a[3] = pack2<T>(c[2 * kt + 1][2], c[2 * kt + 1][3]);
}

}  // namespace flashinfer

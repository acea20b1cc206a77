// Warpgroup tensor-core building blocks (sm_90a): wgmma.mma_async with fp32 accumulators, its shared-memory matrix
// descriptors, and the 128-byte-swizzled tile layout they read. Torch-free. The instructions exist only where
// __CUDA_ARCH_FEAT_SM90_ALL is defined (an sm_90a device pass), which FLASHINFER_WGMMA mirrors: kernels select the
// wgmma path on it with if constexpr, and elsewhere (host pass, other targets) these functions are empty.
//
// The accumulator fragment of m64nNk16 gives a thread of warp w (of the warpgroup) rows 16 w + lane / 4 and + 8,
// columns 8 j + 2 (lane % 4) + {0, 1} of each n-block j: per warp it is the mma.sync m16n8 C layout repeated over
// N / 8 n-blocks, d[j][0..3] as mma_16816's d[0..3]. The register A operand (m64nNk16, four 32-bit registers) is per
// warp the m16n8k16 A fragment. So the softmax and the P packing of the mma.sync kernels carry over unchanged.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "mma.cuh"

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FLASHINFER_WGMMA 1
#endif

namespace flashinfer {

// Offset, in elements, of 16-byte chunk `chunk` of row `row` in a [kRows][D] tile of 16-bit elements as wgmma reads
// it with the 128-byte swizzle: D / 64 slabs of [kRows][64], a row of a slab 128 bytes, its chunks XORed with
// row % 8 (the hardware XORs address bits 4-6 with bits 7-9, so a slab starts on 1024 bytes). At D = 64 this is
// swizzle<64>().
template <int D, int kRows>
__host__ __device__ constexpr int swizzle_wg(int row, int chunk) {
  static_assert(D % 64 == 0 && kRows % 8 == 0, "whole 8 x 128-byte swizzle atoms");
  return (chunk >> 3) * (kRows * 64) + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

// The same chunk in the 16-bit tile layout a mainloop reads: wgmma's (kWg) or ldmatrix's (swizzle(), common/mma.cuh).
// Every writer of a tile (the copies, the fp8 conversion, the RoPE pass) goes through it.
template <bool kWg, int D, int kRows>
__device__ __forceinline__ int tile_swizzle(int row, int chunk) {
  if constexpr (kWg) return swizzle_wg<D, kRows>(row, chunk);
  else return swizzle<D>(row, chunk);
}

// Descriptor of an operand in a swizzle_wg tile: `addr` the .shared byte address of its first element (an atom's
// start, or a 32-byte step inside it along K), lbo / sbo in bytes. K-major (Q and K for Q K^T): sbo = 1024, the step
// between 8-row groups; lbo unused. MN-major (V for P V, rows of tokens along K): sbo = 1024 between groups of 8
// tokens, lbo the step between 64-column slabs.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3ffff) >> 4) | (uint64_t)((lbo & 0x3ffff) >> 4) << 16 |
         (uint64_t)((sbo & 0x3ffff) >> 4) << 32 | 1ull << 62;  // 1 << 62: the 128-byte swizzle
}

// Orders this thread's register accesses before the warpgroup's next wgmma (required before the first one and
// whenever its accumulators or A registers were written by other instructions).
__device__ __forceinline__ void wg_fence() {
#if defined(FLASHINFER_WGMMA)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if defined(FLASHINFER_WGMMA)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#if defined(FLASHINFER_WGMMA)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Shared memory written through the generic proxy (cp.async, st.shared) and read next by wgmma: each writing thread
// fences before the barrier that publishes it.
__device__ __forceinline__ void fence_async_shared() {
#if defined(FLASHINFER_WGMMA)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses to accumulators across a wgmma's issue or wait.
template <int N>
__device__ __forceinline__ void wg_keep(float (&d)[N][4]) {
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+f"(d[j][i])::"memory");
}

// Operand lists of the asm below: FI_WG_ACC<n> the n accumulator registers d[j][i] as "+f" operands, FI_WG_R<n>
// their %0 .. %(n - 1) list.
#define FI_WG_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define FI_WG_ACC32 FI_WG_ACC4(0), FI_WG_ACC4(1), FI_WG_ACC4(2), FI_WG_ACC4(3), FI_WG_ACC4(4), FI_WG_ACC4(5), \
                    FI_WG_ACC4(6), FI_WG_ACC4(7)
#define FI_WG_ACC64 FI_WG_ACC32, FI_WG_ACC4(8), FI_WG_ACC4(9), FI_WG_ACC4(10), FI_WG_ACC4(11), FI_WG_ACC4(12), \
                    FI_WG_ACC4(13), FI_WG_ACC4(14), FI_WG_ACC4(15)
#define FI_WG_ACC128 FI_WG_ACC64, FI_WG_ACC4(16), FI_WG_ACC4(17), FI_WG_ACC4(18), FI_WG_ACC4(19), FI_WG_ACC4(20), \
                     FI_WG_ACC4(21), FI_WG_ACC4(22), FI_WG_ACC4(23), FI_WG_ACC4(24), FI_WG_ACC4(25), FI_WG_ACC4(26), \
                     FI_WG_ACC4(27), FI_WG_ACC4(28), FI_WG_ACC4(29), FI_WG_ACC4(30), FI_WG_ACC4(31)
#define FI_WG_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
                  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FI_WG_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
                  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
                  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
                  "%59, %60, %61, %62, %63}"
#define FI_WG_R128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
                   "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, " \
                   "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, " \
                   "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, " \
                   "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, " \
                   "%97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, " \
                   "%113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"

// d = A B (accumulate == 0) or d += A B for one k16 step of a 64 x 64 tile, A and B K-major in shared memory.
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[8][4], uint64_t a, uint64_t b, int accumulate) {
#if defined(FLASHINFER_WGMMA)
  if constexpr (std::is_same_v<T, __half>)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " FI_WG_R32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : FI_WG_ACC32 : "l"(a), "l"(b), "r"(accumulate));
  else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " FI_WG_R32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : FI_WG_ACC32 : "l"(a), "l"(b), "r"(accumulate));
#endif
}

// d += A B for one k16 step, A from registers (per warp the m16n8k16 A fragment of its 16 rows), B MN-major in
// shared memory (the transposed form: V's rows are tokens, the k dimension). N: head_dim, 64, 128 or 256.
template <int N, typename T>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b) {
  static_assert(N == 64 || N == 128 || N == 256, "head_dim 64, 128 or 256");
#if defined(FLASHINFER_WGMMA)
// scale-d is a predicate operand (true: accumulate); the immediates are scale-a, scale-b and trans-b.
#define FI_WG_RS(shape, ty, regs, a0, bd)                                                                      \
  "{\n.reg .pred p;\nsetp.eq.u32 p, 1, 1;\nwgmma.mma_async.sync.aligned." shape ".f32." ty "." ty " " regs \
  ", {" a0 "}, " bd ", p, 1, 1, 1;\n}\n"
  if constexpr (N == 64 && std::is_same_v<T, __half>)
    asm volatile(FI_WG_RS("m64n64k16", "f16", FI_WG_R32, "%32, %33, %34, %35", "%36")
                 : FI_WG_ACC32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  else if constexpr (N == 64)
    asm volatile(FI_WG_RS("m64n64k16", "bf16", FI_WG_R32, "%32, %33, %34, %35", "%36")
                 : FI_WG_ACC32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  else if constexpr (N == 128 && std::is_same_v<T, __half>)
    asm volatile(FI_WG_RS("m64n128k16", "f16", FI_WG_R64, "%64, %65, %66, %67", "%68")
                 : FI_WG_ACC64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  else if constexpr (N == 128)
    asm volatile(FI_WG_RS("m64n128k16", "bf16", FI_WG_R64, "%64, %65, %66, %67", "%68")
                 : FI_WG_ACC64 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  else if constexpr (std::is_same_v<T, __half>)
    asm volatile(FI_WG_RS("m64n256k16", "f16", FI_WG_R128, "%128, %129, %130, %131", "%132")
                 : FI_WG_ACC128 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
  else
    asm volatile(FI_WG_RS("m64n256k16", "bf16", FI_WG_R128, "%128, %129, %130, %131", "%132")
                 : FI_WG_ACC128 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
#undef FI_WG_RS
#endif
}

#undef FI_WG_R128
#undef FI_WG_R64
#undef FI_WG_R32
#undef FI_WG_ACC128
#undef FI_WG_ACC64
#undef FI_WG_ACC32
#undef FI_WG_ACC4

}  // namespace flashinfer

// Asynchronous global -> shared copies (sm_80+), used by the pipelined attention kernels. Torch-free.
#pragma once
#include <cuda_runtime.h>

namespace flashinfer {

// Copies kBytes (4, 8 or 16) from `src` to shared `dst`, or zero-fills `dst` when `pred` is false (src-size 0:
// nothing is read, so `src` only has to be a valid address). 16-byte copies bypass L1 (.cg).
template <int kBytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool pred) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async moves 4, 8 or 16 bytes");
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int n = pred ? kBytes : 0;
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(src), "n"(kBytes), "r"(n)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most kPending committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace flashinfer

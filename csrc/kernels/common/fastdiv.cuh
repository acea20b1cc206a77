// Division by a runtime divisor fixed at launch, as a multiply and a shift: the kernels split token indices into
// (page, entry) in their inner loops, where a hardware-less integer division would cost dozens of instructions.
// Torch-free.
#pragma once
#include <cstdint>

namespace flashinfer {

// floor(n / d) = (n * mul) >> shift for every n < 2^31, with shift = 32 + ceil(log2 d) and
// mul = ceil(2^shift / d) < 2^33: the rounding error n * (mul - 2^shift / d) / 2^shift stays below 1 / d.
struct FastDiv {
  uint64_t mul = 1ull << 32;
  uint32_t shift = 32;
  uint32_t d = 1;

  FastDiv() = default;
  __host__ explicit FastDiv(uint32_t divisor) : d(divisor > 0 ? divisor : 1) {
    uint32_t s = 0;
    while ((1ull << s) < d) ++s;
    shift = 32 + s;
    mul = ((1ull << shift) + d - 1) / d;
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (uint32_t)(((uint64_t)n * mul) >> shift); }
  __device__ __forceinline__ uint32_t mod(uint32_t n, uint32_t q) const { return n - q * d; }
};

}  // namespace flashinfer

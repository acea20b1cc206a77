// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based generator,
// so any (key, counter) gives its numbers directly, with no state to carry between launches or steps. Compiled for
// the device and for the host: the CPU kernels draw exactly the numbers the CUDA kernels draw. Torch-free.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FI_HOST_DEVICE inline
#endif

namespace flashinfer {

struct Philox4 {
  uint32_t v[4];
};

FI_HOST_DEVICE uint32_t philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

// Four 32-bit numbers for counter ctr under key: ten rounds of the paper's round function, the key bumped by the
// Weyl constants between rounds.
FI_HOST_DEVICE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = philox_mulhilo(0xD2511F53u, ctr.v[0], &hi0);
    const uint32_t lo1 = philox_mulhilo(0xCD9E8D57u, ctr.v[2], &hi1);
    ctr = {{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return ctr;
}

// A uniform float in [0, 1) from (seed, offset, a, b): 24 random bits, so the value is exact in fp32 and never 1.
FI_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset, uint32_t a, uint32_t b) {
  const Philox4 r = philox4x32_10({{(uint32_t)offset, (uint32_t)(offset >> 32), a, b}}, (uint32_t)seed,
                                  (uint32_t)(seed >> 32));
  return (float)(r.v[0] >> 8) * (1.f / 16777216.f);
}

}  // namespace flashinfer

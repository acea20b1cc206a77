// Vector loads/stores and scalar conversions shared by every kernel family. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cstdint>
#include <initializer_list>

#include "row_layout.h"

namespace flashinfer {

// N elements of T moved as one aligned access (16 bytes for 8 x bf16, the widest LDG/STG).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  __device__ __forceinline__ static Vec load(const T* p) { return *reinterpret_cast<const Vec*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<Vec*>(p) = *this; }
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) { return float(x); }
__device__ __forceinline__ float to_float(__nv_fp8_e5m2 x) { return float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Widest vector (in elements, at most 16 bytes) that divides `n` and keeps every given address aligned.
// Host helper: launchers call it with each pointer and each element stride the kernel will step by.
__host__ inline int widest_vec(int elem_bytes, int64_t n, std::initializer_list<uint64_t> addrs,
                               std::initializer_list<int64_t> strides) {
  for (int vec = 16 / elem_bytes; vec > 1; vec /= 2) {
    bool ok = n % vec == 0;
    for (uint64_t a : addrs) ok = ok && a % (uint64_t)(vec * elem_bytes) == 0;
    for (int64_t s : strides) ok = ok && s % vec == 0;
    if (ok) return vec;
  }
  return 1;
}

}  // namespace flashinfer

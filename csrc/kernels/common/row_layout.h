// Row addressing of [..., D] tensors, shared by the kernels and the host code that describes tensors to them.
// Torch-free and CUDA-free.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define FI_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FI_HOST_DEVICE inline
#endif

namespace flashinfer {

// Leading dims collapsed to at most two levels: row r lives at (r / n1) * stride0 + (r % n1) * stride1.
// Covers contiguous rows, row-strided views and [T, H, D] heads sliced out of a packed projection
// (stride0 = packed row, stride1 = head).
struct RowLayout {
  int64_t n1;       // size of the inner leading dim (1 when there is one leading dim)
  int64_t stride0;  // elements between outer rows
  int64_t stride1;  // elements between inner rows
  FI_HOST_DEVICE int64_t offset(int64_t r) const {
    return n1 == 1 ? r * stride0 : (r / n1) * stride0 + (r % n1) * stride1;
  }
};

}  // namespace flashinfer

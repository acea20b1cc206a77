// Helpers for the CUDA adapters: dtype dispatch onto CUDA element types, row layouts of strided tensors
// (leading dims collapsed to at most two (size, stride) levels so kernels address rows of strided views, such
// as heads sliced out of a packed projection, in place), launch error reporting.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>
#include <vector>

#include "../checks.h"
#include "../kernels/common/vec.cuh"

namespace flashinfer {

template <at::ScalarType S> struct CudaType;
template <> struct CudaType<at::kFloat> { using type = float; };
template <> struct CudaType<at::kHalf> { using type = __half; };
template <> struct CudaType<at::kBFloat16> { using type = __nv_bfloat16; };

// Binds T to the CUDA element type of `dtype` (float16, bfloat16, float32) inside the body.
#define FI_DISPATCH_FLOAT(dtype, T, ...)                                                   \
  switch (dtype) {                                                                         \
    case at::kFloat: { using T = float; __VA_ARGS__ } break;                               \
    case at::kHalf: { using T = __half; __VA_ARGS__ } break;                               \
    case at::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__ } break;                    \
    default: TORCH_CHECK(false, "flashinfer: unsupported dtype ", dtype);                  \
  }

inline void check_launch(cudaError_t err, const char* op) {
  FI_CHECK(err == cudaSuccess, op, "CUDA launch failed: ", cudaGetErrorString(err));
}

inline uint64_t addr(const at::Tensor& t) { return reinterpret_cast<uint64_t>(t.data_ptr()); }

// nullopt when the last dim is not contiguous or the leading dims need more than two levels.
inline std::optional<RowLayout> row_layout(const at::Tensor& t) {
  const int64_t n = t.dim();
  if (n == 0) return std::nullopt;
  if (t.size(-1) > 1 && t.stride(-1) != 1) return std::nullopt;
  std::vector<std::pair<int64_t, int64_t>> levels;  // outermost first, size-1 dims dropped, merged
  for (int64_t i = 0; i < n - 1; ++i) {
    if (t.size(i) == 1) continue;
    if (!levels.empty() && levels.back().second == t.stride(i) * t.size(i)) {
      levels.back() = {levels.back().first * t.size(i), t.stride(i)};
    } else {
      levels.push_back({t.size(i), t.stride(i)});
    }
  }
  if (levels.empty()) return RowLayout{1, 0, 0};
  if (levels.size() == 1) return RowLayout{1, levels[0].second, 0};
  if (levels.size() == 2) return RowLayout{levels[1].first, levels[0].second, levels[1].second};
  return std::nullopt;
}

// Inputs that cannot be addressed in place are copied once; that only happens for exotic layouts.
inline at::Tensor rows_readable(const at::Tensor& t) { return row_layout(t) ? t : t.contiguous(); }

// Tensors written in place must be addressable as they are.
inline RowLayout rows_writable(const at::Tensor& t, const char* name, const char* op) {
  auto l = row_layout(t);
  FI_CHECK(l.has_value(), op, name, " must have a contiguous last dim and leading dims that collapse to at most "
           "two strides, got strides ", t.strides());
  return *l;
}

}  // namespace flashinfer

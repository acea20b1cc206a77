// Helpers for the CUDA adapters: dtype dispatch onto CUDA element types and launch error reporting.
// Adapters format no messages themselves (no TORCH_CHECK here): every check is a call into checks.cpp.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../checks.h"
#include "../kernels/common/vec.cuh"

#undef FI_CHECK  // see checks.cpp: message formatting stays out of nvcc-compiled code

namespace flashinfer {

// Binds T to the CUDA element type of `dtype` (float16, bfloat16, float32) inside the body.
#define FI_DISPATCH_FLOAT(dtype, T, ...)                                                   \
  switch (dtype) {                                                                         \
    case at::kFloat: { using T = float; __VA_ARGS__ } break;                               \
    case at::kHalf: { using T = __half; __VA_ARGS__ } break;                               \
    case at::kBFloat16: { using T = __nv_bfloat16; __VA_ARGS__ } break;                    \
    default: fail_dtype("dispatch", dtype);                                                \
  }

inline void check_launch(cudaError_t err, const char* op) {
  if (err != cudaSuccess) fail_launch(op, cudaGetErrorString(err));
}

inline uint64_t addr(const at::Tensor& t) { return reinterpret_cast<uint64_t>(t.data_ptr()); }

}  // namespace flashinfer

// Helpers for the CUDA adapters: dtype dispatch onto CUDA element types and launch error reporting.
// Adapters format no messages themselves (no TORCH_CHECK here): every check is a call into checks.cpp.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "../checks.h"
#include "../kernels/common/fastdiv.cuh"
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

// Calls f(Tag<Q>{}, Tag<KV>{}) with the CUDA types of an attention call: Q for fp16 / bf16 queries, KV the query's
// type or fp8 e4m3 / e5m2 (dtypes already checked); returns what f returns.
template <typename T>
struct Tag {
  using type = T;
};
template <typename F>
auto dispatch_attention(at::ScalarType q_dtype, at::ScalarType kv_dtype, F&& f) {
  auto with_q = [&](auto q) {
    using Q = typename decltype(q)::type;
    switch (kv_dtype) {
      case at::kFloat8_e4m3fn: return f(q, Tag<__nv_fp8_e4m3>{});
      case at::kFloat8_e5m2: return f(q, Tag<__nv_fp8_e5m2>{});
      default: return f(q, Tag<Q>{});
    }
  };
  return q_dtype == at::kHalf ? with_q(Tag<__half>{}) : with_q(Tag<__nv_bfloat16>{});
}

inline void check_launch(cudaError_t err, const char* op) {
  if (err != cudaSuccess) fail_launch(op, cudaGetErrorString(err));
}

// SMs of `device`, queried once: the split counts of the attention launchers depend on it.
inline int sm_count(int device) {
  static int counts[64] = {};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device);
  return counts[device] > 0 ? counts[device] : 132;
}

// Arrival counters of split launches that merge in their last block: `n` ints, zero now and left zero by every
// launch that uses them (the last block resets its counter), so a launch needs no memset node of its own. One
// buffer per (device, stream): launches on one stream run in order, so they never share a counter at the same
// time. A buffer only grows and is never freed, since captured CUDA graphs hold its address. Growing is allowed
// while the stream is being captured (a graph's first launch on its capture stream): the thread switches to relaxed
// capture mode, and the buffer is zeroed on a private stream and waited for, outside the captured work. Returns null
// if the allocation fails (the caller then zeroes a workspace of its own).
inline int* zeroed_counters(int device, cudaStream_t stream, int64_t n) {
  using Key = std::pair<int, cudaStream_t>;
  static std::mutex mu;
  static std::map<Key, std::pair<int*, int64_t>> buffers;
  static std::map<int, cudaStream_t> zeroing;  // per device
  std::lock_guard<std::mutex> lock(mu);
  auto& [ptr, size] = buffers[Key{device, stream}];
  if (size >= n) return ptr;
  const int64_t grown = std::max<int64_t>(n, std::max<int64_t>(2 * size, 1 << 16));
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  int* fresh = nullptr;
  cudaStream_t& side = zeroing[device];
  bool ok = (side != nullptr || cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess) &&
            cudaMalloc(&fresh, grown * sizeof(int)) == cudaSuccess;
  ok = ok && cudaMemsetAsync(fresh, 0, grown * sizeof(int), side) == cudaSuccess &&
       cudaStreamSynchronize(side) == cudaSuccess;
  cudaThreadExchangeStreamCaptureMode(&mode);
  if (!ok) {
    cudaGetLastError();  // not sticky: cleared so the launch that follows does not report it
    if (fresh) cudaFree(fresh);
    return nullptr;
  }
  ptr = fresh, size = grown;  // the old buffer stays allocated: a captured graph may still use it
  return ptr;
}

inline uint64_t addr(const at::Tensor& t) { return reinterpret_cast<uint64_t>(t.data_ptr()); }

// Whether every row of t (its last dim, indexed by the first `dims` dims) starts on a 16-byte boundary: the base
// address and the first `dims` strides, in bytes.
inline bool rows_16b_aligned(const at::Tensor& t, int64_t dims) {
  bool aligned = addr(t) % 16 == 0;
  for (int64_t i = 0; i < dims; ++i) aligned = aligned && t.stride(i) * t.element_size() % 16 == 0;
  return aligned;
}

// The attention kernels copy 16 bytes of a K/V row at a time (common/kv_tile.cuh): the first `dims` strides and both
// base addresses must keep every row on a 16-byte boundary. They also multiply token coordinates (page and entry, or
// ragged row: the first dims - 1 dims) by 32-bit strides.
inline void check_kv_rows_aligned(const at::Tensor& k, const at::Tensor& v, int64_t dims, const char* op) {
  check_condition(rows_16b_aligned(k, dims) && rows_16b_aligned(v, dims), op,
                  "KV rows must start on 16-byte boundaries (8 elements for 16-bit KV, 16 for fp8: aligned views of a "
                  "cache)");
  for (int64_t i = 0; i + 1 < dims; ++i) {
    check_int32_range(k.stride(i), "KV cache stride", op);
    check_int32_range(v.stride(i), "KV cache stride", op);
  }
}

// Fills the paged-cache fields every attention family's Params shares (the names common/kv_tile.cuh reads):
// the K/V views and their strides, the page tables (contiguous tensors that outlive the launch), page geometry.
template <typename P>
void set_paged_kv(P& p, const PagedKV& cache, const at::Tensor& indices, const at::Tensor& last_page_len) {
  p.k_cache = cache.k.data_ptr(), p.v_cache = cache.v.data_ptr();
  p.k_stride_page = cache.k.stride(0), p.k_stride_entry = cache.k.stride(1), p.k_stride_head = cache.k.stride(2);
  p.v_stride_page = cache.v.stride(0), p.v_stride_entry = cache.v.stride(1), p.v_stride_head = cache.v.stride(2);
  p.indices = indices.data_ptr<int32_t>();
  p.last_page_len = last_page_len.data_ptr<int32_t>();
  p.num_indices = indices.size(0);
  p.num_pages = cache.k.size(0);
  p.page_size = (int)cache.page_size;
  p.page_div = FastDiv((uint32_t)cache.page_size);
}

}  // namespace flashinfer

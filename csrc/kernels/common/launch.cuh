// Host-side launch preparation shared by the attention kernels. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>

namespace flashinfer {

// What an attention launch needs besides its Params: the SM count (the split count depends on it), the allocator
// of the split workspace (called only when there is more than one split; it fills in P's workspace pointers), and
// the stream.
template <typename P>
struct LaunchEnv {
  int sm_count;
  std::function<void(P&)> alloc_tmp;
  cudaStream_t stream;
};

// Opts `kernel` in to `smem` bytes of dynamic shared memory (required above 48 KiB, once per device) and returns in
// *blocks_per_sm how many of its blocks of `threads` threads fit an SM. Both are host calls of a few microseconds,
// paid once per (kernel, device, threads, smem) instead of on every launch: a decode step launches once per layer.
inline cudaError_t prepare_kernel(const void* kernel, int threads, size_t smem, int* blocks_per_sm) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  using Key = std::tuple<const void*, int, int, size_t>;
  static std::mutex mu;
  static std::map<Key, int> done;
  const Key key{kernel, device, threads, smem};
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = done.find(key); it != done.end()) {
    *blocks_per_sm = it->second;
    return cudaSuccess;
  }
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  done.emplace(key, *blocks_per_sm);
  return cudaSuccess;
}

}  // namespace flashinfer

// Host-side launch preparation shared by the attention kernels. Torch-free.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

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
// A kernel launched with several sizes keeps the largest opt-in: the attribute is the function's, and lowering it
// for a new size would make a cached larger one fail to launch.
inline cudaError_t prepare_kernel(const void* kernel, int threads, size_t smem, int* blocks_per_sm) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  using Key = std::tuple<const void*, int, int, size_t>;
  static std::mutex mu;
  static std::map<Key, int> done;
  static std::map<std::pair<const void*, int>, size_t> opted_in;  // (kernel, device) -> its largest opt-in
  const Key key{kernel, device, threads, smem};
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = done.find(key); it != done.end()) {
    *blocks_per_sm = it->second;
    return cudaSuccess;
  }
  size_t& opt = opted_in[{kernel, device}];
  if (smem > opt) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
    opt = smem;
  }
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  done.emplace(key, *blocks_per_sm);
  return cudaSuccess;
}

// How many blocks of a bandwidth-bound launch of `total` blocks to let share an SM, at most `per_sm` (what fits).
// Blocks that share an SM share its bandwidth, so a launch of more than one wave takes about waves(r) * r block
// times at r per SM: the last wave of a full residency can hold a few blocks that stream at a fraction of the
// bandwidth while most SMs idle. The r with the lowest cost, the highest on ties. On an H200, bf16 64 x 4096 at D 64
// (512 blocks, 132 SMs) ran 140 us at two blocks per SM and 170 us at the three its registers allowed.
inline int wave_residency(int64_t total, int sm_count, int per_sm) {
  if (per_sm <= 1 || sm_count <= 0 || total <= (int64_t)sm_count * per_sm) return per_sm;
  const auto cost = [&](int r) { return (total + (int64_t)sm_count * r - 1) / ((int64_t)sm_count * r) * r; };
  // Never below two: one block of four warps per SM was not measured to keep an SM's share of the bandwidth busy.
  int best = per_sm;
  for (int r = per_sm - 1; r >= 2; --r)
    if (cost(r) < cost(best)) best = r;
  return best;
}

// Launches `kernel` with no more than `resident` blocks per SM by asking for enough dynamic shared memory (at least
// `smem`) that one more would not fit; sets *launch_smem to the amount to launch with. Falls back to `smem` where
// the occupancy calculator disagrees (the register file then decides).
inline cudaError_t smem_for_residency(const void* kernel, int threads, size_t smem, int resident, size_t* launch_smem) {
  *launch_smem = smem;
  int device = 0, per_sm_smem = 0, reserved = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&per_sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t want = (size_t)(per_sm_smem / (resident + 1) - reserved + 1);
  if (want <= smem || want > (size_t)optin) return cudaSuccess;
  int fits = 0;
  err = prepare_kernel(kernel, threads, want, &fits);
  if (err != cudaSuccess) return err;
  if (fits == resident) *launch_smem = want;
  return cudaSuccess;
}

}  // namespace flashinfer

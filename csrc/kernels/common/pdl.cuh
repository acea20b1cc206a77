// Programmatic dependent launch (sm_90+). Torch-free.
//
// A model step is a chain of short kernels on one stream; between two of them the GPU normally drains the first
// grid, flushes memory and only then launches and rasterises the second, about a microsecond per kernel boundary
// that no work hides. Launched through `launch_pdl`, a kernel may start while its predecessor's last wave is still
// running: its blocks become resident, compute their indices, and stop at `pdl_wait()` until the predecessor has
// finished and its writes are visible. Every kernel launched this way calls `pdl_wait()` before its first global
// memory access (read or write: the predecessor may still be reading what we overwrite), so the ordering seen by
// memory is exactly that of a plain launch. The one exception is reads that only steer L2 prefetches, through L2
// and never used after the wait (decode.cuh, prefetch_slice_l2). `pdl_trigger()` lets our own successor launch
// early; it is issued after the wait (right after it, by `pdl_enter()`, or later where a kernel says why:
// decode.cuh), so at most two grids of a chain are resident at once.
//
// Both instructions are no-ops for a kernel launched without the attribute, and are compiled out below sm_90.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <utility>

namespace flashinfer {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The wait, then the trigger: how a kernel with no reason to hold its successor back begins.
__device__ __forceinline__ void pdl_enter() {
  pdl_wait();
  pdl_trigger();
}

// Whether the current device runs programmatic dependent launches (compute capability 9.0 and newer). Cached per
// device: the query is a driver call and this runs on every launch.
inline bool pdl_supported() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // 0: unknown, 1: no, 2: yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  int state = cache[device].load(std::memory_order_relaxed);
  if (state == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    state = major >= 9 ? 2 : 1;
    cache[device].store(state, std::memory_order_relaxed);
  }
  return state == 2;
}

// Launches `kernel` on `stream` allowing it to overlap the tail of the previous kernel on that stream (see above:
// the kernel must call pdl_wait(), or pdl_enter(), before its first global memory access), in clusters of `cluster`
// consecutive blocks along x (sm_90+; 1: no cluster attribute). Works under stream capture: the graph keeps the
// programmatic edge.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_pdl_clusters(int cluster, void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = pdl_supported() ? 1 : 0;
  attr[1].id = cudaLaunchAttributeClusterDimension;
  attr[1].val.clusterDim.x = (unsigned)cluster;
  attr[1].val.clusterDim.y = 1;
  attr[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = cluster > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

template <typename... KernelArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  return launch_pdl_clusters(1, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace flashinfer

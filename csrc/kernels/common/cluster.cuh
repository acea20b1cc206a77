// Thread block clusters (sm_90+): the blocks of a cluster run at once on one GPC, read each other's shared memory
// and meet at a hardware barrier, so a few blocks can share one row's work the way one block's warps do. Torch-free.
//
// Kernels written with these helpers take the cluster size as an argument and also run as clusters of one block
// (every launch below sm_90): then the barrier is the block's and every address is the block's own.
#pragma once
#include <cuda_runtime.h>

#include "pdl.cuh"

namespace flashinfer {

// Whether the current device runs clusters of more than one block: compute capability 9.0 and newer, the devices
// that also run programmatic dependent launches (whose query is cached per device).
inline bool clusters_supported() { return pdl_supported(); }

// Every thread of every block of the cluster arrives before any leaves; shared memory written before (atomics
// included) is visible to the cluster's reads after (release / acquire).
__device__ __forceinline__ void cluster_sync(int cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) {
    __cluster_barrier_arrive();
    __cluster_barrier_wait();
    return;
  }
#endif
  __syncthreads();
}

// The two halves of cluster_sync, for a block that must not exit while others still read its shared memory:
// arrive after its last read of theirs, wait before it exits, and do its own work in between.
__device__ __forceinline__ void cluster_arrive(int cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) __cluster_barrier_arrive();
#endif
}
__device__ __forceinline__ void cluster_wait(int cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) __cluster_barrier_wait();
#endif
}

// The address of the shared variable `p` in block `rank` of the cluster (ranks count blocks along x).
template <typename T>
__device__ __forceinline__ T* cluster_map(T* p, int rank, int cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster > 1) return static_cast<T*>(__cluster_map_shared_rank(static_cast<void*>(p), (unsigned)rank));
#endif
  return p;
}

}  // namespace flashinfer

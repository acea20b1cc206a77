// Per-block phase stamps, for finding where a kernel's time goes (benchmarks/micro, `TRACE=1 bash
// benchmarks/micro/run.sh ...`). Thread 0 of each block stores the global timer (ns) at entry and exit and clock64
// at each phase boundary of a launch into g_block_trace; the harness prints each phase's spread over the blocks.
// Without FLASHINFER_BLOCK_TRACE the macros are empty and the kernel compiles to the same code. Torch-free.
#pragma once

#ifdef FLASHINFER_BLOCK_TRACE
#include <cuda_runtime.h>

namespace flashinfer {

// Slots: 0 entry and 1 exit (global timer); 2 entry, 3..6 the kernel's phase boundaries (as many as it has), 7 exit
// (clock64).
constexpr int kTraceBlocks = 16384, kTraceSlots = 8;
__device__ unsigned long long g_block_trace[kTraceBlocks][kTraceSlots];

__device__ __forceinline__ void block_trace(int slot, bool global_timer) {
  const long long id = ((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  if (threadIdx.x != 0 || id >= kTraceBlocks) return;
  unsigned long long t;
  if (global_timer) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  else t = clock64();
  g_block_trace[id][slot] = t;
}

}  // namespace flashinfer

#define BLOCK_TRACE_ENTRY() (flashinfer::block_trace(0, true), flashinfer::block_trace(2, false))
#define BLOCK_TRACE(slot) flashinfer::block_trace(slot, false)
#define BLOCK_TRACE_EXIT() (flashinfer::block_trace(7, false), flashinfer::block_trace(1, true))
#else
#define BLOCK_TRACE_ENTRY() ((void)0)
#define BLOCK_TRACE(slot) ((void)0)
#define BLOCK_TRACE_EXIT() ((void)0)
#endif

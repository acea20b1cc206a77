// Host side of common/block_trace.cuh for the micro harnesses: clears the stamps before a traced launch and prints,
// per phase, the median, 90th percentile and maximum over the blocks that stamped both ends (clock64 at the
// device's rated clock), the spread of block starts and ends (global timer) and the span of the launch.
#pragma once
#ifdef FLASHINFER_BLOCK_TRACE
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace micro {

inline void block_trace_reset() {
  const std::vector<unsigned long long> zeros((size_t)flashinfer::kTraceBlocks * flashinfer::kTraceSlots, 0);
  cudaMemcpyToSymbol(flashinfer::g_block_trace, zeros.data(), zeros.size() * sizeof(unsigned long long));
}

// names[i]: the phase from clock slot 2 + i to 3 + i; the last of the N phases ends at the exit stamp (slot 7), so
// a kernel with fewer phase boundaries stamps slots 3 .. N + 1 and no more.
template <int N>
inline void block_trace_print(const char* const (&names)[N]) {
  static_assert(N >= 1 && N <= flashinfer::kTraceSlots - 3, "phases between the entry and exit stamps");
  constexpr int kS = flashinfer::kTraceSlots;
  std::vector<unsigned long long> h((size_t)flashinfer::kTraceBlocks * kS);
  cudaMemcpyFromSymbol(h.data(), flashinfer::g_block_trace, h.size() * sizeof(unsigned long long));
  int khz = 0, dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev);
  std::vector<const unsigned long long*> rows;
  unsigned long long first = ~0ull, last = 0;
  for (size_t i = 0; i < (size_t)flashinfer::kTraceBlocks; ++i) {
    const unsigned long long* r = &h[i * kS];
    if (r[0] == 0 || r[1] == 0) continue;  // no such block, or past kTraceBlocks
    rows.push_back(r);
    first = std::min(first, r[0]);
    last = std::max(last, r[1]);
  }
  if (rows.empty()) return;
  const auto stats = [&](const char* name, auto value, auto has) {
    std::vector<double> v;
    for (const auto* r : rows)
      if (has(r)) v.push_back(value(r));
    if (v.empty()) return;
    std::sort(v.begin(), v.end());
    std::printf("  trace %-30s median %7.2f  p90 %7.2f  max %7.2f us  (%zu blocks)\n", name, v[v.size() / 2],
                v[v.size() * 9 / 10], v.back(), v.size());
  };
  const auto always = [](const unsigned long long*) { return true; };
  std::printf("  trace: %zu blocks, launch span %.2f us (first entry to last exit)\n", rows.size(),
              (last - first) * 1e-3);
  stats("start after the first block", [&](const unsigned long long* r) { return (r[0] - first) * 1e-3; }, always);
  for (int i = 0; i < N; ++i) {
    const int end = i == N - 1 ? 7 : 3 + i;
    stats(names[i], [&](const unsigned long long* r) { return (double)(r[end] - r[2 + i]) * 1e3 / khz; },
          [&](const unsigned long long* r) { return r[2 + i] != 0 && r[end] != 0; });
  }
  stats("end before the last exit", [&](const unsigned long long* r) { return (last - r[1]) * 1e-3; }, always);
}

// One more launch of input set 0, traced (the set the last timed replay touched first: out of L2 by now), then its
// phases.
template <typename Launch, int N>
inline void block_trace_launch(Launch&& launch, cudaStream_t stream, const char* const (&names)[N]) {
  block_trace_reset();
  launch(0);
  cudaStreamSynchronize(stream);
  block_trace_print(names);
}

}  // namespace micro
#endif

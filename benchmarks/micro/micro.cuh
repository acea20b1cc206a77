// What the stand-alone kernel harnesses of benchmarks/micro share: error checks, random fills, element
// conversions spelled out (the CI build defines __CUDA_NO_BFLOAT16_CONVERSIONS__, as the extension's does), and
// the graph timing of a launch over rotating input sets. Torch-free.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#define MICRO_CHECK(x)                                                                       \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

namespace micro {

__host__ __device__ inline void store(__nv_bfloat16& x, float v) { x = __float2bfloat16(v); }
__host__ __device__ inline void store(__nv_fp8_e4m3& x, float v) {
  x.__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}
inline double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
inline double to_double(__nv_fp8_e4m3 v) { return __half2float(__half(__nv_cvt_fp8_to_halfraw(v.__x, __NV_E4M3))); }

// Deterministic uniform values in [-2, 2) from an element index and a seed, in the element type.
template <typename T>
__global__ void fill_kernel(T* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    store(x[i], 4.f * (h >> 8) / 16777216.f - 2.f);
  }
}

// A device array of n random elements, and its host copy.
template <typename T>
T* random_array(int64_t n, uint32_t seed, std::vector<T>* host = nullptr) {
  T* d = nullptr;
  MICRO_CHECK(cudaMalloc(&d, std::max<int64_t>(n, 1) * sizeof(T)));
  fill_kernel<<<1024, 256>>>(d, n, seed);
  MICRO_CHECK(cudaGetLastError());
  if (host) {
    host->resize(n);
    MICRO_CHECK(cudaMemcpy(host->data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  return d;
}

template <typename T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  MICRO_CHECK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
  MICRO_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// `sets` random K/V arrays of `elems` elements (set 0 copied to the host for the reference) and, for each, a page
// table: the page ids 0 .. num_pages - 1 in a random order, as a serving engine's cache holds them after churn.
template <typename KV>
struct KvSets {
  std::vector<KV*> kv;
  std::vector<int32_t*> tables;
  std::vector<std::vector<int32_t>> host_tables;
  std::vector<KV> host_kv0;

  KvSets(int sets, int64_t elems, int num_pages) : kv(sets), tables(sets), host_tables(sets) {
    std::mt19937 rng(0);
    for (int s = 0; s < sets; ++s) {
      kv[s] = random_array<KV>(elems, 17u + s, s == 0 ? &host_kv0 : nullptr);
      host_tables[s].resize(num_pages);
      for (int i = 0; i < num_pages; ++i) host_tables[s][i] = i;
      std::shuffle(host_tables[s].begin(), host_tables[s].end(), rng);
      tables[s] = to_device(host_tables[s]);
    }
  }
};

// Median time of one launch in us: a CUDA graph of `sets` launches (launch(s) on input set s) replayed 25 times
// after 5 warm-up replays, each replay's time divided by `sets`.
inline double graph_time_us(int sets, cudaStream_t stream, const std::function<void(int)>& launch) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  MICRO_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int s = 0; s < sets; ++s) launch(s);
  MICRO_CHECK(cudaStreamEndCapture(stream, &graph));
  MICRO_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  MICRO_CHECK(cudaEventCreate(&start));
  MICRO_CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int r = 0; r < 30; ++r) {
    MICRO_CHECK(cudaEventRecord(start, stream));
    MICRO_CHECK(cudaGraphLaunch(exec, stream));
    MICRO_CHECK(cudaEventRecord(stop, stream));
    MICRO_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    MICRO_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (r >= 5) times.push_back(ms * 1e3f / sets);
  }
  std::sort(times.begin(), times.end());
  MICRO_CHECK(cudaGraphExecDestroy(exec));
  MICRO_CHECK(cudaGraphDestroy(graph));
  return times[times.size() / 2];
}

// graph_time_us with the launches chained: with CHAIN=n in the environment, at least n launches back to back in
// the graph (cycling over the sets; never fewer than `sets`), as a serving step or the benchmarks' graphs chain
// them, so programmatic dependent launch overlaps each with the one before.
inline double chained_time_us(int sets, cudaStream_t stream, const std::function<void(int)>& launch) {
  const char* chain_env = std::getenv("CHAIN");
  const int chain = std::max(sets, chain_env ? std::atoi(chain_env) : 1);
  return graph_time_us(chain, stream, [&](int s) { launch(s % sets); });
}

// The logits soft cap to run with: CAP=c in the environment (Gemma 2 uses 50), else 0 (off).
inline float soft_cap_from_env() {
  const char* cap_env = std::getenv("CAP");
  return cap_env ? (float)std::atof(cap_env) : 0.f;
}

// A score as the kernels define it, in float64 for the host references: scale, then cap * tanh(x / cap) if capped.
inline double ref_score(double dot, double sm_scale, double cap) {
  return cap > 0 ? cap * std::tanh(dot * sm_scale / cap) : dot * sm_scale;
}

// Input sets needed for `bytes` of input per launch to exceed twice an H100's 50 MB L2, at most 64.
inline int sets_past_l2(double bytes) { return (int)std::clamp<double>(2 * 50e6 / bytes + 1, 1, 64); }

// ROPE_LLAMA in the harnesses: built with -DMICRO_ROPE (run.sh's NVCC_FLAGS), theta 1e4.
#ifdef MICRO_ROPE
constexpr bool kRope = true;
#else
constexpr bool kRope = false;
#endif
constexpr double kRopeTheta = 1e4;

// ROPE_LLAMA of one D-element row at position pos, in float64 (nothing without MICRO_ROPE): element e < D / 2 pairs
// with e + D / 2.
template <int D>
void rope_rotate(std::vector<double>& x, double pos) {
  if constexpr (kRope) {
    for (int e = 0; e < D / 2; ++e) {
      const double a = pos * std::pow(kRopeTheta, -2.0 * e / D), c = std::cos(a), s = std::sin(a);
      const double u = x[e], w = x[e + D / 2];
      x[e] = u * c - w * s, x[e + D / 2] = w * c + u * s;
    }
  }
}

}  // namespace micro

// Prefill kernels for __half queries over __half KV (see prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

namespace flashinfer {
namespace prefill {
template cudaError_t run<__half, __half, false>(const Params&, int, bool, const LaunchEnv<Params>&);
}  // namespace prefill
}  // namespace flashinfer

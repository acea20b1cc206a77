// Prefill kernels for __nv_bfloat16 queries over __nv_bfloat16 KV, with ROPE_LLAMA (see prefill_launch.cuh).
#define FLASHINFER_PREFILL_INSTANTIATE
#include "prefill_launch.cuh"

namespace flashinfer {
namespace prefill {
template cudaError_t run<__nv_bfloat16, __nv_bfloat16, true>(const Params&, int, bool, const LaunchEnv<Params>&);
}  // namespace prefill
}  // namespace flashinfer

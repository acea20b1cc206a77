// Dispatch of the prefill kernel over head_dim and the KV form for one dtype. Torch-free. Each dtype is
// instantiated in its own translation unit (prefill_inst_*.cu); the adapter (prefill.cu) sees the declaration.
#pragma once
#include "../kernels/prefill.cuh"

namespace flashinfer {
namespace prefill {

template <typename T>
cudaError_t run(const Params& p, int head_dim, bool ragged, const LaunchEnv<Params>& env);

#ifdef FLASHINFER_PREFILL_INSTANTIATE
template <typename T, int D>
cudaError_t run_head_dim(const Params& p, bool ragged, const LaunchEnv<Params>& env) {
  return ragged ? launch<T, D, true>(p, env) : launch<T, D, false>(p, env);
}

template <typename T>
cudaError_t run(const Params& p, int head_dim, bool ragged, const LaunchEnv<Params>& env) {
  switch (head_dim) {
    case 64: return run_head_dim<T, 64>(p, ragged, env);
    case 128: return run_head_dim<T, 128>(p, ragged, env);
    case 256: return run_head_dim<T, 256>(p, ragged, env);
    default: return cudaErrorInvalidValue;
  }
}
#endif

}  // namespace prefill
}  // namespace flashinfer

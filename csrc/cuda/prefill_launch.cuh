// Dispatch of the prefill kernel over head_dim and the KV form for one (query, KV) dtype pair, with or without
// ROPE_LLAMA. Torch-free. Each (pair, RoPE) is instantiated in its own translation unit (prefill_inst_*.cu) so a
// parallel build compiles them side by side; the adapter (prefill.cu) sees the declaration.
#pragma once
#include "../kernels/prefill.cuh"

namespace flashinfer {
namespace prefill {

template <typename T, typename KV, bool kRope>
cudaError_t run(const Params& p, int head_dim, bool ragged, const LaunchEnv<Params>& env);

// The explicit instantiation a prefill_inst_*.cu unit makes, at global scope: the signature is written once, here.
#define FLASHINFER_PREFILL_RUN(T, KV, ROPE)                  \
  template cudaError_t flashinfer::prefill::run<T, KV, ROPE>( \
      const flashinfer::prefill::Params&, int, bool, const flashinfer::LaunchEnv<flashinfer::prefill::Params>&);

#ifdef FLASHINFER_PREFILL_INSTANTIATE
template <typename T, typename KV, int D, bool kRope>
cudaError_t run_head_dim(const Params& p, bool ragged, const LaunchEnv<Params>& env) {
  return ragged ? launch<T, KV, D, true, kRope>(p, env) : launch<T, KV, D, false, kRope>(p, env);
}

template <typename T, typename KV, bool kRope>
cudaError_t run(const Params& p, int head_dim, bool ragged, const LaunchEnv<Params>& env) {
  switch (head_dim) {
    case 64: return run_head_dim<T, KV, 64, kRope>(p, ragged, env);
    case 128: return run_head_dim<T, KV, 128, kRope>(p, ragged, env);
    case 256: return run_head_dim<T, KV, 256, kRope>(p, ragged, env);
    default: return cudaErrorInvalidValue;
  }
}
#endif

}  // namespace prefill
}  // namespace flashinfer

// Dispatch of the decode kernels over head_dim, ROPE and the path (tensor cores when asked, CUDA cores otherwise) for
// one (query, KV) dtype pair. Torch-free. Each pair is instantiated in its own translation unit (decode_inst_*.cu) so
// a parallel build compiles them side by side; the adapter (decode.cu) only sees the declarations.
#pragma once
#include "../kernels/decode_tc.cuh"

namespace flashinfer {
namespace decode {

using Launch = LaunchEnv<Params>;

template <typename Q, typename KV>
cudaError_t run(const Params& p, int head_dim, bool rope, bool tensor_cores, const Launch& l);

// The explicit instantiation a decode_inst_*.cu unit makes, at global scope: the signature is written once, here.
#define FLASHINFER_DECODE_RUN(Q, KV) \
  template cudaError_t flashinfer::decode::run<Q, KV>(const flashinfer::decode::Params&, int, bool, bool, \
                                                      const flashinfer::decode::Launch&);

#ifdef FLASHINFER_DECODE_INSTANTIATE
template <typename Q, typename KV, int D>
cudaError_t run_head_dim(const Params& p, bool rope, bool tensor_cores, const Launch& l) {
  if (tensor_cores)
    return rope ? launch_tc<Q, KV, D, true>(p, l.sm_count, l.alloc_tmp, l.stream)
                : launch_tc<Q, KV, D, false>(p, l.sm_count, l.alloc_tmp, l.stream);
  return rope ? launch<Q, KV, D, true>(p, l.sm_count, l.alloc_tmp, l.stream)
              : launch<Q, KV, D, false>(p, l.sm_count, l.alloc_tmp, l.stream);
}

template <typename Q, typename KV>
cudaError_t run(const Params& p, int head_dim, bool rope, bool tensor_cores, const Launch& l) {
  switch (head_dim) {
    case 64: return run_head_dim<Q, KV, 64>(p, rope, tensor_cores, l);
    case 128: return run_head_dim<Q, KV, 128>(p, rope, tensor_cores, l);
    case 256: return run_head_dim<Q, KV, 256>(p, rope, tensor_cores, l);
    default: return cudaErrorInvalidValue;
  }
}
#endif

}  // namespace decode
}  // namespace flashinfer

// Decode kernels for __nv_bfloat16 queries over __nv_bfloat16 KV (see decode_launch.cuh).
#define FLASHINFER_DECODE_INSTANTIATE
#include "decode_launch.cuh"

namespace flashinfer {
namespace decode {
template cudaError_t run<__nv_bfloat16, __nv_bfloat16>(const Params&, int, bool, bool, const Launch&);
}  // namespace decode
}  // namespace flashinfer

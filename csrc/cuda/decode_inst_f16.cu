// Decode kernels for __half queries over __half KV (see decode_launch.cuh).
#define FLASHINFER_DECODE_INSTANTIATE
#include "decode_launch.cuh"

namespace flashinfer {
namespace decode {
template cudaError_t run<__half, __half>(const Params&, int, bool, bool, const Launch&);
}  // namespace decode
}  // namespace flashinfer

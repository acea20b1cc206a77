// CUDA adapters of the gated activations.
#include <torch/library.h>

#include "../kernels/activation.cuh"
#include "utils.cuh"

namespace flashinfer {
namespace {

using activation::Act;

template <Act A>
constexpr const char* act_name() {
  return A == Act::kSilu ? "silu_and_mul" : A == Act::kGelu ? "gelu_and_mul" : "gelu_tanh_and_mul";
}

template <Act A>
void act_and_mul_out_cuda(at::Tensor& out, const at::Tensor& input_) {
  const char* op = act_name<A>();
  const auto out_sizes = check_gated_input(input_, op);
  check_out(out, "out", input_, "input", out_sizes, op);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = rows_readable(input_);
  const int64_t d = out_sizes.back();
  check_int32_range(2 * d, "input's last dim", op);

  activation::Params p{};
  p.out = out.data_ptr();
  p.in = input.data_ptr();
  p.in_layout = rows_writable(input, "input", op);
  p.out_layout = rows_writable(out, "out", op);
  p.d = (int)d;
  p.rows = d == 0 ? 0 : out.numel() / d;
  const int vec = widest_vec(input.element_size(), d, {addr(input), addr(out)},
                             {p.in_layout.stride0, p.in_layout.stride1, p.out_layout.stride0, p.out_layout.stride1});

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  FI_DISPATCH_FLOAT(input.scalar_type(), T, { err = activation::launch<T, A>(p, vec, stream); });
  check_launch(err, op);
}

template <Act A>
at::Tensor act_and_mul_cuda(const at::Tensor& input) {
  const auto out_sizes = check_gated_input(input, act_name<A>());
  auto out = at::empty(out_sizes, input.options());
  act_and_mul_out_cuda<A>(out, input);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CUDA, m) {
  m.impl("silu_and_mul", &act_and_mul_cuda<Act::kSilu>);
  m.impl("silu_and_mul_out", &act_and_mul_out_cuda<Act::kSilu>);
  m.impl("gelu_and_mul", &act_and_mul_cuda<Act::kGelu>);
  m.impl("gelu_and_mul_out", &act_and_mul_out_cuda<Act::kGelu>);
  m.impl("gelu_tanh_and_mul", &act_and_mul_cuda<Act::kGeluTanh>);
  m.impl("gelu_tanh_and_mul_out", &act_and_mul_out_cuda<Act::kGeluTanh>);
}

}  // namespace flashinfer

// CPU implementations of the gated activations, in fp32 like the CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"

namespace flashinfer {
namespace {

enum class Act { kSilu, kGelu, kGeluTanh };

template <Act A>
void act_and_mul_out_cpu(at::Tensor& out, const at::Tensor& input) {
  const char* op = A == Act::kSilu ? "silu_and_mul" : A == Act::kGelu ? "gelu_and_mul" : "gelu_tanh_and_mul";
  auto out_sizes = check_gated_input(input, op);
  check_out(out, "out", input, "input", out_sizes, op);
  const int64_t d = out_sizes.back();
  auto x = input.to(at::kFloat);
  auto gate = x.narrow(-1, 0, d), up = x.narrow(-1, d, d);
  at::Tensor a = A == Act::kSilu ? at::silu(gate) : at::gelu(gate, A == Act::kGelu ? "none" : "tanh");
  out.copy_(a * up);
}

template <Act A>
at::Tensor act_and_mul_cpu(const at::Tensor& input) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  if (!sizes.empty()) sizes.back() /= 2;
  auto out = at::empty(sizes, input.options());
  act_and_mul_out_cpu<A>(out, input);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(flashinfer, CPU, m) {
  m.impl("silu_and_mul", &act_and_mul_cpu<Act::kSilu>);
  m.impl("silu_and_mul_out", &act_and_mul_out_cpu<Act::kSilu>);
  m.impl("gelu_and_mul", &act_and_mul_cpu<Act::kGelu>);
  m.impl("gelu_and_mul_out", &act_and_mul_out_cpu<Act::kGelu>);
  m.impl("gelu_tanh_and_mul", &act_and_mul_cpu<Act::kGeluTanh>);
  m.impl("gelu_tanh_and_mul_out", &act_and_mul_out_cpu<Act::kGeluTanh>);
}

}  // namespace flashinfer
